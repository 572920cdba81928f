"""``make bench``: run every benchmark and write BENCHMARKS.md (figures, baselines from the
same run, ratios, targets, the command and the machine), bench/scaling.json and
bench/scaling.png."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    aws_calls,
    burst,
    cold_start,
    grant_signing,
    grants,
    layer_bytecode,
    plot,
    relay,
    submit,
)
from bench.common import ROOT, Row, say

COMMAND = "make bench"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # NaN: not measured
        return "n/a"
    text = f"{value:.3f}" if abs(value) < 1 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def table(rows: list[Row]) -> list[str]:
    lines = ["| area | figure | value | baseline | ratio | target | met | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        base = f"{_fmt(row.baseline, row.unit)} ({row.baseline_label})" if row.baseline else ""
        lines.append(f"| {row.area} | {row.figure} | {_fmt(row.value, row.unit)} | {base} | "
                     f"{ratio} | {row.target} | {met} | {row.note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    scaling: dict[str, dict[Any, Any]] = {}
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("cold start", cold_start.measure),
        ("layer byte code", layer_bytecode.measure),
        ("grant minting", grants.measure),
        ("grant signing, keyless against key", grant_signing.measure),
        ("submit throughput", lambda: submit.measure((1, 10) if args.quick else (1, 10, 100))),
        ("relay", lambda: relay.measure((1 << 20, 16 << 20) if args.quick
                                        else (1 << 20, 100 << 20, 1 << 30))),
        ("AWS calls per upload", aws_calls.measure),
        ("burst", lambda: burst.measure(burst.QUICK_UPLOADS if args.quick else burst.UPLOADS)),
    ]
    sweep = ROOT / "bench" / "sweep.py"
    if sweep.exists():
        from bench import sweep as sweep_bench

        sections.append(("SFTP sweep", lambda: sweep_bench.measure(
            (100, 1000) if args.quick else (100, 1000, 10000))))
    for title, measure in sections:
        say(f"== {title}")
        result = measure()
        if isinstance(result, tuple):
            found, scale = result
            scaling[title] = scale
        else:
            found = result
        rows += found
    picture = plot.SCALING_PICTURE
    plot.save(scaling)
    plot.render(plot.panels(scaling), picture)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# convbridge benchmarks",
        "",
        f"Produced by `{COMMAND}` on {datetime.date.today().isoformat()} at commit {commit}.",
        f"Machine: {machine()}.",
        "Every baseline is measured in the same run as its figure; ratio = figure / baseline.",
        "",
        *table(rows),
        "",
        "## Scaling",
        "",
        "![scaling](bench/scaling.png)",
        "",
        "The figures below are kept in bench/scaling.json; `python -m bench.plot` redraws the",
        "picture from them.",
        "",
    ]
    for title, data in scaling.items():
        lines += [f"### {title}", "", "| size | figures |", "| --- | --- |"]
        for x in sorted(data):
            value = data[x]
            shown = (", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
                     if isinstance(value, dict) else _fmt(value * 1000, "ms"))
            lines.append(f"| {x:,} | {shown} |")
        lines.append("")
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    Path(args.output).write_text("\n".join(lines))
    say(f"wrote {args.output}, {plot.SCALING_DATA} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
