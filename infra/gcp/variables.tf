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

variable "aws_account_id" {
  description = "AWS account of the convbridge stack: the workload identity pool's AWS provider trusts it. Empty: no federation (json_key signing)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9]{12})?$", var.aws_account_id))
    error_message = "aws_account_id is a 12-digit AWS account id (or empty)."
  }
}

variable "aws_role_arns" {
  description = "The GcsFederatedRoleArns output of the convbridge stack, as a list: the roles allowed to act as the bridge's service account."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.aws_role_arns : can(regex("^arn:[^:]+:iam::[0-9]{12}:role/.+$", arn))])
    error_message = "aws_role_arns are IAM role ARNs (arn:aws:iam::<account>:role/<name>)."
  }
}
