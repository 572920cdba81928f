"""SFTP drops at scale, through ``bench/bench_sftp_sweep.py``: drops of growing size drained
by sweep runs with a 60 s deadline, files per second of the first run, the number of runs,
every file claimed and enqueued exactly once, an empty re-sweep against the baseline of a bare
listing of the same drop in the same run, and what the real consumer submitted from the claims
queue in a short drain (the rest only enqueued). The 100,000-file figures in BENCHMARKS.md
come from ``python -m bench.bench_sftp_sweep`` itself (see its "Big SFTP drops" section)."""

from __future__ import annotations

from bench.bench_sftp_sweep import measure as drop_figures
from bench.common import Row

RUN_SECONDS = 60.0
DRAIN_SECONDS = 20.0


def measure(sizes: tuple[int, ...] = (100, 1000, 10000)
            ) -> tuple[list[Row], dict[int, dict[str, float]]]:
    scaling: dict[int, dict[str, float]] = {}
    figures: dict[str, float] = {}
    for count in sizes:
        figures = drop_figures(count, run_seconds=RUN_SECONDS, drain_seconds=DRAIN_SECONDS)
        scaling[count] = {"first_sweep_s": figures["first_run_seconds"],
                          "resweep_s": figures["resweep_seconds"],
                          "rss_growth_mb": figures["rss_growth_mb"]}
    largest = int(figures["files"])
    return rows(figures), {size: scaling[size] for size in sizes if size <= largest}


def rows(figures: dict[str, float]) -> list[Row]:
    """The drop's rows, from one ``bench_sftp_sweep.measure`` run."""
    files, runs = int(figures["files"]), int(figures["runs"])
    deadline = figures["run_seconds"]
    return [
        Row("sftp drop", f"first sweep run of a {files:,}-file drop (list, settle, claim, "
            "enqueue)", figures["files_per_second"], "files/s", None, "", "report", None,
            f"{int(figures['first_run_enqueued']):,} files in "
            f"{figures['first_run_seconds']:.1f} s, a 1 s settle wait per window; RSS growth "
            f"{figures['rss_growth_mb']:.0f} MB"),
        Row("sftp drop", f"sweep runs to claim all {files:,} files ({deadline:.0f} s deadline "
            "each)", runs, "runs", None, "", "every file claimed and enqueued once, each run "
            "inside its deadline",
            bool(figures["exactly_once"]) and figures["longest_run_seconds"] < deadline,
            f"longest run {figures['longest_run_seconds']:.1f} s; "
            f"{int(figures['enqueued']):,} enqueued"),
        Row("sftp drop", f"empty re-sweep of {files:,} claimed files",
            figures["resweep_seconds"] * 1000, "ms", figures["listing_seconds"] * 1000,
            "paramiko listing of the same drop", "<= 2x baseline",
            figures["resweep_seconds"] <= 2 * figures["listing_seconds"]),
        Row("sftp drop", f"claims submitted by the consumer in {figures['drain_seconds']:.0f} s",
            figures["submitted"] / figures["drain_seconds"], "files/s", None, "", "report",
            None, f"{int(figures['submitted']):,} submitted (a record each: "
            f"{int(figures['records']):,}), {int(figures['only_enqueued']):,} only enqueued; "
            "the sandbox holds its callbacks back"),
    ]
