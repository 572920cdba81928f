"""``convbridge status``: counts per rule, provider and status, job latency and failures, read
from the records with bounded listings; filters, the early stop, the progress line and the
exit codes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from convbridge.cli import main
from convbridge.errors import ConfigError, StorageError
from convbridge.status import Latency, parse_since
from convbridge.testing import MemoryStorage, memory_bridge
from tests.status_records import (
    BUCKET,
    FAILURE_CODE,
    FAILURE_MESSAGE,
    RULES,
    SCRIPT_KEY,
    finished,
    status_bridge,
    store,
    use_bridge,
)


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def section(out: str, title: str) -> list[str]:
    """The lines of the section whose heading starts with ``title``, heading excluded."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rest = lines[start + 1:]
    return rest[:rest.index("")] if "" in rest else rest


def rows(out: str, title: str) -> dict[str, dict[str, str]]:
    """A table section as {first two cells joined by '/': {header: cell}}."""
    header, *body = section(out, title)
    names = re.split(r"\s{2,}", header)
    found = {}
    for line in body:
        cells = re.split(r"\s{2,}", line)
        found[f"{cells[0]}/{cells[1]}"] = dict(zip(names, cells, strict=False))
    return found


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> None:
    use_bridge(monkeypatch, status_bridge())


def test_counts_per_rule_provider_and_status(records: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status(capsys)
    counts = rows(out, "records per rule and provider")
    assert counts["photos/cloudconvert"] == {
        "rule": "photos", "provider": "cloudconvert", "submitting": "0", "submitted": "1",
        "finished": "4", "failed": "1", "rejected": "0", "total": "6"}
    assert counts["docs/freeconvert"] == {
        "rule": "docs", "provider": "freeconvert", "submitting": "1", "submitted": "0",
        "finished": "2", "failed": "0", "rejected": "1", "total": "4"}
    # 10 result records and 2 failure reports; the cursor and the moved source are no records
    assert out.startswith("12 records read")
    assert code == 1  # failure reports are listed


def test_latency_median_p95_and_max_of_the_settled_jobs(
        records: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(capsys)
    latency = rows(out, "job latency")
    # photos: 2, 4, 6, 8 s finished and 100 s failed; the submitted job has no end yet
    assert latency["photos/cloudconvert"] == {"rule": "photos", "provider": "cloudconvert",
                                              "jobs": "5", "median": "6.0s", "p95": "1m40s",
                                              "max": "1m40s"}
    assert latency["docs/freeconvert"] == {"rule": "docs", "provider": "freeconvert",
                                           "jobs": "2", "median": "1m00s", "p95": "1m30s",
                                           "max": "1m30s"}


def test_failures_show_time_source_code_and_message_as_text(
        records: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(capsys)
    failures = section(out, "failures (2)")
    conversion = next(line for line in failures if FAILURE_CODE in line)
    assert f"s3://{BUCKET}/{SCRIPT_KEY}" in conversion
    assert conversion.endswith(FAILURE_MESSAGE)
    assert re.match(r"\d{4}-\d\d-\d\dT", conversion)
    rejected = next(line for line in failures if "TOO_LARGE" in line)
    assert "s3://my-bucket/docs/big.docx" in rejected and "over max_size_bytes" in rejected
    assert section(out, "latest outputs (6 of 6)")[1].endswith(".pdf")


def test_since_keeps_recent_records_only(records: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(capsys, "--since", "24h")
    assert rows(out, "records per rule and provider")["docs/freeconvert"]["finished"] == "1"
    assert rows(out, "job latency")["docs/freeconvert"]["jobs"] == "1"
    moment = (datetime.now(UTC) - timedelta(days=4)).date().isoformat()
    _, out, _ = status(capsys, "--since", moment)
    assert rows(out, "records per rule and provider")["docs/freeconvert"]["finished"] == "2"


def test_failed_keeps_failed_and_rejected_records(records: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status(capsys, "--failed")
    counts = rows(out, "records per rule and provider")
    assert counts["photos/cloudconvert"]["total"] == "1"
    assert counts["photos/cloudconvert"]["failed"] == "1"
    assert counts["docs/freeconvert"]["total"] == "1"
    assert counts["docs/freeconvert"]["rejected"] == "1"
    assert rows(out, "job latency")["photos/cloudconvert"]["max"] == "1m40s"
    assert len(section(out, "failures (2)")) == 3
    assert section(out, "latest outputs") == ["  none"]
    assert code == 1


def test_rule_keeps_one_rule(records: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(capsys, "--rule", "docs")
    assert list(rows(out, "records per rule and provider")) == ["docs/freeconvert"]
    assert "failures (1)" in out and FAILURE_CODE not in out


def test_a_listing_stops_at_max_records_and_says_so(records: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(capsys, "--max-records", "3")
    assert rows(out, "records per rule and provider")["photos/cloudconvert"]["total"] == "3"
    assert ("rule photos: stopped reading results after 3 records (--max-records 3); the "
            "figures cover only those") in out
    assert "rule docs: stopped reading results after 3 records" in out
    assert "stopped reading failures" not in out  # one report each: under the cap


def test_a_progress_line_on_stderr_for_long_listings(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    storage = MemoryStorage()
    bridge = memory_bridge(RULES, storage=storage)
    photos = bridge.rules.rules[0]
    for index in range(1200):
        key = f"inbox/p{index:04d}.png"
        store(storage, photos, key, finished(photos, key, 3))
    use_bridge(monkeypatch, bridge)
    code, out, err = status(capsys, "--progress")
    assert code == 0  # no failure report
    assert "\rphotos results: [#...................] 500 of at most 10000; 500 records read" \
        in err
    assert "\rphotos results: [##..................] 1000 of at most 10000; 1000 records read" \
        in err
    assert err.endswith("\n")
    assert rows(out, "records per rule and provider")["photos/cloudconvert"]["finished"] \
        == "1200"
    code, _, err = status(capsys)  # stderr is no terminal here
    assert err == ""


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--max-records", "0"],
                                  ["--rule", "nope"]])
def test_usage_errors_exit_2(records: None, capsys: pytest.CaptureFixture[str],
                             args: list[str]) -> None:
    try:
        code = main(["status", *args])
    except SystemExit as exited:
        code = int(str(exited.code))
    assert code == 2
    assert capsys.readouterr().err


def test_unreadable_records_or_environment_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    class Unlistable(MemoryStorage):
        def list_keys(self, location: str, prefix: str):  # type: ignore[no-untyped-def]
            raise StorageError(f"cannot list {location}/{prefix}: access denied")

    use_bridge(monkeypatch, memory_bridge(RULES, storage=Unlistable()))
    code, _, err = status(capsys)
    assert code == 3
    assert "cannot read the records: cannot list my-bucket/results/: access denied" in err

    def unconfigured(cls: object, env: object = None) -> None:
        raise ConfigError("CONVBRIDGE_RULES is not set")

    from convbridge.bridge import Bridge
    monkeypatch.setattr(Bridge, "from_env", classmethod(unconfigured))
    code, _, err = status(capsys)
    assert code == 3 and "CONVBRIDGE_RULES is not set" in err


def test_html_writes_the_page_and_an_unwritable_file_exits_3(
        records: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "status.html"
    code, out, _ = status(capsys, "--html", str(page))
    assert code == 1 and f"written to {page}" in out
    text = page.read_text("utf-8")
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in text
    assert "<script" not in text
    code, _, err = status(capsys, "--html", str(tmp_path / "missing" / "status.html"))
    assert code == 3 and "cannot write" in err


def test_control_characters_in_a_key_are_shown_escaped(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    storage = MemoryStorage()
    bridge = memory_bridge(RULES, storage=storage)
    photos = bridge.rules.rules[0]
    key = "inbox/\x1b[2Jcleared.png"
    store(storage, photos, key, finished(photos, key, 3, status="failed"))
    use_bridge(monkeypatch, bridge)
    _, out, _ = status(capsys)
    assert "\x1b" not in out and "inbox/\\x1b[2Jcleared.png" in out


def test_since_reads_durations_and_iso_times() -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2w", now) == now - timedelta(days=14)
    assert parse_since("2026-02-01T10:00:00+01:00", now) == datetime(2026, 2, 1, 9, tzinfo=UTC)
    assert parse_since("2026-02-01", now) == datetime(2026, 2, 1, tzinfo=UTC)


def test_latency_p95_is_the_nearest_rank() -> None:
    assert Latency.of(range(1, 101)) == Latency(100, 50.5, 95, 100)
    assert Latency.of([7.0]) == Latency(1, 7.0, 7.0, 7.0)


def test_help_names_every_option_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--rule", "--since", "--failed", "--html", "--max-records", "--progress"):
        assert option in out
    assert "exit codes:" in out and "failure reports listed by status" in out
