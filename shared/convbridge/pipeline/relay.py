"""The relay: outputs streamed from the provider's download URL into the destination storage,
for routes where the provider cannot write there itself. Memory use does not grow with file
size, and nothing is written that is incomplete, oversized or from an unexpected host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx

from convbridge.bridge import Bridge
from convbridge.errors import (
    OutputRefused,
    OutputTooLarge,
    StorageError,
)
from convbridge.http import HostPattern, open_download
from convbridge.model import (
    OUTPUT_MARKER,
    SOURCE_TAG,
    OutputFile,
)
from convbridge.rules import Rule
from convbridge.storage.base import Storage
from convbridge.telemetry import record as record_metric

logger = logging.getLogger(__name__)


#: downloads of one output tried before the relay gives up and reports the failure
RELAY_ATTEMPTS = 3
RELAY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RelayPolicy:
    """Where the relay may download one rule's outputs from, and how much it may write."""

    hosts: tuple[HostPattern, ...]
    max_bytes: int


def relay_policy(bridge: Bridge, rule: Rule) -> RelayPolicy:
    """The provider dialect's download hosts, its configured base URL's host (https only, like
    every declared host) and the hosts the dev stack adds, with the rule's byte limit."""
    provider = bridge.provider(rule.provider)
    declared = [HostPattern.parse(pattern) for pattern in provider.download_hosts]
    base_host = httpx.URL(provider.base_url).host
    return RelayPolicy(
        hosts=(*declared, HostPattern(base_host), *bridge.settings.relay_extra_hosts),
        max_bytes=rule.max_output_bytes,
    )


def relay_output(http: httpx.Client, storage: Storage, location: str, key: str,
                 output: OutputFile, *, marker: str, policy: RelayPolicy, source: str) -> int:
    """Stream one output from the provider's URL into storage. The object appears under
    ``key`` only complete and with the byte count the provider announced; a dropped download
    is started again, up to RELAY_ATTEMPTS times. A URL (or redirect) off the policy's hosts
    is never requested, and a download running past the announced size or the rule's limit
    is cut off at once. The write is create-only but for an earlier output of the same
    ``source`` (a source_tag). None of these refusals is tried again (OutputRefused)."""
    if not output.url:
        raise StorageError(f"the provider gave no URL for {output.filename}")
    _refuse_over_limit(output.filename, output.size, policy.max_bytes)
    problem = ""
    for attempt in range(1, RELAY_ATTEMPTS + 1):
        try:
            with open_download(http, output.url, policy.hosts) as response:
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}"
                    if response.status_code < 500:
                        break
                    continue
                length = response.headers.get("Content-Length")
                content_length = int(length) if length and length.isdigit() else None
                expected = output.size if output.size is not None else content_length
                chunks = bounded_chunks(response.iter_bytes(RELAY_CHUNK),
                                        filename=output.filename, announced=expected,
                                        limit=policy.max_bytes)
                if output.size is not None and (content_length or 0) > output.size:
                    raise OutputTooLarge(
                        f"{output.filename}: the download's Content-Length of {content_length} "
                        f"bytes is over the {output.size} bytes the provider announced; "
                        "nothing was written")
                written = storage.write_stream(
                    location, key, chunks, metadata={OUTPUT_MARKER: marker, SOURCE_TAG: source},
                    expected_size=expected,
                )
                record_metric("RelayBytes", written, unit="Bytes", rule=marker)
                return written
        except OutputRefused as exc:  # another attempt would be refused again
            logger.warning("relay of %s refused: %s", output.filename, exc)
            raise
        except (httpx.HTTPError, StorageError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if isinstance(exc, StorageError) else (
                type(exc).__name__)
            logger.warning("relay of %s, attempt %d of %d: %s", output.filename, attempt,
                           RELAY_ATTEMPTS, problem)
    raise StorageError(f"relay of {output.filename} failed: {problem}")


def bounded_chunks(chunks: Iterable[bytes], *, filename: str, announced: int | None,
                   limit: int) -> Iterator[bytes]:
    """``chunks`` passed on until their running count would pass the announced size or
    ``limit``, whichever is smaller; then OutputTooLarge, before the chunk that crossed is
    passed on, so the storage aborts its partial write and the download stops right there
    (the storages compare the count only at the end). An announced size over ``limit`` is
    refused here, before anything is read."""
    _refuse_over_limit(filename, announced, limit)
    bound, described = _bound(announced, limit)
    return _bounded(iter(chunks), filename, bound, described)


def _refuse_over_limit(filename: str, announced: int | None, limit: int) -> None:
    if announced is not None and announced > limit:
        raise OutputTooLarge(f"{filename} is announced at {announced} bytes, over "
                             f"{_bound(None, limit)[1]}; nothing was written")


def _bound(announced: int | None, limit: int) -> tuple[int, str]:
    """The byte bound of one output and how a failure report names it."""
    if announced is not None and announced <= limit:
        return announced, f"the {announced} bytes the provider announced"
    return limit, f"the rule's max_output_bytes of {limit} bytes"


def _bounded(chunks: Iterator[bytes], filename: str, bound: int,
             described: str) -> Iterator[bytes]:
    count = 0
    for chunk in chunks:
        count += len(chunk)
        if count > bound:
            raise OutputTooLarge(f"{filename} ran past {described}; stopped after {count} "
                                 "bytes, nothing was written")
        yield chunk
