"""The rules file: which objects to convert, into what, by which provider, and where results go.

Loaded once per cold start from a path, an SSM parameter (``ssm:/name``) or an S3 object
(``s3://bucket/key``) and validated completely: a bad file raises :class:`RulesError` listing
every problem, so a deploy fails on the first try with the whole list.

Example::

    version: 1
    rules:
      - name: photos-to-pdf
        match: {storage: s3, location: my-bucket, prefix: inbox/, suffixes: [.png, .jpg]}
        convert: {to: pdf, options: {}}
        provider: cloudconvert
        outputs: outbox/
        results: results/
        failures: failures/
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from convbridge.errors import ConfigError, RulesError
from convbridge.grants import READ_GRANT_KINDS
from convbridge.model import (
    CLAIM_PREFIX,
    DONE_PREFIX,
    FAILED_PREFIX,
    OUTPUT_MARKER,
    GrantKind,
    ObjectRef,
)
from convbridge.registries import PROVIDERS, STORAGES

#: Formats a rule may ask for. Providers convert far more pairs than any one list; this list
#: exists to catch typos (``pfd``) at load time rather than as a failed job per upload.
KNOWN_FORMATS = frozenset(
    """png jpg jpeg webp gif tiff tif bmp ico avif heic svg eps psd pdf docx doc odt rtf txt
    html md epub xlsx xls ods csv pptx ppt odp mp3 wav ogg flac m4a mp4 mov webm mkv avi
    """.split()  # noqa: SIM905 (a word list reads better than 40 quoted strings)
)
__all__ = ["READ_GRANT_KINDS", "Rule", "RuleSet", "load_rules", "parse_rules"]
FAILURE_POLICIES = frozenset({"report", "copy", "move"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_SIZE = 1024 * 1024 * 1024
#: The most the relay writes for one output unless a rule says otherwise: a provider's answer
#: (or a download without a length) must not fill the user's bucket.
DEFAULT_MAX_OUTPUT = 5 * 1024 * 1024 * 1024
#: A swept storage (``Storage.swept``) is polled by a sweep, which keeps its own folders
#: (model.CLAIM_PREFIX and the others); see convbridge.triggers.sftp_sweep.


@dataclass(frozen=True)
class Rule:
    name: str
    storage: str
    location: str
    prefix: str
    suffixes: tuple[str, ...]
    output_format: str
    provider: str
    outputs_prefix: str
    results_prefix: str
    failures_prefix: str
    options: Mapping[str, Any] = field(default_factory=dict)
    read_grant: GrantKind = "presigned_url"
    max_size_bytes: int = DEFAULT_MAX_SIZE
    #: the relay stops (and reports OUTPUT_TOO_LARGE) once one output passes this many bytes
    max_output_bytes: int = DEFAULT_MAX_OUTPUT
    on_failure: str = "report"
    #: hand the storage's own (dedicated) account to the provider where nothing narrower exists
    hand_over_account: bool = False
    #: swept storages: also sweep the folders below ``prefix``
    recursive: bool = False
    #: swept storages: a file is ready once ``<name>.ready`` exists, not once it stops changing
    ready_marker: bool = False
    #: the storage is swept (``Storage.swept``): its files are claimed under CLAIM_PREFIX
    swept: bool = False

    def covers(self, ref: ObjectRef) -> bool:
        """Storage, location and prefix match; suffix decides later whether it converts."""
        return (
            ref.storage == self.storage
            and ref.location == self.location
            and self.dropped_key(ref.key).startswith(self.prefix)
        )

    def wants(self, ref: ObjectRef) -> bool:
        return self.covers(ref) and (
            not self.suffixes or ref.key.lower().endswith(self.suffixes)
        )

    def owns(self, key: str) -> bool:
        """True for keys the bridge itself writes under this rule (the loop guard)."""
        return key.startswith((self.outputs_prefix, self.results_prefix, self.failures_prefix))

    def dropped_key(self, key: str) -> str:
        """The key as it was dropped: a sweep claims a file by moving it under CLAIM_PREFIX,
        and the rule still covers it there and names its outputs as if it had not moved."""
        if self.swept and key.startswith(CLAIM_PREFIX):
            return key[len(CLAIM_PREFIX):]
        return key

    def relative(self, key: str) -> str:
        return self.dropped_key(key)[len(self.prefix):]

    def output_key(self, key: str) -> str:
        """``<outputs><rel>.<format>``: the source's whole name stays, extension included, so
        ``a.png`` and ``a.jpg`` never share ``a.pdf``."""
        return f"{self.outputs_prefix}{self.relative(key)}.{self.output_format}"

    def output_folder(self, key: str) -> str:
        """Where a job with several outputs puts them, under the provider's file names."""
        return f"{self.output_key(key)}/"

    def result_key(self, key: str) -> str:
        return f"{self.results_prefix}{self.relative(key)}.json"

    def failure_key(self, key: str) -> str:
        return f"{self.failures_prefix}{self.relative(key)}.json"

    def failed_source_key(self, key: str) -> str:
        """Where ``on_failure: copy|move`` puts the source: beside its failure report."""
        return f"{self.failures_prefix}{self.relative(key)}"

    def naming_conflict(self, key: str) -> str | None:
        """Why ``key`` cannot be converted under this rule without its outputs reaching
        another source's, or None. The refusal is of a folder named like an output: a
        directory segment of ``rel`` ending in ``.<format>`` (ignoring case, as suffixes
        are matched).

        Why that suffices. Write ``O(s) = <outputs> + rel(s) + "." + <format>`` for a source
        ``s``. Its outputs are ``O(s)`` and, for several, ``O(s) + "/" + n`` with ``n`` a single
        segment; its write grant covers exactly ``O(s)`` and every key starting ``O(s) + "/"``.
        Take two accepted sources ``a != b`` (``rel`` is then different: the prefix is shared).

        1. ``O(a) == O(b)``: strip the common prefix and ``.<format>``: ``rel(a) == rel(b)``.
           Impossible.
        2. ``O(b)`` or ``O(b) + "/" + n`` starts with ``O(a) + "/"``. If ``O(b)`` itself does,
           ``rel(b)`` starts with ``rel(a) + "." + <format> + "/"``: its segment ending there is
           a directory segment ending in ``.<format>``, which is refused. Otherwise the ``/``
           after ``O(a)`` is the one after ``O(b)`` (``n`` holds none), so ``O(a) == O(b)``: 1.
        3. ``O(a) == O(b) + "/" + n``: as in 2 with the roles swapped, ``rel(a)`` has a
           directory segment ending in ``.<format>``. Refused.

        So no key a grant for ``a`` reaches is an output of ``b``, and no two sources share an
        output or an output folder. The grant patterns are literal because S3 refuses to mint
        an STS grant for a key holding IAM wildcard characters (convbridge.storage.s3)."""
        ending = f".{self.output_format}"
        folders = self.relative(key).split("/")[:-1]
        if any(folder.lower().endswith(ending) for folder in folders):
            return (f"a folder is named like an output ('{ending}', the rule's output format): "
                    "its outputs could mix with another file's")
        return None


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str = "<memory>"

    def match(self, ref: ObjectRef) -> Rule | None:
        """The first rule that wants ``ref``. Objects the bridge wrote are never matched."""
        if self.is_own_write(ref):
            return None
        for rule in self.rules:
            if rule.wants(ref):
                return rule
        return None

    def covering(self, ref: ObjectRef) -> Rule | None:
        """The first rule whose location and prefix cover ``ref``, whatever its suffix."""
        return next((r for r in self.rules if r.covers(ref)), None)

    def is_own_write(self, ref: ObjectRef) -> bool:
        if OUTPUT_MARKER in ref.metadata:
            return True
        return any(
            rule.storage == ref.storage and rule.location == ref.location and rule.owns(ref.key)
            for rule in self.rules
        )

    def may_hold_own_writes(self, rule: Rule) -> bool:
        """Whether any rule writes outputs or records where ``rule`` watches."""
        return any(
            other.storage == rule.storage and other.location == rule.location
            and any(p.startswith(rule.prefix) or rule.prefix.startswith(p)
                    for p in (other.outputs_prefix, other.results_prefix, other.failures_prefix))
            for other in self.rules
        )

    def get(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def parse_rules(text: str, source: str = "<memory>") -> RuleSet:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(source, [f"not valid YAML: {exc}"]) from exc
    problems: list[str] = []
    if not isinstance(document, dict):
        raise RulesError(source, ["the file must be a mapping with 'version' and 'rules'"])
    if document.get("version") != 1:
        problems.append(f"version must be 1, got {document.get('version')!r}")
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.append("'rules' must be a non-empty list")
        raw_rules = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(f"rules[{index}]: duplicate rule name {name!r}")
            seen.add(name)
        rule = _parse_rule(raw, f"rules[{index}]", problems)
        if rule is not None:
            rules.append(rule)
    for rule in rules:
        for other in rules:
            if other.storage == rule.storage and other.location == rule.location:
                for written in (other.outputs_prefix, other.results_prefix, other.failures_prefix):
                    if rule.prefix.startswith(written) and rule.prefix != "":
                        problems.append(
                            f"rule {rule.name!r} watches {rule.prefix!r}, which is inside "
                            f"{written!r} where rule {other.name!r} writes"
                        )
    problems.extend(_shared_prefix_problems(rules))
    if problems:
        raise RulesError(source, problems)
    return RuleSet(tuple(rules), source)


def _written_prefixes(rule: Rule) -> tuple[tuple[str, str], ...]:
    return (("outputs", rule.outputs_prefix), ("results", rule.results_prefix),
            ("failures", rule.failures_prefix))


def _shared_prefix_problems(rules: list[Rule]) -> list[str]:
    """Rules writing into one place must derive names the same way, else two sources get one
    name. Two rules of one storage and location may share a prefix only as the same kind
    (outputs with outputs, ...), with exactly the same value, watching the same prefix and
    converting to the same format: then a name is ``<prefix><rel>...`` with one ``rel`` per
    source, and each source is matched by one rule only. Nested prefixes (``out/`` and
    ``out/x/``) would let ``x/a.png`` under one rule and ``a.png`` under the other share
    ``out/x/a.png.pdf``."""
    problems = []
    for index, rule in enumerate(rules):
        for other in rules[index + 1:]:
            if (other.storage, other.location) != (rule.storage, rule.location):
                continue
            for kind, prefix in _written_prefixes(rule):
                for other_kind, other_prefix in _written_prefixes(other):
                    if not (prefix.startswith(other_prefix) or other_prefix.startswith(prefix)):
                        continue
                    if (kind, prefix) != (other_kind, other_prefix):
                        problems.append(
                            f"rules {rule.name!r} and {other.name!r}: {kind} {prefix!r} and "
                            f"{other_kind} {other_prefix!r} overlap; rules may share a prefix "
                            "only for the same purpose and with the same value, else their "
                            "names could collide")
                    elif (rule.prefix, rule.output_format) != (other.prefix, other.output_format):
                        problems.append(
                            f"rules {rule.name!r} and {other.name!r} share {kind} {prefix!r} "
                            f"but watch {rule.prefix!r} and {other.prefix!r} and convert to "
                            f"{rule.output_format!r} and {other.output_format!r}; rules sharing "
                            "a prefix must watch the same prefix and convert to the same format, "
                            "else their names could collide")
    return problems


def _parse_rule(raw: Any, where: str, problems: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    before = len(problems)
    known = {"name", "match", "convert", "provider", "outputs", "results", "failures",
             "read_grant", "max_size_bytes", "max_output_bytes", "on_failure",
             "hand_over_account", "recursive", "ready_marker"}
    for extra in sorted(set(raw) - known):
        problems.append(f"{where}: unknown field {extra!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{where}.name: must be 1-64 of letters, digits, '_', '.', '-'")
        name = where
    else:
        where = f"rule {name!r}"
    match = raw.get("match")
    if not isinstance(match, dict):
        problems.append(f"{where}.match: must be a mapping with storage, location, prefix")
        match = {}
    storage = match.get("storage")
    if storage not in STORAGES:
        problems.append(f"{where}.match.storage: {storage!r} is not one of {STORAGES.names()}")
    location = match.get("location")
    if not isinstance(location, str) or not location:
        problems.append(f"{where}.match.location: the bucket/container/host is required")
    prefix = _prefix(match.get("prefix", ""), f"{where}.match.prefix", problems)
    suffixes_raw = match.get("suffixes", [])
    suffixes: list[str] = []
    if not isinstance(suffixes_raw, list):
        problems.append(f"{where}.match.suffixes: must be a list like ['.png', '.jpg']")
    else:
        for suffix in suffixes_raw:
            if not isinstance(suffix, str) or not suffix.startswith(".") or len(suffix) < 2:
                problems.append(f"{where}.match.suffixes: {suffix!r} must look like '.png'")
            else:
                suffixes.append(suffix.lower())
    convert = raw.get("convert")
    if not isinstance(convert, dict):
        problems.append(f"{where}.convert: must be a mapping with 'to'")
        convert = {}
    output_format = str(convert.get("to", "")).lower().lstrip(".")
    if output_format not in KNOWN_FORMATS:
        problems.append(f"{where}.convert.to: unknown output format {convert.get('to')!r}")
    options = convert.get("options", {})
    if not isinstance(options, dict):
        problems.append(f"{where}.convert.options: must be a mapping")
        options = {}
    provider = raw.get("provider")
    if provider not in PROVIDERS:
        problems.append(f"{where}.provider: {provider!r} is not one of {PROVIDERS.names()}")
    outputs = _prefix(raw.get("outputs"), f"{where}.outputs", problems, required=True)
    results = _prefix(raw.get("results"), f"{where}.results", problems, required=True)
    failures = _prefix(raw.get("failures"), f"{where}.failures", problems, required=True)
    written = [p for p in (outputs, results, failures) if p]
    if any(a.startswith(b) for i, a in enumerate(written) for j, b in enumerate(written) if i != j):
        # a record under one could take the name of an output under the other
        problems.append(f"{where}: outputs, results and failures must be different prefixes, "
                        "none inside another")
    read_grant = raw.get("read_grant", "presigned_url")
    if read_grant not in READ_GRANT_KINDS:
        problems.append(f"{where}.read_grant: {read_grant!r} is not one of "
                        f"{sorted(READ_GRANT_KINDS)}")
    max_size = raw.get("max_size_bytes", DEFAULT_MAX_SIZE)
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size <= 0:
        problems.append(f"{where}.max_size_bytes: must be a positive integer")
        max_size = DEFAULT_MAX_SIZE
    max_output = raw.get("max_output_bytes", DEFAULT_MAX_OUTPUT)
    if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output <= 0:
        problems.append(f"{where}.max_output_bytes: must be a positive integer")
        max_output = DEFAULT_MAX_OUTPUT
    on_failure = raw.get("on_failure", "report")
    if on_failure not in FAILURE_POLICIES:
        problems.append(f"{where}.on_failure: {on_failure!r} is not one of "
                        f"{sorted(FAILURE_POLICIES)}")
    if on_failure in {"copy", "move"} and (not suffixes or ".json" in suffixes):
        # the source moved aside is <failures><rel>; for a.json that is the report of a
        problems.append(f"{where}.on_failure: {on_failure!r} needs suffixes that exclude "
                        "'.json': a source moved aside as <failures><rel> could take the name "
                        "of another source's failure report <failures><rel>.json")
    flags: dict[str, Any] = {}
    for flag in ("hand_over_account", "recursive", "ready_marker"):
        flags[flag] = raw.get(flag, False)
        if not isinstance(flags[flag], bool):
            problems.append(f"{where}.{flag}: must be true or false")
    swept = isinstance(storage, str) and _swept(storage)
    if swept:
        # the sweep moves claimed and settled files into these folders: watching one would
        # claim a file twice, writing into the claim folder would mix records with sources
        kept: tuple[str, ...] = (CLAIM_PREFIX, DONE_PREFIX, FAILED_PREFIX)
        for field_name, value, forbidden in (("match.prefix", prefix, kept),
                                             ("outputs", outputs, kept[:1]),
                                             ("results", results, kept[:1]),
                                             ("failures", failures, kept[:1])):
            if value.startswith(forbidden):
                problems.append(f"{where}.{field_name}: {value!r} is inside "
                                f"{' or '.join(forbidden)}, which the sweep keeps")
    elif flags["recursive"] or flags["ready_marker"]:
        problems.append(f"{where}: recursive and ready_marker apply to swept storages only "
                        f"({storage!r} announces its files by events)")
    if len(problems) > before:
        return None
    return Rule(
        name=name, storage=str(storage), location=str(location), prefix=prefix,
        suffixes=tuple(suffixes), output_format=output_format, options=dict(options),
        provider=str(provider), outputs_prefix=outputs, results_prefix=results,
        failures_prefix=failures, read_grant=cast(GrantKind, read_grant), max_size_bytes=max_size,
        max_output_bytes=max_output, on_failure=str(on_failure),
        hand_over_account=flags["hand_over_account"],
        recursive=flags["recursive"], ready_marker=flags["ready_marker"], swept=swept,
    )


def _swept(storage: str) -> bool:
    """Whether ``storage`` is swept, from its adapter class. Loading the class imports no
    cloud SDK (adapters import theirs on first use, convbridge.storage._vendor), so a
    function pays nothing for the storages its rules name but it never serves. Where the
    SDK is not installed the adapter does not load and this cannot tell: the storage's own
    function, and ``convbridge check-rules`` with the extras installed, check its rules in
    full."""
    if storage not in STORAGES:
        return False
    try:
        return bool(STORAGES.load(storage).swept)
    except ConfigError:
        return False


def _prefix(value: Any, where: str, problems: list[str], *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            problems.append(f"{where}: required (a prefix ending in '/')")
        return ""
    if not isinstance(value, str) or not value.endswith("/") or value.startswith("/"):
        problems.append(f"{where}: {value!r} must be a relative prefix ending in '/'")
        return ""
    if any(part in {"..", "."} for part in value.split("/")):
        problems.append(f"{where}: {value!r} must not contain '.' or '..' segments")
        return ""
    return value


Fetcher = Callable[[str], str]


def load_rules(
    location: str,
    *,
    read_ssm: Fetcher | None = None,
    read_s3: Callable[[str, str], str] | None = None,
) -> RuleSet:
    """Load from a path, ``ssm:/parameter`` or ``s3://bucket/key``; the readers are injected so
    only the client the location needs is ever created."""
    try:
        if location.startswith("ssm:"):
            if read_ssm is None:
                raise ConfigError("rules in SSM need an SSM reader")
            text = read_ssm(location[len("ssm:"):])
        elif location.startswith("s3://"):
            if read_s3 is None:
                raise ConfigError("rules in S3 need an S3 reader")
            bucket, _, key = location[len("s3://"):].partition("/")
            text = read_s3(bucket, key)
        else:
            text = Path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rules from {location}: {exc}") from exc
    return parse_rules(text, location)
