variable "project_id" {
  description = "Google Cloud project holding the bucket, the topic and the subscription."
  type        = string
}

variable "bucket" {
  description = "Name of the existing bucket whose uploads start conversions."
  type        = string
}

variable "object_name_prefix" {
  description = "Only objects under this prefix are notified (match the rules' prefix); empty for all."
  type        = string
  default     = ""
}

variable "push_endpoint" {
  description = "The GcsPushEndpoint output of the convbridge stack (the GCS trigger's Function URL)."
  type        = string

  validation {
    condition     = startswith(var.push_endpoint, "https://")
    error_message = "push_endpoint must be the https Function URL of the GCS trigger."
  }
}

variable "audience" {
  description = "The PubSubAudience output of the convbridge stack: the OIDC audience the trigger accepts."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name (topic, subscriptions, service accounts)."
  type        = string
  default     = "convbridge"
}

variable "max_delivery_attempts" {
  description = "Push attempts before a notification goes to the dead-letter topic (5-100)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}
