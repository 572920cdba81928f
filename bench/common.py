"""What every benchmark shares: a row of results, timing helpers, and running a snippet in a
fresh interpreter (the only honest way to time imports and memory)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One measured figure, its baseline from the same run, and the target it answers to."""

    area: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


def median_seconds(action: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter from the repository root; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark snippet failed:\n{done.stderr[-2000:]}")
    return done.stdout


def run_json(code: str, **kwargs: object) -> dict[str, object]:
    lines = run_python(code, **kwargs).strip().splitlines()  # type: ignore[arg-type]
    result: dict[str, object] = json.loads(lines[-1])
    return result


def say(message: str) -> None:
    print(message, flush=True)
