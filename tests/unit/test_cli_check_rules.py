"""``convbridge check-rules``: rules that parse but cannot work are refused, each with its rule,
all at once; rules are read from every location the functions read them from; a template or a
deployed stack adds the deployment's checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from convbridge import cli
from convbridge.cli import main

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REQUIRED = ["SourceBucketName=my-bucket",
            "ContextSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:ctx-AbCdEf"]


def rule(name: str, *, storage: str = "s3", location: str = "my-bucket", prefix: str = "inbox/",
         suffixes: str = "[.png]", to: str = "pdf", provider: str = "cloudconvert",
         extra: str = "") -> str:
    return f"""
  - name: {name}
    match: {{storage: {storage}, location: {location}, prefix: {prefix}, suffixes: {suffixes}}}
    convert: {{to: {to}}}
    provider: {provider}
    outputs: {name}/out/
    results: {name}/results/
    failures: {name}/failures/
{extra}"""


GOOD = "version: 1\nrules:" + rule("photos")
SFTP_FREECONVERT = rule("sftp-free", storage="sftp", location="sftp.example.com", prefix="drop/",
                        provider="freeconvert")
SAS_ON_S3 = rule("sas-on-s3", prefix="inbox/sas/", extra="    read_grant: sas\n")
PNG_TO_MP3 = rule("png-to-mp3", prefix="inbox/sound/", suffixes="[.png, .jpg]", to="mp3")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check-rules", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CONVBRIDGE_S3_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def test_good_rules_pass_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, write(tmp_path, GOOD))
    assert code == 0, err
    assert "photos: s3://my-bucket/inbox/* -> pdf via cloudconvert" in out


def test_freeconvert_on_sftp_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, write(tmp_path, "version: 1\nrules:" + SFTP_FREECONVERT))
    assert code == 1
    assert "rule 'sftp-free': freeconvert cannot read from sftp" in err
    assert "UPLOAD_UNSUPPORTED" in err
    assert "providers that can: cloudconvert" in err


def test_sas_read_grant_on_s3_is_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, write(tmp_path, "version: 1\nrules:" + SAS_ON_S3))
    assert code == 1
    assert ("rule 'sas-on-s3': read_grant: sas is not a grant s3 can mint "
            "(it mints presigned_url, sts_session)") in err


def test_png_to_mp3_is_refused_with_its_suffixes(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, write(tmp_path, "version: 1\nrules:" + PNG_TO_MP3))
    assert code == 1
    assert "rule 'png-to-mp3': convert.to mp3 (audio) cannot be made from .png, .jpg (image)" in err


def test_plausible_conversions_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ("version: 1\nrules:" + rule("pdf-pages", suffixes="[.pdf]", to="png")
            + rule("soundtrack", prefix="video/", suffixes="[.mp4, .mov]", to="mp3")
            + rule("unknown-input", prefix="other/", suffixes="[.xyz]", to="mp3"))
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 0, err


def test_every_problem_is_printed_at_once(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = "version: 1\nrules:" + SFTP_FREECONVERT + SAS_ON_S3 + PNG_TO_MP3
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 1
    for name in ("sftp-free", "sas-on-s3", "png-to-mp3"):
        assert f"problem: rule '{name}'" in err
    assert "3 problem(s) found" in err


def test_an_invalid_file_lists_every_problem(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = "version: 1\nrules:" + rule("a", to="pfd") + rule("b", provider="nobody")
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 1
    assert "unknown output format 'pfd'" in err and "'nobody' is not one of" in err


def test_a_missing_file_is_an_unreadable_input(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, str(tmp_path / "absent.yaml"))
    assert code == 3
    assert "cannot read rules" in err


def test_rules_in_ssm_are_read(aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    boto3.client("ssm").put_parameter(Name="/convbridge/rules", Value=GOOD, Type="String")
    code, out, err = check(capsys, "ssm:/convbridge/rules")
    assert code == 0, err
    assert "photos: s3://my-bucket/inbox/*" in out


def test_rules_in_s3_are_read(aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="rules-config")
    s3.put_object(Bucket="rules-config", Key="rules/prod.yaml",
                  Body=(GOOD + SAS_ON_S3).encode())
    code, out, err = check(capsys, "s3://rules-config/rules/prod.yaml")
    assert code == 1
    assert "photos: s3://my-bucket/inbox/*" in out
    assert "rule 'sas-on-s3': read_grant: sas" in err


def test_a_missing_ssm_parameter_is_an_unreadable_input(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, "ssm:/convbridge/absent")
    assert code == 3
    assert "ssm:/convbridge/absent" in err


def test_the_deployed_template_passes_good_rules(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(TEMPLATE),
                           "--parameter-overrides", *REQUIRED)
    assert code == 0, err
    assert "provider secret convbridge/providers/cloudconvert (for rules photos)" in out


def test_the_default_trigger_concurrency_fits_the_default_account_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(TEMPLATE),
                           "--parameter-overrides", *REQUIRED)
    assert code == 0, err
    assert "warning" not in out + err


def test_more_trigger_environments_than_the_account_has_jobs_is_warned_with_the_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(TEMPLATE),
                           "--parameter-overrides", *REQUIRED, "S3EventsMaxConcurrency=12")
    assert code == 0, err  # nothing fails: the provider's busy answers defer the excess
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    assert ("S3EventsMaxConcurrency 12 runs up to 12 S3TriggerFunction environments at once, "
            "each with 1 of cloudconvert's 5 concurrent jobs (the adapter's default): up to "
            "12 job creations at once") in warning
    assert "set S3EventsMaxConcurrency to at most 5" in warning
    assert "CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS" in warning and "photos" in warning


def test_an_account_limit_set_in_the_template_allows_more_trigger_environments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TEMPLATE.read_text(encoding="utf-8").replace(
        "        CONVBRIDGE_RULES: !Ref RulesLocation\n",
        "        CONVBRIDGE_RULES: !Ref RulesLocation\n"
        "        CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS: \"12\"\n", 1)
    assert "CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS" in text
    template = tmp_path / "template.yaml"
    template.write_text(text, encoding="utf-8")
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(template),
                           "--parameter-overrides", *REQUIRED, "S3EventsMaxConcurrency=12")
    assert code == 0, err
    assert "warning" not in out + err
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(template),
                           "--parameter-overrides", *REQUIRED, "S3EventsMaxConcurrency=13")
    assert ("each with 1 of cloudconvert's 12 concurrent jobs "
            "(CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS)") in out


def test_a_bucket_the_stack_does_not_watch_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "version: 1\nrules:" + rule("elsewhere", location="other-bucket")
    code, _, err = check(capsys, write(tmp_path, text), "--template", str(TEMPLATE),
                         "--parameter-overrides", *REQUIRED)
    assert code == 1
    assert ("rule 'elsewhere': watches bucket other-bucket, but the stack watches "
            "s3://my-bucket/inbox/*") in err


def test_a_prefix_the_stack_does_not_watch_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "version: 1\nrules:" + rule("uploads", prefix="uploads/")
    code, _, err = check(capsys, write(tmp_path, text), "--template", str(TEMPLATE),
                         "--parameter-overrides", *REQUIRED, "WatchedPrefix=incoming/")
    assert code == 1
    assert ("rule 'uploads': watches prefix 'uploads/', but the stack watches only "
            "s3://my-bucket/incoming/*") in err


def test_a_storage_whose_trigger_is_off_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "version: 1\nrules:" + rule("azure", storage="azure_blob", location="acct/uploads")
    code, _, err = check(capsys, write(tmp_path, text), "--template", str(TEMPLATE),
                         "--parameter-overrides", *REQUIRED)
    assert code == 1
    assert ("rule 'azure': azure_blob is not served: the stack's AzureTriggerFunction is off: "
            "set AzureAccountSecretArn, EventGridSecretArn") in err
    on = ["AzureAccountSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:az-AbCdEf",
          "EventGridSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:eg-AbCdEf"]
    code, _, err = check(capsys, write(tmp_path, text), "--template", str(TEMPLATE),
                         "--parameter-overrides", *REQUIRED, *on)
    assert code == 0, err


def test_provider_secrets_follow_the_prefix_parameter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, write(tmp_path, GOOD), "--template", str(TEMPLATE),
                           "--parameter-overrides", *REQUIRED, "ProviderSecretsPrefix=team/x/")
    assert code == 0, err
    assert "provider secret team/x/cloudconvert" in out


def test_missing_and_unknown_parameters_are_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, write(tmp_path, GOOD), "--template", str(TEMPLATE),
                         "--parameter-overrides", "Nonsense=1")
    assert code == 1
    assert "parameter Nonsense is not one the template declares" in err
    assert "parameters without a value or default: SourceBucketName, ContextSecretArn" in err


def test_an_existing_bucket_is_watched_through_the_templates_eventbridge_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SourceBucketMode existing: the stack creates no bucket; its EventBridge rule sends the
    named bucket's uploads under the watched prefix, and nothing else is watched."""
    rules = "version: 1\nrules:" + rule("theirs", location="their-bucket")
    overrides = [item for item in REQUIRED if not item.startswith("SourceBucketName=")]
    code, _, err = check(capsys, write(tmp_path, rules), "--template", str(TEMPLATE),
                         "--parameter-overrides", *overrides, "SourceBucketName=their-bucket",
                         "SourceBucketMode=existing")
    assert code == 0, err
    other = "version: 1\nrules:" + rule("elsewhere", location="another-bucket")
    code, _, err = check(capsys, write(tmp_path, other), "--template", str(TEMPLATE),
                         "--parameter-overrides", *overrides, "SourceBucketName=their-bucket",
                         "SourceBucketMode=existing")
    assert code == 1 and "another-bucket" in err


