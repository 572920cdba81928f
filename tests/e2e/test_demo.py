"""``make demo`` as a user runs it: a fresh interpreter, exit code and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_converts_the_good_file_and_reports_the_corrupt_one() -> None:
    done = subprocess.run([sys.executable, "-m", "devstack.demo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "outbox/photos/sunset beach.pdf" in out
    assert "status finished" in out
    assert "failed with CONVERSION_FAILED" in out
    assert "demo succeeded" in out


def test_demo_refuses_storages_it_cannot_run_yet() -> None:
    done = subprocess.run([sys.executable, "-m", "devstack.demo", "--storage", "sftp"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not available in the demo yet" in done.stdout
