"""``convbridge retry``: submit again the sources that failure reports name.
"""

from __future__ import annotations

import logging

from convbridge.bridge import Bridge
from convbridge.model import (
    ObjectRef,
)
from convbridge.pipeline.record_io import read_record
from convbridge.pipeline.submit import Submission, submit

logger = logging.getLogger(__name__)


def retry_failures(bridge: Bridge, rule_name: str | None = None) -> list[Submission]:
    """Resubmit every source named by a failure report (``convbridge retry``). A source the
    failure policy moved aside is put back first. A report is removed once its source is
    submitted again, so running this twice does not start two jobs."""
    submissions = []
    for rule in bridge.rules.rules:
        if rule_name and rule.name != rule_name:
            continue
        storage = bridge.storage(rule.storage)
        for report_key in list(storage.list_keys(rule.location, rule.failures_prefix)):
            report = read_record(storage, rule.location, report_key) if report_key.endswith(
                ".json") else None
            if report is None:
                continue  # a source moved aside, not a report
            key = report.source.key
            moved = rule.failed_source_key(key)
            if storage.stat(rule.location, moved) is not None:
                storage.copy(rule.location, moved, key)
                storage.delete(rule.location, moved)
            if storage.stat(rule.location, key) is None:
                logger.warning("cannot retry %s: the source is gone", key)
                submissions.append(Submission(ObjectRef(rule.storage, rule.location, key),
                                              "skipped", "the source is gone", rule.name))
                continue
            submission = submit(bridge, ObjectRef(rule.storage, rule.location, key),
                                attempt=str(report.recorded_at))
            if submission.status == "submitted":
                storage.delete(rule.location, report_key)
            submissions.append(submission)
    return submissions
