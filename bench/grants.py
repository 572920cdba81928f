"""Grant minting: what it costs to scope credentials to one object. Presigned/SAS/signed URLs
are local signing (target well under 1 ms each); STS grants are one AssumeRole round trip per
job (reported, against moto on loopback). The baseline is an unscoped boto3 presign of the
same object in the same run."""

from __future__ import annotations

import time

import boto3

from bench.common import Row, median_seconds, say
from convbridge.model import ObjectRef, OutputTarget
from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage
from devstack.servers import MotoServer

N = 2000


def _per_call(action: object, n: int = N) -> float:
    def loop() -> None:
        for _ in range(n):
            action()  # type: ignore[operator]
    return median_seconds(loop, repeat=3) / n


def measure() -> list[Row]:
    rows = []
    with MotoServer() as moto:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=S3_CLIENT_CONFIG)
        sts = boto3.client("sts", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
        storage = S3Storage(s3_client=s3, sts_client=sts,
                            grant_role_arn="arn:aws:iam::123456789012:role/grants",
                            endpoint_url=moto.endpoint_url)
        ref = ObjectRef("s3", "bench-bucket", "inbox/a/photo 1.png")
        raw = _per_call(lambda: s3.generate_presigned_url(
            "get_object", Params={"Bucket": "bench-bucket", "Key": ref.key}, ExpiresIn=900))
        presign = _per_call(lambda: storage.grant_read(ref, 900))
        rows.append(Row("grants", "S3 read grant (SigV4 presigned GET)", presign * 1000, "ms",
                        raw * 1000, "boto3 generate_presigned_url", "well under 1 ms",
                        presign < 0.001))
        say(f"  presigned read grant: {presign * 1e6:.0f} us (boto3 alone {raw * 1e6:.0f} us)")
        started = time.perf_counter()
        for _ in range(50):
            storage.grant_read(ref, 900, kind="sts_session")
        sts_read = (time.perf_counter() - started) / 50
        started = time.perf_counter()
        for _ in range(50):
            storage.grant_write(OutputTarget("s3", "bench-bucket", "outbox/a/photo 1.pdf"), 3600)
        sts_write = (time.perf_counter() - started) / 50
        rows.append(Row("grants", "S3 read grant (STS session policy, one AssumeRole)",
                        sts_read * 1000, "ms", raw * 1000, "boto3 generate_presigned_url",
                        "report", None, "one STS round trip (moto on loopback); not cached: "
                        "a cached session would widen scope to other objects"))
        rows.append(Row("grants", "S3 write grant (STS session policy, one AssumeRole)",
                        sts_write * 1000, "ms", raw * 1000, "boto3 generate_presigned_url",
                        "report", None, "per job; scoped to the job's own output key"))
        say(f"  STS grants: read {sts_read * 1000:.1f} ms, write {sts_write * 1000:.1f} ms")
    rows += _other_storages(raw)
    return rows


def _other_storages(raw: float) -> list[Row]:
    """SAS and GCS signed URLs, when those adapters are installed; both sign locally."""
    rows: list[Row] = []
    try:
        from bench.grants_other import azure_sas_seconds, gcs_signed_url_seconds
    except ImportError:
        return rows
    for label, measure_one in (("Azure read grant (service SAS, one blob)", azure_sas_seconds),
                               ("GCS read grant (V4 signed URL, GET)", gcs_signed_url_seconds)):
        try:
            seconds = measure_one()
        except Exception as exc:  # noqa: BLE001 (a missing adapter is reported, not fatal)
            rows.append(Row("grants", label, float("nan"), "ms", note=f"not measured: {exc}"))
            continue
        rows.append(Row("grants", label, seconds * 1000, "ms", raw * 1000,
                        "boto3 generate_presigned_url", "well under 1 ms", seconds < 0.001))
        say(f"  {label}: {seconds * 1e6:.0f} us")
    return rows


if __name__ == "__main__":
    for row in measure():
        print(row)
