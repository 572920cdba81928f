"""SFTP sweep at scale, through ``bench/bench_sftp_sweep.py``: the first sweep's claim+submit
time and an empty re-sweep over drops of growing size, the re-sweep against the baseline of a
bare paramiko listing of the same drop in the same run."""

from __future__ import annotations

import time

from bench.bench_sftp_sweep import measure as sweep_figures
from bench.common import Row, say


def _listing_seconds(count: int) -> float:
    """A bare recursive listing of a drop of ``count`` files: the floor for any re-sweep."""
    from devstack.harness.sftp import SftpHarness
    from devstack.stack import DevStack

    harness = SftpHarness(settle_seconds=1.0)
    with DevStack(storage=harness, moto_own_process=True):
        for n in range(count):
            harness.upload(f"inbox/f{n:05d}.png", b"x")
        started = time.perf_counter()
        listed = harness.objects("inbox/")
        elapsed = time.perf_counter() - started
        assert len(listed) == count
        return elapsed


def measure(sizes: tuple[int, ...] = (100, 1000, 10000)
            ) -> tuple[list[Row], dict[int, dict[str, float]]]:
    rows: list[Row] = []
    scaling: dict[int, dict[str, float]] = {}
    for count in sizes:
        figures = sweep_figures(count)
        scaling[count] = {"first_sweep_s": figures["first_sweep_seconds"],
                          "resweep_s": figures["resweep_seconds"],
                          "rss_growth_mb": figures["rss_growth_mb"]}
    largest = max(sizes)
    figures = scaling[largest]
    listing = _listing_seconds(largest)
    say(f"  bare listing of {largest} files: {listing * 1000:.0f} ms")
    rows.append(Row("sftp sweep", f"first sweep of {largest:,} files (claim + submit)",
                    figures["first_sweep_s"], "s", None, "", "report", None,
                    f"{largest / figures['first_sweep_s']:.0f} files/s; 1 s of it settling; "
                    f"RSS growth {figures['rss_growth_mb']:.0f} MB"))
    rows.append(Row("sftp sweep", f"empty re-sweep of {largest:,} claimed files",
                    figures["resweep_s"] * 1000, "ms", listing * 1000,
                    "paramiko listing of the drop", "report", None))
    return rows, scaling
