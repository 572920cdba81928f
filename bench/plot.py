"""``python -m bench.plot``: bench/scaling.png from the scaling figures the last ``make bench``
recorded in bench/scaling.json, one panel per measure, each with its own axes and units.

The panels are laid out here without matplotlib (``panels``); only ``render`` draws them, so the
layout is checked where matplotlib (the bench extra) is not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT

SCALING_DATA = ROOT / "bench" / "scaling.json"
SCALING_PICTURE = ROOT / "bench" / "scaling.png"

#: a bench section's figures: size -> seconds, or size -> {figure name: value}
Scaling = dict[str, dict[int, Any]]

MIB = 1 << 20
#: the relay's figure-name prefix per storage (S3 keeps the unprefixed names) -> legend name
RELAY_STORAGES = {"": "S3", "azure_": "Azure Blob", "gcs_": "GCS"}


@dataclass(frozen=True)
class Measure:
    """One quantity of one bench section, in one unit: one panel."""

    section: str
    title: str
    x_label: str
    y_label: str
    #: figure name in the section's data -> legend label; None names a section's only figure
    series: dict[str | None, str]
    x_divisor: float = 1.0
    y_factor: float = 1.0
    log_y: bool = False


def _relay(figure: str) -> dict[str | None, str]:
    return {f"{prefix}{kind}_{figure}": f"{name} {label}"
            for prefix, name in RELAY_STORAGES.items()
            for kind, label in (("relay", "relay"), ("baseline", "SDK upload"))}


MEASURES = (
    Measure("submit throughput", "Submit: one SQS batch (sandbox +100 ms per call)",
            "records per batch", "time to handle the batch (ms)",
            {None: "s3_trigger"}, y_factor=1000),
    Measure("relay", "Relay: throughput", "object size (MiB)", "throughput (MiB/s)",
            _relay("mib_s"), x_divisor=MIB),
    Measure("relay", "Relay: peak memory", "object size (MiB)", "peak RSS (MB)",
            _relay("rss_mb"), x_divisor=MIB, log_y=True),
    Measure("SFTP sweep", "SFTP sweep: duration", "files in the drop", "duration (s)",
            {"first_sweep_s": "first sweep run (claim + enqueue)",
             "resweep_s": "empty re-sweep"}, log_y=True),
    Measure("SFTP sweep", "SFTP sweep: memory", "files in the drop", "RSS growth (MB)",
            {"rss_growth_mb": "sweeping process"}),
)


@dataclass(frozen=True)
class Panel:
    title: str
    x_label: str
    y_label: str
    #: legend label -> (x, y) points in the panel's units
    series: dict[str, list[tuple[float, float]]]
    log_y: bool


def panels(scaling: Scaling) -> list[Panel]:
    """A panel per measure whose section was run (a quick run may leave some out)."""
    laid_out = []
    for measure in MEASURES:
        data = scaling.get(measure.section)
        if not data:
            continue
        series = {}
        for figure, label in measure.series.items():
            points = [(size / measure.x_divisor,
                       (value if figure is None else value[figure]) * measure.y_factor)
                      for size, value in sorted(data.items())
                      if figure is None or figure in value]
            if points:
                series[label] = points
        if series:
            laid_out.append(Panel(measure.title, measure.x_label, measure.y_label, series,
                                  measure.log_y))
    return laid_out


def render(laid_out: list[Panel], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(laid_out))
    rows = -(-len(laid_out) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows),
                                squeeze=False)
    cells = [axis for row in grid for axis in row]
    for axis, panel in zip(cells, laid_out, strict=False):
        for label, points in panel.series.items():
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        axis.set_xscale("log")
        if panel.log_y:
            axis.set_yscale("log")
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel(panel.x_label)
        axis.set_ylabel(panel.y_label)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    for unused in cells[len(laid_out):]:
        unused.remove()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save(scaling: Scaling, path: Path = SCALING_DATA) -> None:
    path.write_text(json.dumps({section: {str(size): value for size, value in data.items()}
                                for section, data in scaling.items()}, indent=1) + "\n")


def load(path: Path = SCALING_DATA) -> Scaling:
    recorded: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return {section: {int(size): value for size, value in data.items()}
            for section, data in recorded.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument("--data", type=Path, default=SCALING_DATA)
    parser.add_argument("--output", type=Path, default=SCALING_PICTURE)
    args = parser.parse_args(argv)
    render(panels(load(args.data)), args.output)
    print(f"wrote {args.output} from {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
