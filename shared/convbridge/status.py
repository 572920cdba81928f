"""``convbridge status``: what the result records and failure reports say, per rule.

Each rule's results and failures prefixes are listed lazily, page by page as the storage
lists them, and read one record at a time; a listing stops after ``max_records`` records and
the report says so, so a prefix of millions never turns into a run of hours. Result records
hold each source's latest state and give the counts, latencies and outputs; failure reports
(the ones ``convbridge retry`` resubmits) give the failures list.

Everything a record holds is user data (keys, provider messages): the terminal table shows
control characters escaped, and the HTML page escapes every field and carries no script.
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TextIO, get_args
from urllib.parse import quote

from convbridge.bridge import Bridge
from convbridge.errors import StorageError
from convbridge.records import RecordStatus, ResultRecord
from convbridge.rules import Rule
from convbridge.settings import Settings
from convbridge.storage.base import Storage

#: records read per listing (a rule's results, a rule's failures) and run
DEFAULT_MAX_RECORDS = 10_000
#: the progress line is redrawn after this many records
PROGRESS_EVERY = 500
#: finished conversions listed with their outputs, latest first
OUTPUTS_SHOWN = 50
#: the record statuses ``--failed`` keeps
FAILED_STATUSES: frozenset[RecordStatus] = frozenset({"failed", "rejected"})
STATUS_COLUMNS: tuple[RecordStatus, ...] = get_args(RecordStatus)
Listing = Literal["results", "failures"]
#: URI schemes of the storages, as ``convbridge explain`` reads them
SCHEMES = {"s3": "s3", "azure_blob": "azure", "gcs": "gs", "sftp": "sftp"}
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Filters:
    """Which records count: one rule's, recorded at or after ``since``, failed ones only."""

    rule: str | None = None
    since: datetime | None = None
    failed_only: bool = False

    def keeps(self, record: ResultRecord) -> bool:
        if self.failed_only and record.status not in FAILED_STATUSES:
            return False
        if self.since is None:
            return True
        moment = _time(record.recorded_at or record.finished_at or record.submitted_at)
        return moment is not None and moment >= self.since


def parse_since(text: str, now: datetime) -> datetime:
    """``24h``, ``30m``, ``7d``, ``2w``, ``90s`` before ``now``, or an ISO 8601 time (UTC
    when it names no zone)."""
    found = _DURATION.match(text.strip())
    if found:
        return now - timedelta(seconds=int(found[1]) * _UNITS[found[2]])
    moment = _time(text.strip())
    if moment is None:
        raise ValueError(f"{text!r} is neither a duration (24h, 30m, 7d) nor an ISO time")
    return moment


@dataclass(frozen=True)
class Link:
    """Where a stored object is: its URI, and a console page for it where one is known."""

    uri: str
    url: str | None = None


def link(settings: Settings, storage: str, location: str, key: str) -> Link:
    """S3 and GCS objects get their console page, unless the deployment talks to another
    endpoint (a local server's objects have no console); the rest their URI only."""
    uri = f"{SCHEMES.get(storage, storage)}://{location}/{key}"
    if storage == "s3" and not settings.s3_endpoint_url:
        return Link(uri, f"https://s3.console.aws.amazon.com/s3/object/{quote(location)}"
                         f"?region={quote(settings.region)}&prefix={quote(key, safe='')}")
    if storage == "gcs" and not settings.value("GCS_ENDPOINT"):
        return Link(uri, "https://console.cloud.google.com/storage/browser/_details/"
                         f"{quote(location)}/{quote(key)}")
    return Link(uri)


@dataclass(frozen=True)
class Latency:
    """Seconds from submission to the job's end, over the settled jobs of a rule."""

    jobs: int
    median: float
    p95: float
    longest: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        ordered = sorted(seconds)
        # nearest rank: the smallest value at least 95 % of the jobs took no longer than
        p95 = ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]
        return cls(len(ordered), statistics.median(ordered), p95, ordered[-1])


@dataclass(frozen=True)
class Failure:
    rule: str
    provider: str
    at: str | None
    source: Link
    code: str | None
    message: str | None


@dataclass(frozen=True)
class Converted:
    rule: str
    finished_at: str | None
    source: Link
    outputs: tuple[Link, ...]


@dataclass(frozen=True)
class StoppedEarly:
    rule: str
    listing: Listing
    read: int


@dataclass
class Status:
    records_read: int = 0
    counts: dict[tuple[str, str], dict[RecordStatus, int]] = field(default_factory=dict)
    durations: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    converted: list[Converted] = field(default_factory=list)
    stopped_early: list[StoppedEarly] = field(default_factory=list)

    def latencies(self) -> dict[tuple[str, str], Latency]:
        return {pair: Latency.of(seconds) for pair, seconds in self.durations.items() if seconds}

    def latest_outputs(self) -> list[Converted]:
        return sorted(self.converted, key=lambda c: c.finished_at or "",
                      reverse=True)[:OUTPUTS_SHOWN]


