"""Cold start: importing each function's handler module in a fresh interpreter, against the
baseline ``import boto3`` + Powertools ``Logger()`` measured the same way in the same run. Also
records which other clouds' SDKs (and the X-Ray Tracer) each handler pulls in: none should."""

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
    return rows


if __name__ == "__main__":
    for row in measure():
        print(row)
