"""CloudConvert v2 over real HTTP (moto, the sandbox, the bridge's handlers) where the real
service differs from what the bridge once sent: a paged input exports several files, which
``export/s3`` names by a ``key_prefix`` (or ``%d`` in ``key``), never by one fixed key."""

from __future__ import annotations

import io

from PIL import Image

from devstack.stack import DevStack

PAGED_RULES = """\
version: 1
rules:
  - name: scans-to-png
    match: {storage: s3, location: %(location)s, prefix: inbox/, suffixes: [.tif]}
    convert: {to: png}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
"""


def tiff_pages(count: int) -> bytes:
    """A TIFF of ``count`` pages, each a different colour."""
    pages = [Image.new("RGB", (40, 30), (60 * n % 256, 90, 200)) for n in range(count)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def paged_stack() -> DevStack:
    return DevStack(rules_text=PAGED_RULES % {"location": "convbridge-demo"})


def convert(stack: DevStack, key: str, body: bytes) -> dict:
    stack.upload(key, body)
    summary = stack.trigger(stack.s3_event(key))
    stack.wait()
    assert summary["counts"] == {"submitted": 1}
    return summary


def test_a_three_page_scan_exports_three_pngs_into_the_output_folder() -> None:
    with paged_stack() as stack:
        convert(stack, "inbox/scan.tif", tiff_pages(3))
        record = stack.read_json("results/scan.tif.json")
        outputs = {key: stack.harness.read_bytes(key) for key in stack.objects("outbox/")}
    assert record is not None and record["status"] == "finished", record
    assert record["route"] == "native"
    folder = "outbox/scan.tif.png/"
    expected = [f"{folder}scan-{n}.png" for n in (1, 2, 3)]
    assert [o["key"] for o in record["outputs"]] == expected
    assert sorted(outputs) == expected
    for key in expected:
        body = outputs[key]
        assert body is not None and body.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(body)).size == (40, 30)
    assert len(set(outputs.values())) == 3  # each page its own image


def test_a_one_page_scan_exports_one_png_at_the_output_key() -> None:
    with paged_stack() as stack:
        convert(stack, "inbox/single.tif", tiff_pages(1))
        record = stack.read_json("results/single.tif.json")
        outputs = stack.objects("outbox/")
    assert record is not None and record["status"] == "finished", record
    assert [o["key"] for o in record["outputs"]] == ["outbox/single.tif.png"]
    assert list(outputs) == ["outbox/single.tif.png"]
    assert record["outputs"][0]["size"] == outputs["outbox/single.tif.png"] > 0
