"""infra/gcp, checked offline: main.tf and variables.tf parsed with python-hcl2 (and, where the
terraform binary is on the machine, `terraform fmt -check`; `terraform validate` needs the
Google provider from the Terraform registry, which this project cannot reach), gcloud.sh parsed
by bash; federation.sh run against a recording stand-in for gcloud and held to the same roles,
names and attribute condition as the Terraform. What the GCS trigger relies on is pinned:
OBJECT_FINALIZE notifications with the JSON_API_V1 payload, a push subscription (the Pub/Sub
envelope, not "no wrapper") to the stack's endpoint with an OIDC token for the dedicated service
account and the stack's audience, an ack deadline longer than the function's timeout, retries
with back-off and a dead-letter topic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2  # noqa: E402 (python-hcl2, in the dev extra)
import pytest

ROOT = Path(__file__).resolve().parents[2]
GCP = ROOT / "infra" / "gcp"


def _plain(value: Any) -> Any:
    """python-hcl2 8 keeps HCL's quotes around strings and block labels; drop them (7 did not)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()
                if k not in {"__is_block__", "__comments__"}}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _load(name: str) -> dict[str, Any]:
    with (GCP / name).open() as handle:
        loaded: dict[str, Any] = _plain(hcl2.load(handle))
    return loaded


@pytest.fixture(scope="module")
def main_tf() -> dict[str, Any]:
    return _load("main.tf")


@pytest.fixture(scope="module")
def variables_tf() -> dict[str, Any]:
    return _load("variables.tf")