#: told of every record read: the rule, the listing, how many that listing has read
Progress = Callable[[str, Listing, int], None]


def collect(bridge: Bridge, filters: Filters, *, max_records: int = DEFAULT_MAX_RECORDS,
            progress: Progress | None = None) -> Status:
    """The status of every rule (``filters.rule``'s only, when given)."""
    status = Status()
    for rule in bridge.rules.rules:
        if filters.rule and rule.name != filters.rule:
            continue
        storage = bridge.storage(rule.storage)
        for listing in get_args(Listing):
            for record in _records(storage, rule, listing, status, max_records, progress):
                if record.rule == rule.name and filters.keeps(record):
                    _add(status, bridge.settings, rule, listing, record)
    status.failures.sort(key=lambda f: f.at or "", reverse=True)
    return status


def _records(storage: Storage, rule: Rule, listing: Listing, status: Status, max_records: int,
             progress: Progress | None) -> Iterator[ResultRecord]:
    prefix = rule.results_prefix if listing == "results" else rule.failures_prefix
    # not only records live there: the reconciler's cursor, sources moved aside on failure
    keys = (k for k in storage.list_keys(rule.location, prefix) if k.endswith(".json"))
    for read, key in enumerate(keys, start=1):
        if read > max_records:
            status.stopped_early.append(StoppedEarly(rule.name, listing, max_records))
            return
        status.records_read += 1
        if progress is not None:
            progress(rule.name, listing, read)
        record = _read(storage, rule.location, key)
        if record is not None:
            yield record


def _read(storage: Storage, location: str, key: str) -> ResultRecord | None:
    """One request per record (no stat first): a record removed since the listing, as
    ``convbridge retry`` removes reports, or an object that is not a record, is passed by."""
    try:
        return ResultRecord.from_json(json.loads(storage.read_bytes(location, key)))
    except (StorageError, ValueError, RecursionError):
        return None


