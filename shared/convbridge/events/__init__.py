"""Trigger payloads -> ``ObjectRef``s: one parser module per cloud event format, one result type.

Every parser returns a ``ParsedEvents``: the objects that may start a job, and one human-readable
reason for each record it did not turn into an object (test messages, deletes, malformed records).
Parsers never raise on bad input, because one broken record must not sink the rest of a batch;
the caller decides what to log, acknowledge or retry. This package imports only the standard
library and ``convbridge.model``, and does not import its parser modules, so a trigger loads only
the parser it uses (``convbridge.events.s3``, ``convbridge.events.event_grid`` for Azure,
``convbridge.events.pubsub`` for GCS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from convbridge.model import ObjectRef

__all__ = ["ParsedEvents"]


@dataclass(frozen=True)
class ParsedEvents:
    """What one trigger payload (or one queued message) amounted to.

    ``objects`` may start jobs, in the order they appeared. ``ignored`` holds one reason per
    record that did not become an object; each reason says where the record was and why it was
    skipped, so that a log line alone explains why an upload started nothing.
    """

    objects: tuple[ObjectRef, ...] = ()
    ignored: tuple[str, ...] = ()

    @classmethod
    def of(cls, ref: ObjectRef) -> ParsedEvents:
        return cls(objects=(ref,))

    @classmethod
    def skip(cls, reason: str) -> ParsedEvents:
        return cls(ignored=(reason,))

    @classmethod
    def combine(cls, parts: Iterable[ParsedEvents]) -> ParsedEvents:
        """Concatenate results in order (records of a batch, records inside an envelope)."""
        objects: list[ObjectRef] = []
        ignored: list[str] = []
        for part in parts:
            objects.extend(part.objects)
            ignored.extend(part.ignored)
        return cls(objects=tuple(objects), ignored=tuple(ignored))

    def __add__(self, other: ParsedEvents) -> ParsedEvents:
        return ParsedEvents.combine((self, other))