def _blocks(document: dict[str, Any], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for entry in document.get(kind, []):
        for type_, named in entry.items():
            for name, body in named.items():
                found[(type_, name)] = body
    return found


def _one(value: Any) -> Any:
    """A nested block: python-hcl2 gives a list with one body."""
    if isinstance(value, list):
        (value,) = value
    return value


def test_every_variable_used_is_declared_and_every_declared_one_used(
    variables_tf: dict[str, Any],
) -> None:
    declared = {name for entry in variables_tf["variable"] for name in entry}
    used = set(re.findall(r"\bvar\.(\w+)", (GCP / "main.tf").read_text()))
    assert used == declared
    for entry in variables_tf["variable"]:
        for name, body in entry.items():
            assert body.get("description"), name


def test_notification_is_finalized_objects_with_the_object_resource(
    main_tf: dict[str, Any],
) -> None:
    resources = _blocks(main_tf, "resource")
    notification = resources[("google_storage_notification", "uploads")]
    # convbridge.events.pubsub: OBJECT_FINALIZE starts jobs; JSON_API_V1 carries size/metadata.
    assert notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["payload_format"] == "JSON_API_V1"
    assert notification["topic"] == "${google_pubsub_topic.uploads.id}"
    assert notification["bucket"] == "${var.bucket}"
    # GCS checks it may publish when the notification is created.
    assert notification["depends_on"] == ["${google_pubsub_topic_iam_member.gcs_publishes}"]
    publisher = resources[("google_pubsub_topic_iam_member", "gcs_publishes")]
    assert publisher["role"] == "roles/pubsub.publisher"
    assert "google_storage_project_service_account.gcs.email_address" in publisher["member"]


def _template_trigger_timeout() -> int:
    text = (ROOT / "template.yaml").read_text()
    globals_timeout = re.search(r"^Globals:\n(?:.*\n)*?    Timeout: (\d+)", text, re.M)
    assert globals_timeout
    gcs = re.search(r"^  GcsTriggerFunction:\n((?:    .*\n|\s*\n)*)", text, re.M)
    assert gcs and "Timeout:" not in gcs.group(1).split("Environment:")[0]
    return int(globals_timeout.group(1))


def test_push_subscription_authenticates_with_oidc(main_tf: dict[str, Any]) -> None:
    resources = _blocks(main_tf, "resource")
    subscription = resources[("google_pubsub_subscription", "push")]
    assert subscription["topic"] == "${google_pubsub_topic.uploads.id}"
    push = _one(subscription["push_config"])
    assert push["push_endpoint"] == "${var.push_endpoint}"
    # The trigger parses the Pub/Sub envelope ({"message": ..., "subscription": ...}).
    assert "no_wrapper" not in push
    token = _one(push["oidc_token"])
    assert token == {
        "service_account_email": "${google_service_account.push.email}",
        "audience": "${var.audience}",
    }
    # Redelivered only when the trigger (Lambda timeout) has surely given up.
    assert subscription["ack_deadline_seconds"] > _template_trigger_timeout()
    retry = _one(subscription["retry_policy"])
    assert retry == {"minimum_backoff": "10s", "maximum_backoff": "600s"}
    dead_letter = _one(subscription["dead_letter_policy"])
    assert dead_letter["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dead_letter["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    token_creator = resources[("google_service_account_iam_member", "pubsub_mints_tokens")]
    assert token_creator["role"] == "roles/iam.serviceAccountTokenCreator"
    assert token_creator["service_account_id"] == "${google_service_account.push.name}"
    assert token_creator["member"] == "${local.pubsub_service_agent}"


def test_dead_lettering_has_its_permissions(main_tf: dict[str, Any]) -> None:
    resources = _blocks(main_tf, "resource")
    publisher = resources[("google_pubsub_topic_iam_member", "pubsub_dead_letters")]
    assert publisher["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert publisher["role"] == "roles/pubsub.publisher"
    subscriber = resources[("google_pubsub_subscription_iam_member", "pubsub_forwards")]
    assert subscriber["subscription"] == "${google_pubsub_subscription.push.id}"
    assert subscriber["role"] == "roles/pubsub.subscriber"
    (locals_,) = main_tf["locals"]
    assert locals_["pubsub_service_agent"].endswith("@gcp-sa-pubsub.iam.gserviceaccount.com")


def test_outputs_feed_the_stack(main_tf: dict[str, Any]) -> None:
    outputs = {name: body for entry in main_tf["output"] for name, body in entry.items()}
    assert outputs["push_service_account"]["value"] == "${google_service_account.push.email}"
    assert "bridge_service_account" in outputs
    # The bridge's key is not created here: it would sit in Terraform state.
    assert ("google_service_account_key", "bridge") not in _blocks(main_tf, "resource")


def test_provider_is_pinned(main_tf: dict[str, Any]) -> None:
    (terraform,) = main_tf["terraform"]
    (providers,) = terraform["required_providers"]
    assert providers["google"]["source"] == "hashicorp/google"


def test_gcloud_script_parses_and_matches_the_terraform() -> None:
    script = GCP / "gcloud.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    for flag in (
        "--event-types=OBJECT_FINALIZE", "--payload-format=json",
        '--push-endpoint="$PUSH_ENDPOINT"', '--push-auth-service-account="$PUSH_SA"',
        '--push-auth-token-audience="$AUDIENCE"', "--ack-deadline=60",
        "--min-retry-delay=10s", "--max-retry-delay=600s",
        '--dead-letter-topic="$DEAD_LETTER_TOPIC"',
        '--max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"',
        "--role=roles/iam.serviceAccountTokenCreator", "--role=roles/pubsub.publisher",
        "--role=roles/pubsub.subscriber", "--role=roles/storage.objectUser",
    ):
        assert flag in text, flag
    # Same names as main.tf, so either can be used (or one after the other).
    terraform = (GCP / "main.tf").read_text()
    for suffix in ("uploads", "uploads-dead-letter", "uploads-push", "push", "bridge"):
        assert f'"${{var.name}}-{suffix}"' in terraform, suffix
        assert f"${{NAME}}-{suffix}" in text, suffix
    assert "ack_deadline_seconds       = 60" in terraform


INFRA_SCRIPTS = sorted((ROOT / "infra").rglob("*.sh"))


@pytest.mark.parametrize("script", INFRA_SCRIPTS, ids=[p.name for p in INFRA_SCRIPTS])
def test_infra_scripts_pass_shellcheck(script: Path) -> None:
    # make installs Debian's shellcheck (as root); without it this fails rather than skips
    assert shutil.which("shellcheck"), "shellcheck is not installed: run `make servers`"
    subprocess.run(["shellcheck", str(script)], check=True, timeout=60)


def test_both_gcp_scripts_are_checked() -> None:
    assert {p.name for p in INFRA_SCRIPTS} >= {"gcloud.sh", "federation.sh"}


def _terraform_replace(pattern_literal: str, replacement: str, value: str) -> str:
    """Terraform's replace() with a /regex/ pattern: RE2, $n for groups (Python: \\n)."""
    assert pattern_literal.startswith("/") and pattern_literal.endswith("/")
    return re.sub(pattern_literal[1:-1], re.sub(r"\$(\d)", r"\\\1", replacement), value)


def test_bridge_roles_federate_to_the_bridge_service_account(main_tf: dict[str, Any]) -> None:
    resources = _blocks(main_tf, "resource")
    provider = resources[("google_iam_workload_identity_pool_provider", "aws")]
    assert _one(provider["aws"]) == {"account_id": "${var.aws_account_id}"}
    assert provider["attribute_mapping"]["attribute.aws_role"].startswith(
        "assertion.arn.contains('assumed-role')")
    # signBlob as itself, which the V4 signer calls with the federated token.
    signs = resources[("google_service_account_iam_member", "bridge_signs_blobs")]
    assert signs["role"] == "roles/iam.serviceAccountTokenCreator"
    assert signs["service_account_id"] == "${google_service_account.bridge.name}"
    assert signs["member"] == "serviceAccount:${google_service_account.bridge.email}"
    users = resources[("google_service_account_iam_member", "aws_roles_impersonate")]
    assert users["role"] == "roles/iam.workloadIdentityUser"
    assert users["service_account_id"] == "${google_service_account.bridge.name}"
    assert users["member"] == ("principalSet://iam.googleapis.com/"
                               "${google_iam_workload_identity_pool.aws[0].name}"
                               "/attribute.aws_role/${each.value}")
    assert "local.aws_assumed_roles" in users["for_each"]
    # The object role on the watched bucket is the bridge's, federated or not.
    objects = resources[("google_storage_bucket_iam_member", "bridge_objects")]
    assert objects["role"] == "roles/storage.objectUser"


@pytest.mark.parametrize(
    ("role_arn", "aws_role"),
    [
        ("arn:aws:iam::123456789012:role/convbridge-GcsTriggerRole-AbC123",
         "arn:aws:sts::123456789012:assumed-role/convbridge-GcsTriggerRole-AbC123"),
        ("arn:aws-cn:iam::123456789012:role/team/convbridge-WebhookFunctionRole-X",
         "arn:aws-cn:sts::123456789012:assumed-role/convbridge-WebhookFunctionRole-X"),
    ],
)
def test_stack_role_arns_become_the_aws_role_attribute_google_sees(
    main_tf: dict[str, Any], role_arn: str, aws_role: str,
) -> None:
    # The Lambda signs GetCallerIdentity as an assumed-role session; the provider's mapping makes
    # attribute.aws_role arn:...:sts::<account>:assumed-role/<name>, never the IAM role ARN.
    (locals_,) = main_tf["locals"]
    call = re.fullmatch(r'\$\{toset\(\[for arn in var\.aws_role_arns : replace\(arn, "(.+)", '
                        r'"(.+)"\)\]\)\}', locals_["aws_assumed_roles"].replace("\n", " ")
                        .replace("  ", " "))
    assert call, locals_["aws_assumed_roles"]
    assert _terraform_replace(call.group(1), call.group(2), role_arn) == aws_role


def test_outputs_the_credential_configuration_command(main_tf: dict[str, Any]) -> None:
    outputs = {name: body for entry in main_tf["output"] for name, body in entry.items()}
    command = outputs["credential_config_command"]["value"]
    for part in ("gcloud iam workload-identity-pools create-cred-config",
                 "google_iam_workload_identity_pool_provider.aws[0].name",
                 "--service-account=${google_service_account.bridge.email}", "--aws"):
        assert part in command, part


#: a stand-in for gcloud: it records each call (arguments separated by \x1f), finds nothing
#: on describe, answers the project number and writes a credential configuration when asked
FAKE_GCLOUD = r"""#!/usr/bin/env bash
{ for a in "$@"; do printf '%s\x1f' "$a"; done; printf '\n'; } >> "$GCLOUD_LOG"
case "$*" in
  "projects describe"*) echo 987654321 ;;
  *" describe "*) exit 1 ;;
  *create-cred-config*)
    for a in "$@"; do
      case "$a" in
        --output-file=*) echo '{"type": "external_account"}' > "${a#--output-file=}" ;;
      esac
    done ;;
esac
"""
PROJECT_NUMBER = "987654321"
ROLE_ARNS = ["arn:aws:iam::123456789012:role/team/convbridge-WebhookFunctionRole-X",
             "arn:aws:iam::123456789012:role/convbridge-GcsTriggerRole-AbC123"]


def run_federation_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                                list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    log.write_text("")
    answer = subprocess.run(
        ["bash", str(GCP / "federation.sh")], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "GCLOUD_LOG": str(log),
             "PROJECT_ID": "my-project", "AWS_ACCOUNT_ID": "123456789012",
             "BUCKETS": "watched-a watched-b", **env})
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    return answer, calls


def _flag(call: list[str], name: str) -> str | None:
    return next((arg.split("=", 1)[1] for arg in call if arg.startswith(f"--{name}=")), None)


def _terraform_condition(main_tf: dict[str, Any], role_arns: list[str]) -> str | None:
    """main.tf's attribute condition for ``role_arns``, worked out as Terraform would."""
    (locals_,) = main_tf["locals"]
    assert locals_["aws_role_condition"] == (
        "${length(local.aws_assumed_roles) > 0 ? \"attribute.aws_role in "
        "[${join(\", \", formatlist(\"'%s'\", sort(local.aws_assumed_roles)))}]\" : null}")
    call = re.fullmatch(r'\$\{toset\(\[for arn in var\.aws_role_arns : replace\(arn, "(.+)", '
                        r'"(.+)"\)\]\)\}', locals_["aws_assumed_roles"])
    assert call
    assumed = sorted({_terraform_replace(call.group(1), call.group(2), arn) for arn in role_arns})
    if not assumed:
        return None
    quoted = ", ".join(f"'{role}'" for role in assumed)
    return f"attribute.aws_role in [{quoted}]"


def _bridge_roles_in_terraform(main_tf: dict[str, Any]) -> set[str]:
    return {body["role"] for body in _blocks(main_tf, "resource").values()
            if "google_service_account.bridge" in str(body.get("member", ""))
            or body.get("service_account_id") == "${google_service_account.bridge.name}"}


def test_federation_script_grants_what_the_terraform_grants(
        main_tf: dict[str, Any], tmp_path: Path) -> None:
    answer, calls = run_federation_script(tmp_path, AWS_ROLE_ARNS=",".join(ROLE_ARNS))
    assert answer.returncode == 0, answer.stderr
    resources = _blocks(main_tf, "resource")
    provider = resources[("google_iam_workload_identity_pool_provider", "aws")]
    pool = resources[("google_iam_workload_identity_pool", "aws")]
    (create_pool,) = [c for c in calls if c[:3] == ["iam", "workload-identity-pools", "create"]]
    (create,) = [c for c in calls if c[:4] == ["iam", "workload-identity-pools", "providers",
                                              "create-aws"]]
    # the same pool and provider names, the same AWS account, mapping and condition
    assert pool["workload_identity_pool_id"] == "${var.name}-aws" and create_pool[3] == (
        "convbridge-aws")
    assert provider["workload_identity_pool_provider_id"] == "${var.name}-aws"
    assert create[4] == "convbridge-aws" and _flag(create, "workload-identity-pool") == (
        "convbridge-aws")
    assert _one(provider["aws"]) == {"account_id": "${var.aws_account_id}"}
    assert _flag(create, "account-id") == "123456789012"
    mapping = dict(item.split("=", 1) for item in (_flag(create, "attribute-mapping") or "")
                   .split(","))
    assert mapping == provider["attribute_mapping"]
    assert provider["attribute_condition"] == "${local.aws_role_condition}"
    assert _flag(create, "attribute-condition") == _terraform_condition(main_tf, ROLE_ARNS)
    # the same roles for the bridge's service account, to the same members
    bridge = "convbridge-bridge@my-project.iam.gserviceaccount.com"
    bindings = {(_flag(c, "member"), _flag(c, "role")) for c in calls
                if "add-iam-policy-binding" in c}
    assert {role for _, role in bindings} == _bridge_roles_in_terraform(main_tf)
    pool_name = (f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
                 "convbridge-aws")
    assert bindings == {
        (f"serviceAccount:{bridge}", "roles/iam.serviceAccountTokenCreator"),
        *((f"principalSet://iam.googleapis.com/{pool_name}/attribute.aws_role/"
           f"arn:aws:sts::123456789012:assumed-role/{name}", "roles/iam.workloadIdentityUser")
          for name in ("convbridge-GcsTriggerRole-AbC123", "convbridge-WebhookFunctionRole-X")),
        (f"serviceAccount:{bridge}", "roles/storage.objectUser"),
    }
    buckets = [c[3] for c in calls if c[:3] == ["storage", "buckets", "add-iam-policy-binding"]]
    assert buckets == ["gs://watched-a", "gs://watched-b"]
    # the credential configuration, as Terraform's output command makes it, on stdout
    (config,) = [c for c in calls if "create-cred-config" in c]
    assert config[3] == f"{pool_name}/providers/convbridge-aws" and "--aws" in config
    assert _flag(config, "service-account") == bridge
    assert json.loads(answer.stdout) == {"type": "external_account"}


def test_federation_script_before_the_stack_exists_lets_no_role_act(
        main_tf: dict[str, Any], tmp_path: Path) -> None:
    answer, calls = run_federation_script(tmp_path)
    assert answer.returncode == 0, answer.stderr
    (create,) = [c for c in calls if "create-aws" in c]
    assert _flag(create, "attribute-condition") is None
    assert _terraform_condition(main_tf, []) is None
    assert not [c for c in calls if "roles/iam.workloadIdentityUser" in " ".join(c)]
    assert json.loads(answer.stdout) == {"type": "external_account"}


@pytest.mark.parametrize("env", [
    {"AWS_ROLE_ARNS": "arn:aws:iam::123456789012:user/someone"},
    {"AWS_ACCOUNT_ID": "12345"},
], ids=["not-a-role", "bad-account"])
def test_federation_script_refuses_what_terraform_validation_refuses(
        env: dict[str, str], tmp_path: Path) -> None:
    answer, calls = run_federation_script(tmp_path, **env)
    assert answer.returncode == 2 and calls == []