def _add(status: Status, settings: Settings, rule: Rule, listing: Listing,
         record: ResultRecord) -> None:
    source = link(settings, record.source.storage, record.source.location, record.source.key)
    if listing == "failures":
        error = record.error
        status.failures.append(Failure(
            rule.name, record.provider, record.recorded_at or record.finished_at, source,
            error.code if error else None, error.message if error else None))
        return
    pair = (rule.name, record.provider)
    counts = status.counts.setdefault(pair, {})
    counts[record.status] = counts.get(record.status, 0) + 1
    submitted, finished = _time(record.submitted_at), _time(record.finished_at)
    if record.final and submitted is not None and finished is not None:
        status.durations.setdefault(pair, []).append(
            max((finished - submitted).total_seconds(), 0.0))
    if record.status == "finished" and record.outputs:
        status.converted.append(Converted(rule.name, record.finished_at, source, tuple(
            link(settings, o.storage, o.location, o.key or o.filename) for o in record.outputs)))


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """``4.2s``, ``3m05s``, ``2h10m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def stopped_note(stop: StoppedEarly, max_records: int) -> str:
    return (f"rule {stop.rule}: stopped reading {stop.listing} after {stop.read} records "
            f"(--max-records {max_records}); the figures cover only those")


# -- the terminal table --------------------------------------------------------------------


def _shown(value: object) -> str:
    """A field as one terminal line: control characters escaped, never interpreted."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _table(headers: tuple[str, ...], rows: list[tuple[object, ...]]) -> list[str]:
    cells = [tuple(headers)] + [tuple(_shown(v) for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in cells]


def count_rows(status: Status) -> list[tuple[object, ...]]:
    return [(rule, provider, *(counts.get(s, 0) for s in STATUS_COLUMNS), sum(counts.values()))
            for (rule, provider), counts in sorted(status.counts.items())]


def latency_rows(status: Status) -> list[tuple[object, ...]]:
    return [(rule, provider, lat.jobs, duration(lat.median), duration(lat.p95),
             duration(lat.longest))
            for (rule, provider), lat in sorted(status.latencies().items())]


COUNT_HEADERS = ("rule", "provider", *STATUS_COLUMNS, "total")
LATENCY_HEADERS = ("rule", "provider", "jobs", "median", "p95", "max")
FAILURE_HEADERS = ("time", "rule", "provider", "source", "code", "message")


def render_text(status: Status, max_records: int) -> str:
    lines = [f"{status.records_read} records read", "", "records per rule and provider"]
    lines += _table(COUNT_HEADERS, count_rows(status)) if status.counts else ["  none"]
    lines += ["", "job latency (submitted to finished or failed)"]
    rows = latency_rows(status)
    lines += _table(LATENCY_HEADERS, rows) if rows else ["  no settled job"]
    lines += ["", f"failures ({len(status.failures)})"]
    lines += _table(FAILURE_HEADERS, [(f.at, f.rule, f.provider, f.source.uri, f.code,
                                       f.message) for f in status.failures]) \
        if status.failures else ["  none"]
    latest = status.latest_outputs()
    lines += ["", f"latest outputs ({len(latest)} of {len(status.converted)})"]
    lines += _table(("finished", "rule", "output"),
                    [(c.finished_at, c.rule, ", ".join(o.uri for o in c.outputs))
                     for c in latest]) if latest else ["  none"]
    if status.stopped_early:
        lines += [""] + [stopped_note(stop, max_records) for stop in status.stopped_early]
    return "\n".join(lines)


class ProgressLine:
    """A progress line on ``stream``, redrawn every ``every`` records: the listing being read
    and a bar of how far it is to its ``--max-records`` cap."""

    def __init__(self, stream: TextIO, max_records: int, every: int = PROGRESS_EVERY) -> None:
        self.stream, self.max_records, self.every = stream, max_records, every
        self.total = 0

    def __call__(self, rule: str, listing: Listing, read: int) -> None:
        self.total += 1
        if self.total % self.every:
            return
        filled = min(20 * read // self.max_records, 20)
        self.stream.write(f"\r{_shown(rule)} {listing}: [{'#' * filled}{'.' * (20 - filled)}] "
                          f"{read} of at most {self.max_records}; {self.total} records read")
        self.stream.flush()

    def close(self) -> None:
        if self.total >= self.every:
            self.stream.write("\n")
            self.stream.flush()


# -- the HTML page -------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #a60; }
code { word-break: break-all; }
"""


def _cell(value: object, number: bool = False) -> str:
    text = html.escape("-" if value is None else str(value))
    return f'<td class="n">{text}</td>' if number else f"<td>{text}</td>"


def _link_cell(links: Iterable[Link]) -> str:
    parts = [f'<a href="{html.escape(item.url)}"><code>{html.escape(item.uri)}</code></a>'
             if item.url else f"<code>{html.escape(item.uri)}</code>" for item in links]
    return f"<td>{'<br>'.join(parts)}</td>"


def _html_table(section: str, headers: tuple[str, ...], rows: list[str]) -> str:
    if not rows:
        return f'<p id="{section}-none">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f'<table id="{section}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(status: Status, filters: Filters, max_records: int, generated: datetime) -> str:
    """The status as one self-contained page: inline style, no script, every field
    escaped."""
    counts = [_cell(row[0]) + _cell(row[1]) + "".join(_cell(v, True) for v in row[2:])
              for row in count_rows(status)]
    latencies = [_cell(row[0]) + _cell(row[1]) + "".join(_cell(v, True) for v in row[2:])
                 for row in latency_rows(status)]
    failures = [_cell(f.at) + _cell(f.rule) + _cell(f.provider) + _link_cell([f.source])
                + _cell(f.code) + _cell(f.message) for f in status.failures]
    latest = status.latest_outputs()
    outputs = [_cell(c.finished_at) + _cell(c.rule) + _link_cell([c.source])
               + _link_cell(c.outputs) for c in latest]
    shown = [f"rule {filters.rule}" if filters.rule else "every rule"]
    if filters.since:
        shown.append(f"recorded since {filters.since.isoformat()}")
    if filters.failed_only:
        shown.append("failed and rejected only")
    notes = "".join(f'<p class="note">{html.escape(stopped_note(stop, max_records))}</p>'
                    for stop in status.stopped_early)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # nothing on the page may load or run anything, whatever a record holds
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        "<title>convbridge status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>convbridge status</h1>",
        f'<p id="summary">{status.records_read} records read, '
        f"{html.escape(', '.join(shown))}; generated {generated.isoformat(timespec='seconds')}"
        "</p>",
        notes,
        "<h2>Records per rule and provider</h2>",
        _html_table("counts", COUNT_HEADERS, counts),
        "<h2>Job latency (submitted to finished or failed)</h2>",
        _html_table("latency", LATENCY_HEADERS, latencies),
        f"<h2>Failures ({len(status.failures)})</h2>",
        _html_table("failures", FAILURE_HEADERS, failures),
        f"<h2>Latest outputs ({len(latest)} of {len(status.converted)})</h2>",
        _html_table("outputs", ("finished", "rule", "source", "outputs"), outputs),
        "</body></html>",
        "",
    ])
