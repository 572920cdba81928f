"""``convbridge retry --stack``: the trigger function found through CloudFormation, invoked
with retry events until it answers without a cursor, and its answers printed. AWS is stubbed
in botocore's own shapes (botocore Stubber), so the payloads sent are the ones asserted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from convbridge.cli import main

FUNCTION = "convbridge-S3TriggerFunction-AbC123"


def item(key: str, status: str, *, reason: str = "", job_id: str | None = None) -> dict[str, Any]:
    return {"object": f"s3://bucket/inbox/{key}", "rule": "images",
            "report": f"failures/{key}.json", "status": status, "reason": reason,
            "job_id": job_id}


def answer(*items: dict[str, Any], cursor: dict[str, str] | None = None,
           dry_run: bool = False, stopped: str | None = None) -> dict[str, Any]:
    return {"dry_run": dry_run, "counts": {}, "items": list(items), "cursor": cursor,
            "stopped": stopped}


def event(*, rule: str | None = None, dry_run: bool = False,
          cursor: dict[str, str] | None = None) -> dict[str, Any]:
    return {"convbridge": "retry", "rule": rule, "keys": None, "dry_run": dry_run,
            "cursor": cursor}


class Aws:
    """Stubbed CloudFormation and Lambda clients handed out by ``boto3.client``."""

    def __init__(self) -> None:
        self.cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        self.lambda_ = boto3.client("lambda", region_name="us-east-1")
        self.cfn_stub = Stubber(self.cloudformation)
        self.lambda_stub = Stubber(self.lambda_)

    def stack_has_trigger(self, stack: str = "convbridge",
                          output_key: str = "S3TriggerFunctionName") -> None:
        """The trigger named by the stack's output (SAM's key, or CDK's with its path and
        hash)."""
        self.cfn_stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": stack, "CreationTime": "2024-01-01T00:00:00Z",
            "StackStatus": "UPDATE_COMPLETE", "Outputs": [
                {"OutputKey": "ReconcilerFunctionName", "OutputValue": "reconciler"},
                {"OutputKey": output_key, "OutputValue": FUNCTION}]}]},
            {"StackName": stack})

    def stack_without_output(self, stack: str = "convbridge") -> None:
        """A stack deployed before the output: the trigger is found by its logical id."""
        self.cfn_stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": stack, "CreationTime": "2024-01-01T00:00:00Z",
            "StackStatus": "UPDATE_COMPLETE"}]}, {"StackName": stack})
        self.cfn_stub.add_response("describe_stack_resource", {"StackResourceDetail": {
            "LogicalResourceId": "S3TriggerFunction", "PhysicalResourceId": FUNCTION,
            "ResourceType": "AWS::Lambda::Function", "ResourceStatus": "CREATE_COMPLETE",
            "LastUpdatedTimestamp": "2024-01-01T00:00:00Z"}},
            {"StackName": stack, "LogicalResourceId": "S3TriggerFunction"})

    def invoked(self, sent: dict[str, Any], answered: Any, *,
                function_error: str | None = None) -> None:
        body = json.dumps(answered).encode()
        response: dict[str, Any] = {"StatusCode": 200,
                                    "Payload": StreamingBody(io.BytesIO(body), len(body))}
        if function_error:
            response["FunctionError"] = function_error
        self.lambda_stub.add_response("invoke", response, {
            "FunctionName": FUNCTION, "InvocationType": "RequestResponse",
            "Payload": json.dumps(sent).encode()})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    stubs = Aws()
    made = {"cloudformation": stubs.cloudformation, "lambda": stubs.lambda_}
    monkeypatch.setattr(boto3, "client", lambda service, **kw: made[service])
    with stubs.cfn_stub, stubs.lambda_stub:
        yield stubs
        stubs.cfn_stub.assert_no_pending_responses()
        stubs.lambda_stub.assert_no_pending_responses()


def retry(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["retry", "--stack", "convbridge", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_trigger_is_invoked_again_from_each_cursor_until_none_is_left(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.stack_has_trigger()
    cursor = {"rule": "images", "start": "failures/c.png.json"}
    aws.invoked(event(rule="images"), answer(item("a.png", "submitted", job_id="job-1"),
                                             item("b.png", "skipped",
                                                  reason="the source is gone"),
                                             cursor=cursor, stopped="2 reports per run"))
    aws.invoked(event(rule="images", cursor=cursor),
                answer(item("c.png", "submitted", job_id="job-2")))
    code, out, _ = retry(capsys, "--rule", "images")
    assert out.splitlines() == [
        "s3://bucket/inbox/a.png: submitted as job job-1",
        "s3://bucket/inbox/b.png: skipped (the source is gone)",
        "continuing from failures/c.png.json (2 reports per run)",
        "s3://bucket/inbox/c.png: submitted as job job-2",
        "1 skipped, 2 submitted",
    ]
    assert code == 1  # a source was gone


def test_dry_run_asks_the_function_for_a_dry_run_and_lists_what_it_would_resubmit(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.stack_has_trigger()
    aws.invoked(event(dry_run=True), answer(
        item("a.png", "would_resubmit", reason="put back from failures/a.png first"),
        dry_run=True))
    code, out, _ = retry(capsys, "--dry-run")
    assert out.splitlines() == [
        "s3://bucket/inbox/a.png: would resubmit (put back from failures/a.png first)",
        "dry run, nothing changed: 1 would resubmit",
    ]
    assert code == 0


@pytest.mark.parametrize("found", ["sam-output", "cdk-output", "logical-id"])
def test_nothing_to_retry(aws: Aws, capsys: pytest.CaptureFixture[str], found: str) -> None:
    if found == "logical-id":
        aws.stack_without_output()
    else:
        aws.stack_has_trigger(output_key="S3TriggerFunctionName" if found == "sam-output"
                              else "ConvBridgeOutputsS3TriggerFunctionName5A1B2C3D")
    aws.invoked(event(), answer())
    code, out, _ = retry(capsys)
    assert (code, out) == (0, "nothing to retry: no failure reports found\n")


def test_a_refused_retry_event_is_a_usage_error_with_the_function_s_reason(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.stack_has_trigger()
    aws.invoked(event(rule="nope"), {"error": "BadRetryEvent",
                                     "message": "rule: no rule named 'nope'"})
    code, out, err = retry(capsys, "--rule", "nope")
    assert code == 2 and out == ""
    assert f"{FUNCTION} refused the retry: rule: no rule named 'nope'" in err


def test_a_crashed_invocation_is_reported_and_not_invoked_again(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.stack_has_trigger()
    aws.invoked(event(), {"errorMessage": "Task timed out after 30.00 seconds"},
                function_error="Unhandled")
    code, _, err = retry(capsys)
    assert code == 1 and "Task timed out" in err


def test_a_run_that_handled_nothing_is_not_invoked_again_for_ever(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.stack_has_trigger()
    aws.invoked(event(), answer(cursor={"rule": "images", "start": "failures/a.png.json"},
                                stopped="the invocation's time is nearly up"))
    code, _, err = retry(capsys)
    assert code == 1 and "stopped before any report: the invocation's time" in err


def test_a_stack_without_the_trigger_is_unreadable(
        aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws.cfn_stub.add_client_error(
        "describe_stacks", "ValidationError", "Stack with id gone does not exist",
        expected_params={"StackName": "gone"})
    code = main(["retry", "--stack", "gone"])
    err = capsys.readouterr().err
    assert code == 3 and "Stack with id gone does not exist" in err


def test_help_says_which_mode_is_which(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["retry", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--stack NAME" in out and "--dry-run" in out
    assert "lambda:InvokeFunction" in out and "Without --stack" in out
