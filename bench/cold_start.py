"""Cold start: importing each function's handler module in a fresh interpreter, against the
baseline ``import boto3`` + Powertools ``Logger()`` measured the same way in the same run. Also
records which other clouds' SDKs (and the X-Ray Tracer) each handler pulls in: none should.

And the first invocation: in a fresh interpreter, import functions/s3_trigger/app.py and hand
its handler one direct S3 event against a warm local stack (moto in its own process, the
provider sandbox, the webhook), timing import + invocation, against ``import boto3`` +
``Logger()`` + one boto3 HeadObject against the same moto, in the same run."""

from __future__ import annotations

import json
import statistics

from bench.common import ROOT, Row, run_python, say

FUNCTIONS = ["s3_trigger", "webhook", "azure_trigger", "gcs_trigger", "sftp_sweep"]
FOREIGN = {"azure": "azure.storage.blob", "google": "google.cloud.storage",
           "paramiko": "paramiko", "xray": "aws_xray_sdk"}
ENV = {"POWERTOOLS_SERVICE_NAME": "convbridge", "AWS_DEFAULT_REGION": "us-east-1"}
RUNS = 9

TIMED = """
import json, sys, time
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "modules": sorted(sys.modules)}}))
"""


def _median(body: str) -> tuple[float, list[str]]:
    seconds, modules = [], []
    for _ in range(RUNS):
        result = json.loads(run_python(TIMED.format(body=body), env=ENV).strip().splitlines()[-1])
        seconds.append(result["seconds"])
        modules = result["modules"]
    return statistics.median(seconds), modules


FIRST_RUNS = 7

FIRST = """
import json, time
event = json.loads({event!r})


class Context:
    function_name = "convbridge-s3-trigger"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:convbridge-s3-trigger"
    aws_request_id = {request_id!r}

    def get_remaining_time_in_millis(self):
        return 60000


started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "result": result}}))
"""

FIRST_OURS = """import importlib.util
spec = importlib.util.spec_from_file_location('app', {app!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
result = module.handler(event, Context())"""

FIRST_BASELINE = """import boto3
from aws_lambda_powertools import Logger
Logger()
record = event["Records"][0]["s3"]
head = boto3.client("s3").head_object(Bucket=record["bucket"]["name"],
                                      Key=record["object"]["key"])
result = {"size": head["ContentLength"]}"""


def first_invocation() -> Row:
    """Import + first invocation of the S3 trigger against a warm stack, in fresh interpreters
    that reach the parent's servers through the environment the stack set."""
    import uuid

    from devstack.stack import DevStack

    app = str(ROOT / "functions" / "s3_trigger" / "app.py")
    ours, base = [], []
    with DevStack(moto_own_process=True) as stack:
        for run in range(FIRST_RUNS):
            key = f"inbox/cold-{run}.png"
            stack.upload(key, b"\x89PNG\r\n\x1a\n" + bytes(1024))
            event = json.dumps(stack.s3_event(key))
            for body, into in ((FIRST_BASELINE, base),
                               (FIRST_OURS.format(app=app), ours)):
                result = json.loads(run_python(FIRST.format(
                    event=event, request_id=str(uuid.uuid4()), body=body),
                    env=ENV).strip().splitlines()[-1])
                if body is not FIRST_BASELINE and result["result"]["counts"] != {"submitted": 1}:
                    raise RuntimeError(f"first invocation did not submit: {result['result']}")
                into.append(result["seconds"])
            stack.wait(timeout=60)  # let the job and its callback settle before the next run
    seconds, baseline = statistics.median(ours), statistics.median(base)
    say(f"  first invocation of s3_trigger: {seconds * 1000:.0f} ms "
        f"(baseline {baseline * 1000:.0f} ms, {seconds / baseline:.2f}x)")
    return Row(
        area="cold start", figure="import + first invocation of s3_trigger (direct S3 event, "
        "warm local stack)", value=seconds * 1000, unit="ms", baseline=baseline * 1000,
        baseline_label="import boto3 + Logger() + one S3 HeadObject", target="report",
        note=f"median of {FIRST_RUNS}; one submission: claim, records, write grant, job "
             "(moto and the sandbox on loopback)")


def measure() -> list[Row]:
    baseline, _ = _median("import boto3\nfrom aws_lambda_powertools import Logger\nLogger()")
    say(f"cold start baseline (boto3 + Logger): {baseline * 1000:.0f} ms")
    rows = []
    for name in FUNCTIONS:
        app = ROOT / "functions" / name / "app.py"
        if not app.exists():
            continue
        seconds, modules = _median(
            f"import importlib.util\nspec = importlib.util.spec_from_file_location('app', "
            f"{str(app)!r})\nmodule = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)")
        foreign = [label for label, module in FOREIGN.items() if module in modules]
        own = {"azure_trigger": "azure", "gcs_trigger": "google", "sftp_sweep": "paramiko"}
        unexpected = [f for f in foreign if own.get(name) != f]
        target = "<= 1.15x baseline" if name in {"s3_trigger", "webhook"} else "report"
        ratio = seconds / baseline
        rows.append(Row(
            area="cold start", figure=f"import functions/{name}/app.py", value=seconds * 1000,
            unit="ms", baseline=baseline * 1000, baseline_label="import boto3 + Logger()",
            target=target, met=(ratio <= 1.15) if target != "report" else not unexpected,
            note=("SDKs loaded: " + ", ".join(foreign)) if foreign else "no other cloud's SDK",
        ))
        say(f"  {name}: {seconds * 1000:.0f} ms ({ratio:.2f}x); {rows[-1].note}")
    rows.append(first_invocation())
    return rows


if __name__ == "__main__":
    for row in measure():
        print(row)