def test_parameter_overrides_need_a_deployment(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check-rules", write(tmp_path, GOOD), "--parameter-overrides", "A=b"])
    assert exited.value.code == 2


def test_a_deployed_stack_is_read_and_its_secrets_checked(
        aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's CloudFormation needs extras this environment lacks (openapi_spec_validator), so
    the CloudFormation answers are stubbed in botocore's own shapes; Secrets Manager is moto."""
    boto3.client("secretsmanager").create_secret(Name="convbridge/providers/cloudconvert",
                                                 SecretString="{}")
    cloudformation = boto3.client("cloudformation")
    stub = Stubber(cloudformation)
    stub.add_response("describe_stacks", {"Stacks": [{
        "StackName": "convbridge", "CreationTime": "2024-01-01T00:00:00Z",
        "StackStatus": "CREATE_COMPLETE",
        "Parameters": [{"ParameterKey": "SourceBucketName", "ParameterValue": "my-bucket"},
                       {"ParameterKey": "ContextSecretArn", "ParameterValue": "arn:x"}]}]},
        {"StackName": "convbridge"})
    stub.add_response("get_template", {"TemplateBody": TEMPLATE.read_text(encoding="utf-8")},
                      {"StackName": "convbridge", "TemplateStage": "Original"})
    made = {"cloudformation": cloudformation}
    real = boto3.client
    monkeypatch.setattr(boto3, "client", lambda service, **kw: made.get(service)
                        or real(service, **kw))
    text = GOOD + rule("free", prefix="inbox/free/", provider="freeconvert")
    with stub:
        code, out, err = check(capsys, write(tmp_path, text), "--stack", "convbridge")
    assert code == 1
    assert "provider secret convbridge/providers/cloudconvert (for rules photos)" in out
    assert ("secret convbridge/providers/freeconvert does not exist; rules free need it for "
            "freeconvert") in err
    assert "problem: rule" not in err


def test_help_documents_exit_codes_and_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], ["check-rules", "--help"], ["explain", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out and "2  usage error" in out
    parser = cli._parser()
    for action in parser._actions:
        assert action.help, action
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in commands.choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, (name, action.dest)


def test_the_example_rules_pass_offline(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, str(TEMPLATE.parent / "rules.example.yaml"))
    assert code == 0, err
