#!/usr/bin/env bash
# Keyless GCS signing for convbridge with gcloud: the same federation as main.tf. A workload
# identity pool with an AWS provider trusts the stack's AWS account (and, once the stack's roles
# are known, only those roles); the bridge's service account may sign blobs as itself
# (roles/iam.serviceAccountTokenCreator, for signBlob), the stack's roles may act as it
# (roles/iam.workloadIdentityUser) and it has object access on the watched buckets. The
# external-account configuration for GcsServiceAccountSecretArn (no credential in it) goes to
# stdout; what was done goes to stderr.
#
#   PROJECT_ID=my-project AWS_ACCOUNT_ID=123456789012 BUCKETS="bucket-a bucket-b" \
#   [AWS_ROLE_ARNS=<GcsFederatedRoleArns>] [NAME=convbridge] \
#   bash infra/gcp/federation.sh > federation.json
#
# Run it once before deploying (no AWS_ROLE_ARNS yet: the pool, the account, the configuration),
# and again with the stack's GcsFederatedRoleArns output (comma-separated) to let those roles,
# and no other identity of the account, through. It is safe to run twice.
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID}" "${AWS_ACCOUNT_ID:?set AWS_ACCOUNT_ID (12 digits)}"
: "${BUCKETS:?set BUCKETS (the watched buckets, separated by spaces)}"
NAME="${NAME:-convbridge}"
AWS_ROLE_ARNS="${AWS_ROLE_ARNS:-}"
export CLOUDSDK_CORE_PROJECT="$PROJECT_ID"

if [[ ! "$AWS_ACCOUNT_ID" =~ ^[0-9]{12}$ ]]; then
  echo "AWS_ACCOUNT_ID must be a 12-digit AWS account id" >&2; exit 2
fi

# attribute.aws_role of an assumed-role session is arn:<partition>:sts::<account>:assumed-role/<name>
# (this mapping), so each IAM role ARN is rewritten to that form, as main.tf does.
MAPPING="google.subject=assertion.arn,attribute.aws_role=assertion.arn.contains('assumed-role') ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/' + assertion.arn.extract('assumed-role/{role_name}/') : assertion.arn"
ROLE_ARN='^arn:([^:]+):iam::([0-9]{12}):role/(.*/)?([^/]+)$'
ASSUMED_ROLES=()
IFS=',' read -r -a role_arns <<<"$AWS_ROLE_ARNS"
for arn in "${role_arns[@]}"; do
  arn="${arn// /}"
  [[ -z "$arn" ]] && continue
  if [[ ! "$arn" =~ $ROLE_ARN ]]; then
    echo "AWS_ROLE_ARNS holds $arn, which is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)" >&2
    exit 2
  fi
  ASSUMED_ROLES+=("arn:${BASH_REMATCH[1]}:sts::${BASH_REMATCH[2]}:assumed-role/${BASH_REMATCH[4]}")
done
mapfile -t ASSUMED_ROLES < <(printf '%s\n' "${ASSUMED_ROLES[@]}" | sed '/^$/d' | LC_ALL=C sort -u)

# Only the stack's roles get a federated token at all: a condition on the mapped role.
CONDITION=""
if ((${#ASSUMED_ROLES[@]})); then
  CONDITION="attribute.aws_role in [$(printf "'%s', " "${ASSUMED_ROLES[@]}" | sed 's/, $//')]"
fi

PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
POOL="${NAME}-aws"
PROVIDER="${NAME}-aws"
POOL_NAME="projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL}"
BRIDGE_SA="${NAME}-bridge@${PROJECT_ID}.iam.gserviceaccount.com"

exists() { "$@" >/dev/null 2>&1; }

exists gcloud iam workload-identity-pools describe "$POOL" --location=global \
  || gcloud iam workload-identity-pools create "$POOL" --location=global \
       --display-name="convbridge (AWS)"

provider_flags=(--location=global --workload-identity-pool="$POOL" --account-id="$AWS_ACCOUNT_ID"
                --attribute-mapping="$MAPPING" --display-name="convbridge Lambda roles")
if [[ -n "$CONDITION" ]]; then
  provider_flags+=(--attribute-condition="$CONDITION")
fi
if exists gcloud iam workload-identity-pools providers describe "$PROVIDER" --location=global \
    --workload-identity-pool="$POOL"; then
  gcloud iam workload-identity-pools providers update-aws "$PROVIDER" "${provider_flags[@]}"
else
  gcloud iam workload-identity-pools providers create-aws "$PROVIDER" "${provider_flags[@]}"
fi

# The bridge's identity: it signs V4 URLs with signBlob as itself, with the federated token.
exists gcloud iam service-accounts describe "$BRIDGE_SA" \
  || gcloud iam service-accounts create "${NAME}-bridge" \
       --display-name="convbridge bridge (bucket objects)"
gcloud iam service-accounts add-iam-policy-binding "$BRIDGE_SA" \
  --member="serviceAccount:$BRIDGE_SA" --role=roles/iam.serviceAccountTokenCreator >/dev/null

# Only the stack's roles may act as the account.
for role in "${ASSUMED_ROLES[@]}"; do
  gcloud iam service-accounts add-iam-policy-binding "$BRIDGE_SA" \
    --member="principalSet://iam.googleapis.com/${POOL_NAME}/attribute.aws_role/${role}" \
    --role=roles/iam.workloadIdentityUser >/dev/null
done

# Object access on the watched buckets (read, write records and outputs, move).
read -r -a buckets <<<"$BUCKETS"
for bucket in "${buckets[@]}"; do
  gcloud storage buckets add-iam-policy-binding "gs://$bucket" \
    --member="serviceAccount:$BRIDGE_SA" --role=roles/storage.objectUser >/dev/null
done

config="$(mktemp)"
trap 'rm -f "$config"' EXIT
gcloud iam workload-identity-pools create-cred-config "${POOL_NAME}/providers/${PROVIDER}" \
  --service-account="$BRIDGE_SA" --aws --output-file="$config" >/dev/null
cat "$config"

cat >&2 <<DONE
Workload identity pool $POOL_NAME trusts AWS account $AWS_ACCOUNT_ID${CONDITION:+, only $CONDITION}
  bridge service account: $BRIDGE_SA (signBlob as itself; objects in: $BUCKETS)
  the configuration above goes into GcsServiceAccountSecretArn with service_account_email added
DONE
