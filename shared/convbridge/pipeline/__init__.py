"""The only orchestration code: ``submit(ref)`` starts a job for a stored object, and
``accept`` / ``settle`` (together ``complete``) turn a provider callback into records.

Everything else (events, rules, grants, provider dialects, records, claims) is a part; this
package decides the order and what happens when a part says no. A rejected object always
leaves a failure report or a logged reason, one bad object never stops the others in a
batch, and a duplicate event or callback never starts or writes anything twice.
"""

from __future__ import annotations

from convbridge.pipeline.relay import (
    RELAY_ATTEMPTS,
    RELAY_CHUNK,
    RelayPolicy,
    bounded_chunks,
    relay_output,
    relay_policy,
)
from convbridge.pipeline.retry import RetryItem, RetryRun, retry_failures
from convbridge.pipeline.settle import Accepted, Completion, accept, complete, output_keys, settle
from convbridge.pipeline.submit import CALLBACK_PATH, Submission, submit, submit_all, summarize

__all__ = [
    "CALLBACK_PATH",
    "RELAY_ATTEMPTS",
    "RELAY_CHUNK",
    "Accepted",
    "Completion",
    "RelayPolicy",
    "RetryItem",
    "RetryRun",
    "Submission",
    "accept",
    "bounded_chunks",
    "complete",
    "output_keys",
    "relay_output",
    "relay_policy",
    "retry_failures",
    "settle",
    "submit",
    "submit_all",
    "summarize",
]
