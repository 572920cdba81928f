"""``make demo`` as a user runs it: a fresh interpreter, exit code and what it prints, for the
embedded default and for every storage's local server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devstack.demo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def test_demo_converts_the_good_file_and_reports_the_corrupt_one() -> None:
    done = demo()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "outbox/photos/sunset beach.png.pdf" in out
    assert "status finished" in out
    assert "failed with CONVERSION_FAILED" in out
    assert "demo succeeded" in out


def test_each_job_line_names_its_file_and_the_outcome_its_record_states() -> None:
    done = demo()
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = re.findall(r"^  job [0-9a-f-]+  (.+)$", done.stdout, flags=re.MULTILINE)
    assert sorted(jobs) == ["inbox/photos/broken.png: failed (CONVERSION_FAILED)",
                            "inbox/photos/sunset beach.png: finished"]
    # the provider's own word for a failed job is not what the records say
    assert ": error" not in done.stdout


@pytest.mark.parametrize("storage", ["azure_blob", "gcs", "sftp"])
def test_demo_runs_on_every_storage(storage: str) -> None:
    done = demo("--storage", storage)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status finished" in done.stdout and "CONVERSION_FAILED" in done.stdout
    assert "inbox/photos/broken.png: failed (CONVERSION_FAILED)" in done.stdout


def test_an_unknown_storage_is_refused_with_the_choices() -> None:
    done = demo("--storage", "ftp")
    assert done.returncode == 2
    assert "invalid choice: 'ftp'" in done.stderr
