"""bench/scaling.png's layout: one panel per measure, each in one unit with labeled axes, drawn
from the figures ``make bench`` recorded (checked without matplotlib, the bench extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import plot

#: how the bench names a figure's unit -> the unit its panel's axis must show
UNIT_SUFFIXES = (("_mib_s", "(MiB/s)"), ("_rss_mb", "(MB)"), ("_mb", "(MB)"), ("_s", "(s)"))


def recorded_values(scaling: plot.Scaling) -> int:
    return sum(len(value) if isinstance(value, dict) else 1
               for data in scaling.values() for value in data.values())


def test_the_recorded_figures_give_one_labeled_panel_per_measure() -> None:
    laid_out = plot.panels(plot.load())
    assert [panel.title for panel in laid_out] == [
        "Submit: one SQS batch (sandbox +100 ms per call)", "Relay: throughput",
        "Relay: peak memory", "SFTP sweep: duration", "SFTP sweep: memory"]
    for panel in laid_out:
        assert panel.x_label and panel.y_label.endswith(")"), panel
        assert panel.series and all(label and points for label, points in panel.series.items())


def test_every_recorded_figure_is_drawn_once() -> None:
    scaling = plot.load()
    drawn = sum(len(points) for panel in plot.panels(scaling) for points in panel.series.values())
    assert drawn == recorded_values(scaling) > 0


def test_a_panel_holds_figures_of_its_axis_unit_only() -> None:
    for measure in plot.MEASURES:
        for figure in measure.series:
            if figure is None:  # the submit batch: seconds, drawn in ms
                assert measure.y_factor == 1000 and measure.y_label.endswith("(ms)")
                continue
            unit = next(unit for suffix, unit in UNIT_SUFFIXES if figure.endswith(suffix))
            assert measure.y_label.endswith(unit), (figure, measure.y_label)


def test_a_quick_run_without_the_sweep_leaves_its_panels_out(tmp_path: Path) -> None:
    scaling: dict[str, dict[int, Any]] = {
        "submit throughput": {1: 0.12, 10: 0.3},
        "relay": {1 << 20: {"relay_mib_s": 15.0, "baseline_mib_s": 14.0,
                            "relay_rss_mb": 60.0, "baseline_rss_mb": 58.0}}}
    plot.save(scaling, tmp_path / "scaling.json")
    laid_out = plot.panels(plot.load(tmp_path / "scaling.json"))
    assert [panel.title for panel in laid_out] == [
        "Submit: one SQS batch (sandbox +100 ms per call)", "Relay: throughput",
        "Relay: peak memory"]
    submit, throughput, _ = laid_out
    assert submit.series == {"s3_trigger": [(1, 120.0), (10, 300.0)]}
    assert throughput.series == {"S3 relay": [(1.0, 15.0)], "S3 SDK upload": [(1.0, 14.0)]}
