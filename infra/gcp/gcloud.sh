#!/usr/bin/env bash
# convbridge on Google Cloud Storage with gcloud: the same wiring as main.tf. The bucket's
# OBJECT_FINALIZE notifications (JSON_API_V1) go to a topic; a push subscription delivers them to
# the GCS trigger's Function URL with an OIDC token for a dedicated service account and audience.
#
#   PROJECT_ID=my-project BUCKET=my-bucket PUSH_ENDPOINT=<GcsPushEndpoint> \
#   AUDIENCE=<PubSubAudience> [PREFIX=inbox/] [NAME=convbridge] bash infra/gcp/gcloud.sh
#
# It is safe to run twice: what exists already is left as it is.
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID}" "${BUCKET:?set BUCKET}"
: "${PUSH_ENDPOINT:?set PUSH_ENDPOINT (the stack output GcsPushEndpoint)}"
: "${AUDIENCE:?set AUDIENCE (the stack output PubSubAudience)}"
NAME="${NAME:-convbridge}"
PREFIX="${PREFIX:-}"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-10}"

case "$PUSH_ENDPOINT" in
  https://*) ;;
  *) echo "PUSH_ENDPOINT must be the https Function URL of the GCS trigger" >&2; exit 2 ;;
esac

gcloud config set project "$PROJECT_ID" >/dev/null
PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
PUBSUB_AGENT="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
PUSH_SA="${NAME}-push@${PROJECT_ID}.iam.gserviceaccount.com"
BRIDGE_SA="${NAME}-bridge@${PROJECT_ID}.iam.gserviceaccount.com"
TOPIC="${NAME}-uploads"
DEAD_LETTER_TOPIC="${NAME}-uploads-dead-letter"

exists() { "$@" >/dev/null 2>&1; }

# Topics: the uploads, and the notifications the trigger never accepted (kept a week).
exists gcloud pubsub topics describe "$TOPIC" || gcloud pubsub topics create "$TOPIC"
exists gcloud pubsub topics describe "$DEAD_LETTER_TOPIC" \
  || gcloud pubsub topics create "$DEAD_LETTER_TOPIC"
exists gcloud pubsub subscriptions describe "$DEAD_LETTER_TOPIC" \
  || gcloud pubsub subscriptions create "$DEAD_LETTER_TOPIC" --topic="$DEAD_LETTER_TOPIC" \
       --message-retention-duration=7d --expiration-period=never

# The bucket's notifications: finalized objects only, the object resource as the data. The
# command also lets the Cloud Storage service agent publish to the topic.
if ! gcloud storage buckets notifications list "gs://$BUCKET" --format='value(topic)' \
    | grep -q "/topics/${TOPIC}\$"; then
  gcloud storage buckets notifications create "gs://$BUCKET" --topic="$TOPIC" \
    --event-types=OBJECT_FINALIZE --payload-format=json \
    ${PREFIX:+--object-prefix="$PREFIX"}
fi

# The identity Pub/Sub signs push requests as, and Pub/Sub's right to mint its tokens.
exists gcloud iam service-accounts describe "$PUSH_SA" \
  || gcloud iam service-accounts create "${NAME}-push" \
       --display-name="convbridge Pub/Sub push (OIDC)"
gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" \
  --member="$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator >/dev/null

# The push subscription: OIDC token for the push account and the stack's audience, back-off,
# and dead-lettering after MAX_DELIVERY_ATTEMPTS.
if exists gcloud pubsub subscriptions describe "${NAME}-uploads-push"; then
  update=update
else
  update="create --topic=$TOPIC"
fi
# shellcheck disable=SC2086  # "create --topic=..." is two words on purpose
gcloud pubsub subscriptions $update "${NAME}-uploads-push" \
  --push-endpoint="$PUSH_ENDPOINT" \
  --push-auth-service-account="$PUSH_SA" \
  --push-auth-token-audience="$AUDIENCE" \
  --ack-deadline=60 \
  --message-retention-duration=7d \
  --expiration-period=never \
  --min-retry-delay=10s --max-retry-delay=600s \
  --dead-letter-topic="$DEAD_LETTER_TOPIC" \
  --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"

# Dead-lettering needs Pub/Sub's service agent on both ends.
gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" \
  --member="$PUBSUB_AGENT" --role=roles/pubsub.publisher >/dev/null
gcloud pubsub subscriptions add-iam-policy-binding "${NAME}-uploads-push" \
  --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber >/dev/null

# The bridge's identity on the bucket (read, sign URLs, write records and outputs, move).
exists gcloud iam service-accounts describe "$BRIDGE_SA" \
  || gcloud iam service-accounts create "${NAME}-bridge" \
       --display-name="convbridge bridge (bucket objects)"
gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
  --member="serviceAccount:$BRIDGE_SA" --role=roles/storage.objectUser >/dev/null

cat <<DONE
Pub/Sub pushes gs://$BUCKET${PREFIX:+/$PREFIX} uploads to $PUSH_ENDPOINT
  PubSubServiceAccount (stack parameter): $PUSH_SA
  bridge service account (key -> GcsServiceAccountSecretArn): $BRIDGE_SA
DONE
