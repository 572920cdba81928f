"""The grant-signing bench's statistics: the median and a nearest-rank p95."""

from __future__ import annotations

from bench.grant_signing import timing


def test_p95_is_the_smallest_sample_that_95_percent_do_not_exceed() -> None:
    found = timing([float(ms) for ms in range(100, 0, -1)])  # 1..100, unordered
    assert found.p95 == 95.0
    assert found.median == 50.5
    assert (found.slowest, found.samples) == (100.0, 100)


def test_with_few_samples_the_p95_is_the_slowest() -> None:
    found = timing([3.0, 1.0, 2.0])
    assert found.p95 == found.slowest == 3.0
    assert found.median == 2.0
