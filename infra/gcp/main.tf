# convbridge on Google Cloud Storage: the bucket's OBJECT_FINALIZE notifications go to a Pub/Sub
# topic, and a push subscription delivers them to the GCS trigger's Function URL with an OIDC
# token signed by Google for a dedicated service account and audience. The trigger refuses any
# request whose token is not for CONVBRIDGE_PUBSUB_AUDIENCE and CONVBRIDGE_PUBSUB_SERVICE_ACCOUNT
# (the stack's PubSubAudience output and PubSubServiceAccount parameter).
#
#   terraform init && terraform apply -var project_id=... -var bucket=... \
#     -var push_endpoint=<GcsPushEndpoint> -var audience=<PubSubAudience>
#
# The same wiring as gcloud commands: gcloud.sh beside this file, and federation.sh for the
# keyless signing (the workload identity pool and the bridge's service account bindings).

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project_id
}

data "google_project" "this" {}

# The Cloud Storage service agent publishes the bucket's notifications.
data "google_storage_project_service_account" "gcs" {}

locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  federate = var.aws_account_id != ""
  # attribute.aws_role of an assumed-role session is arn:<partition>:sts::<account>:assumed-role/<name>
  # (the provider's default mapping), so each IAM role ARN is rewritten to that form.
  aws_assumed_roles = toset([
    for arn in var.aws_role_arns :
    replace(arn, "/^arn:([^:]+):iam::([0-9]{12}):role/(?:.*/)?([^/]+)$/", "arn:$1:sts::$2:assumed-role/$3")
  ])
  # Only the stack's roles get a federated token at all (none listed yet: the account's
  # identities, which still cannot act as the bridge without the bindings below).
  aws_role_condition = length(local.aws_assumed_roles) > 0 ? "attribute.aws_role in [${join(", ", formatlist("'%s'", sort(local.aws_assumed_roles)))}]" : null
}

resource "google_pubsub_topic" "uploads" {
  name = "${var.name}-uploads"
}

resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  topic  = google_pubsub_topic.uploads.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# Finalized objects only (a completed upload or overwrite), with the object resource as the
# message data (size, metadata): what convbridge.events.pubsub reads.
resource "google_storage_notification" "uploads" {
  bucket             = var.bucket
  topic              = google_pubsub_topic.uploads.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.object_name_prefix == "" ? null : var.object_name_prefix

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes]
}

# The identity Pub/Sub signs push requests as; it needs no role of its own.
resource "google_service_account" "push" {
  account_id   = "${var.name}-push"
  display_name = "convbridge Pub/Sub push (OIDC)"
}

# Pub/Sub's service agent mints the OIDC tokens for it.
resource "google_service_account_iam_member" "pubsub_mints_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Notifications the trigger never accepted, kept for a week for inspection and replay.
resource "google_pubsub_topic" "dead_letter" {
  name = "${var.name}-uploads-dead-letter"
}

resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${var.name}-uploads-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "push" {
  name  = "${var.name}-uploads-push"
  topic = google_pubsub_topic.uploads.id

  # The trigger answers within its 30 s Lambda timeout; anything slower is redelivered.
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = var.push_endpoint

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = var.audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_service_account_iam_member.pubsub_mints_tokens]
}

# Dead-lettering needs Pub/Sub's service agent to publish to the dead-letter topic and to
# acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "pubsub_dead_letters" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_forwards" {
  subscription = google_pubsub_subscription.push.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# The bridge's own identity on the bucket: it reads sources and signs V4 URLs for them, writes
# records and relayed outputs, and moves failed sources (delete). By default the stack's roles
# act as it through the federation below and no key exists; a JSON key (the opt-in) is created
# with gcloud (see README.md) so it never sits in Terraform state.
resource "google_service_account" "bridge" {
  account_id   = "${var.name}-bridge"
  display_name = "convbridge bridge (bucket objects)"
}

resource "google_storage_bucket_iam_member" "bridge_objects" {
  bucket = var.bucket
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.bridge.email}"
}

# Keyless signing: the bridge's Lambda roles reach the bridge's service account through Workload
# Identity Federation (Google STS verifies their signed GetCallerIdentity request), and sign V4
# URLs with signBlob as that account. Created when aws_account_id is given.
resource "google_iam_workload_identity_pool" "aws" {
  count                     = local.federate ? 1 : 0
  workload_identity_pool_id = "${var.name}-aws"
  display_name              = "convbridge (AWS)"
}

resource "google_iam_workload_identity_pool_provider" "aws" {
  count                              = local.federate ? 1 : 0
  workload_identity_pool_id          = google_iam_workload_identity_pool.aws[0].workload_identity_pool_id
  workload_identity_pool_provider_id = "${var.name}-aws"
  display_name                       = "convbridge Lambda roles"
  attribute_mapping = {
    "google.subject"     = "assertion.arn"
    "attribute.aws_role" = "assertion.arn.contains('assumed-role') ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/' + assertion.arn.extract('assumed-role/{role_name}/') : assertion.arn"
  }
  attribute_condition = local.aws_role_condition
  aws {
    account_id = var.aws_account_id
  }
}

# signBlob: the account signs as itself with the federated token.
resource "google_service_account_iam_member" "bridge_signs_blobs" {
  count              = local.federate ? 1 : 0
  service_account_id = google_service_account.bridge.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.bridge.email}"
}

# Only the stack's roles (GcsFederatedRoleArns) may act as the account.
resource "google_service_account_iam_member" "aws_roles_impersonate" {
  for_each           = local.federate ? local.aws_assumed_roles : toset([])
  service_account_id = google_service_account.bridge.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.aws[0].name}/attribute.aws_role/${each.value}"
}

output "credential_config_command" {
  description = "Writes the external-account configuration that goes into GcsServiceAccountSecretArn (README.md)."
  value = local.federate ? join(" ", [
    "gcloud iam workload-identity-pools create-cred-config",
    google_iam_workload_identity_pool_provider.aws[0].name,
    "--service-account=${google_service_account.bridge.email}",
    "--aws --output-file=federation.json",
  ]) : null
}

output "push_service_account" {
  description = "PubSubServiceAccount parameter of the convbridge stack."
  value       = google_service_account.push.email
}

output "bridge_service_account" {
  description = "The service_account_email of GcsServiceAccountSecretArn (or, opted in, the account whose JSON key goes there)."
  value       = google_service_account.bridge.email
}

output "topic" {
  value = google_pubsub_topic.uploads.id
}

output "subscription" {
  value = google_pubsub_subscription.push.id
}

output "dead_letter_subscription" {
  value = google_pubsub_subscription.dead_letter.id
}
