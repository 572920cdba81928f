"""``convbridge status`` over the S3 adapter against a moto server: a results prefix longer
than one listing page (1000 keys) is read page by page up to ``--max-records``, and objects on
a local endpoint are named by their URI, with no console link."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from convbridge.bridge import Bridge
from convbridge.cli import main
from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage
from convbridge.testing import memory_bridge
from devstack.servers import MotoServer
from tests.status_records import BUCKET, RULES, finished, use_bridge

RECORDS = 1100


@pytest.fixture
def s3_bridge(moto: MotoServer) -> Bridge:
    client: Any = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing",
                               config=S3_CLIENT_CONFIG)
    client.create_bucket(Bucket=BUCKET)
    storage = S3Storage(s3_client=client, region="us-east-1", endpoint_url=moto.endpoint_url)
    memory = memory_bridge(RULES)
    photos = memory.rules.rules[0]
    for index in range(RECORDS):
        key = f"inbox/p{index:04d}.png"
        storage.write_json(BUCKET, photos.result_key(key), finished(photos, key, index).to_json(),
                           marker=photos.name)
    settings = replace(memory.settings, s3_endpoint_url=moto.endpoint_url)
    return Bridge(settings, memory.rules, memory.secrets, storages={"s3": storage},
                  claims=memory.claims)


def test_listing_pages_are_read_up_to_max_records(
        s3_bridge: Bridge, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_bridge(monkeypatch, s3_bridge)
    page = tmp_path / "status.html"
    assert main(["status", "--max-records", "1050", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "photos  cloudconvert  0           0          1050" in out
    assert ("rule photos: stopped reading results after 1050 records (--max-records 1050)"
            in out)
    text = page.read_text("utf-8")
    assert "<code>s3://my-bucket/outbox/p1099.png.pdf</code>" not in text  # not read
    assert "<td><code>s3://my-bucket/outbox/p1049.png.pdf</code></td>" in text
    assert "console.aws.amazon.com" not in text

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"{RECORDS} records read" in out and "stopped reading" not in out
