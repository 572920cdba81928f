"""The burst bench's theoretical limit: the slower of the two caps binds."""

from __future__ import annotations

from dataclasses import replace

from bench.burst import Burst, theoretical_seconds

BURST = Burst(uploads=200, finished=200, failure_reports=0, dlq_messages=0, jobs=200,
              distinct_job_ids=200, drain_seconds=60.0, mean_job_seconds=0.16,
              accepted_requests_per_upload=1.0, refused_creates=10, drained=True)


def test_the_rate_cap_binds_when_jobs_are_short() -> None:
    limit, bound = theoretical_seconds(BURST)
    assert limit == 20.0  # 200 uploads x 1 request at 10 per second
    assert bound.startswith("rate")


def test_the_job_cap_binds_when_jobs_are_long() -> None:
    limit, bound = theoretical_seconds(replace(BURST, mean_job_seconds=2.0))
    assert limit == 80.0  # 200 uploads / 5 at once x 2 s
    assert bound.startswith("jobs")


def test_jobs_beyond_one_per_upload_are_duplicates() -> None:
    assert replace(BURST, jobs=203).duplicate_jobs == 3
    assert BURST.duplicate_jobs == 0
