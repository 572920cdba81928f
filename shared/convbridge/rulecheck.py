"""``convbridge check-rules``: whether rules that parse can also work, offline and against a
deployment.

Rules validation (convbridge.rules) refuses what is malformed. A well-formed rule can still
never convert anything: a provider that cannot reach its storage (FreeConvert on SFTP ends in
UPLOAD_UNSUPPORTED for every file), a read grant its storage cannot mint, an output no input
can become, or a bucket, prefix or storage the deployed stack does not watch. These checks find
all of that before a deploy, from class attributes and the stack's template and parameters, and
report every problem at once with the rule it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from convbridge.budget import ProviderLimits, environment_share
from convbridge.errors import ConfigError
from convbridge.planner import plan_route
from convbridge.providers import PROVIDERS
from convbridge.rules import Rule, RuleSet
from convbridge.settings import environment_count
from convbridge.storage import STORAGES

FormatFamily = Literal["image", "document", "audio", "video", "archive"]


def _each(words: str, family: FormatFamily) -> dict[str, FormatFamily]:
    return dict.fromkeys(words.split(), family)


#: what kind of content a file suffix (or an output format) holds; suffixes not listed are not
#: judged, since providers convert far more than any table knows
FORMAT_FAMILIES: Mapping[str, FormatFamily] = {
    **_each("png jpg jpeg webp gif tiff tif bmp ico avif heic heif svg eps psd raw "
            "cr2 nef dng", "image"),
    **_each("pdf docx doc odt rtf txt html htm md epub xlsx xls ods csv pptx ppt odp "
            "pages key numbers xps djvu", "document"),
    **_each("mp3 wav ogg flac m4a aac opus wma aiff", "audio"),
    **_each("mp4 mov webm mkv avi wmv flv m4v mpeg mpg 3gp", "video"),
    **_each("zip rar 7z tar gz tgz bz2 xz", "archive"),
}
#: the families each family can plausibly become: images and documents turn into each other
#: (png -> pdf, pdf -> png pages), video gives up its sound track or a still image
BECOMES: Mapping[FormatFamily, frozenset[FormatFamily]] = {
    "image": frozenset({"image", "document"}),
    "document": frozenset({"document", "image"}),
    "audio": frozenset({"audio"}),
    "video": frozenset({"video", "audio", "image"}),
    "archive": frozenset({"archive"}),
}
#: the function that serves each storage's events, by its logical id in template.yaml
TRIGGER_FUNCTIONS: Mapping[str, str] = {
    "s3": "S3TriggerFunction",
    "azure_blob": "AzureTriggerFunction",
    "gcs": "GcsTriggerFunction",
    "sftp": "SftpSweepFunction",
}
#: the template parameter naming an existing bucket to watch instead of the one it creates
WATCHED_PREFIX_PARAMETER = "WatchedPrefix"
SECRETS_PREFIX_VARIABLE = "CONVBRIDGE_PROVIDER_SECRETS_PREFIX"
#: how many environments the S3 trigger splits each provider account's limits into
TRIGGER_CONCURRENCY_VARIABLE = "CONVBRIDGE_TRIGGER_CONCURRENCY"


@dataclass(frozen=True)
class Problem:
    """One reason a rule (or, with ``rule`` None, the deployment) cannot work as written."""

    rule: str | None
    message: str

    def __str__(self) -> str:
        return f"rule {self.rule!r}: {self.message}" if self.rule else self.message


# --- offline: what the rule asks of its storage and provider ---------------------------------


def offline_problems(rules: RuleSet) -> list[Problem]:
    """Route, grant kind and formats of every rule, from the adapters' class attributes."""
    problems: list[Problem] = []
    for rule in rules.rules:
        problems.extend(Problem(rule.name, message) for message in _rule_problems(rule))
    return problems


def _rule_problems(rule: Rule) -> list[str]:
    found = []
    try:
        storage = STORAGES.load(rule.storage)
        provider = PROVIDERS.load(rule.provider)
    except ConfigError as exc:
        return [f"cannot be checked: {exc}"]
    if rule.read_grant not in storage.read_grant_kinds:
        found.append(f"read_grant: {rule.read_grant} is not a grant {rule.storage} can mint "
                     f"(it mints {', '.join(sorted(storage.read_grant_kinds))})")
    plan = plan_route(storage, provider, rule.read_grant,
                      hand_over_account=rule.hand_over_account)
    if plan.read_grant == "upload" and not provider.takes_uploads:
        able = [name for name in PROVIDERS.names() if _reads(rule, name)]
        found.append(
            f"{rule.provider} cannot read from {rule.storage}: the bridge would have to upload "
            f"each file and {rule.provider} takes no upload, so every file would end in a "
            f"failure report (UPLOAD_UNSUPPORTED); providers that can: "
            f"{', '.join(able) or 'none'}")
    found.extend(_format_problems(rule))
    return found


def _reads(rule: Rule, provider_name: str) -> bool:
    provider = PROVIDERS.load(provider_name)
    plan = plan_route(STORAGES.load(rule.storage), provider, rule.read_grant,
                      hand_over_account=rule.hand_over_account)
    return plan.read_grant != "upload" or provider.takes_uploads


def _format_problems(rule: Rule) -> list[str]:
    target = FORMAT_FAMILIES.get(rule.output_format)
    if target is None:
        return []
    by_family: dict[FormatFamily, list[str]] = {}
    for suffix in rule.suffixes:
        family = FORMAT_FAMILIES.get(suffix.lstrip("."))
        if family is not None and target not in BECOMES[family]:
            by_family.setdefault(family, []).append(suffix)
    return [f"convert.to {rule.output_format} ({target}) cannot be made from "
            f"{', '.join(suffixes)} ({family})" for family, suffixes in by_family.items()]


# --- the deployment: a template and its parameters ---------------------------------------------


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms: ``!Ref X`` is ``{"Ref": X}``, ``!Sub s`` is
    ``{"Fn::Sub": s}``, ``!GetAtt A.B`` is ``{"Fn::GetAtt": [A, B]}``."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _short_form)


def parse_template(text: str) -> dict[str, Any]:
    """A CloudFormation/SAM template (YAML or JSON) as a plain mapping."""
    try:
        document = yaml.load(text, Loader=_TemplateLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the template is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise ConfigError("the template has no Resources")
    return document


class _Unknown:
    """A value the template leaves to deploy time (a resource attribute, the account id)."""


UNKNOWN: Any = _Unknown()
_NO_VALUE: Any = object()


@dataclass(frozen=True)
class WatchedPlace:
    bucket: str
    prefix: str
    suffix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}*{self.suffix}"


@dataclass(frozen=True)
class Trigger:
    storage: str
    function: str
    enabled: bool | None
    #: the parameters its condition reads, to say what switches it on
    switches: tuple[str, ...] = ()


@dataclass
class Deployment:
    """What a stack built from ``template`` with ``parameters`` watches and serves. Parameters
    are read generically: any the template declares, with its default unless overridden."""

    template: Mapping[str, Any]
    parameters: dict[str, str]
    problems: list[Problem] = field(default_factory=list)
    _conditions: dict[str, bool | None] = field(default_factory=dict)

    @classmethod
    def of(cls, template: Mapping[str, Any], overrides: Mapping[str, str]) -> Deployment:
        declared = template.get("Parameters") or {}
        parameters: dict[str, str] = {}
        problems = [Problem(None, f"parameter {name} is not one the template declares "
                                  f"(it declares {', '.join(sorted(declared))})")
                    for name in sorted(set(overrides) - set(declared))]
        for name, spec in declared.items():
            if name in overrides:
                parameters[name] = overrides[name]
            elif isinstance(spec, dict) and "Default" in spec:
                parameters[name] = str(spec["Default"])
        return cls(template, parameters, problems)

    def value(self, node: Any) -> Any:
        """``node`` evaluated as far as parameters and conditions allow; UNKNOWN otherwise."""
        if isinstance(node, bool | int | float):
            return str(node).lower() if isinstance(node, bool) else str(node)
        if isinstance(node, str | list):
            return node if isinstance(node, str) else [self.value(item) for item in node]
        if not isinstance(node, dict) or len(node) != 1:
            return node
        (function, argument), = node.items()
        return self._function(function, argument)

    def _function(self, function: str, argument: Any) -> Any:
        if function == "Ref":
            if argument == "AWS::NoValue":
                return _NO_VALUE
            return self.parameters.get(argument, UNKNOWN)
        if function == "Condition":
            return self.condition(str(argument))
        if function == "Fn::If":
            holds = self.condition(str(argument[0]))
            return UNKNOWN if holds is None else self.value(argument[1 if holds else 2])
        if function == "Fn::Sub" and isinstance(argument, str):
            return self._substitute(argument)
        if function in {"Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"}:
            values = [self.value(item) for item in argument]
            if any(v is UNKNOWN or v is None for v in values):
                return UNKNOWN
            if function == "Fn::Equals":
                return values[0] == values[1]
            if function == "Fn::Not":
                return not values[0]
            return all(values) if function == "Fn::And" else any(values)
        if function == "Fn::Split":
            text = self.value(argument[1])
            return text.split(argument[0]) if isinstance(text, str) else UNKNOWN
        if function == "Fn::Select":
            items = self.value(argument[1])
            if isinstance(items, list) and int(argument[0]) < len(items):
                return items[int(argument[0])]
            return UNKNOWN
        return UNKNOWN

    def _substitute(self, text: str) -> Any:
        out, rest = [], text
        while "${" in rest:
            before, _, after = rest.partition("${")
            name, _, rest = after.partition("}")
            found = self.parameters.get(name)
            if found is None:
                return UNKNOWN
            out += [before, found]
        return "".join([*out, rest])

    def condition(self, name: str) -> bool | None:
        if name not in self._conditions:
            self._conditions[name] = None  # a cycle reads as unknown
            found = self.value((self.template.get("Conditions") or {}).get(name, UNKNOWN))
            self._conditions[name] = found if isinstance(found, bool) else None
        return self._conditions[name]

    def _resources(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        for name, resource in (self.template.get("Resources") or {}).items():
            if isinstance(resource, dict):
                yield name, resource

    def _created(self, resource: Mapping[str, Any]) -> bool | None:
        condition = resource.get("Condition")
        return True if condition is None else self.condition(str(condition))

    def watched(self) -> list[WatchedPlace]:
        """Buckets and prefixes whose new objects reach the S3 trigger: buckets the template
        creates with a notification (and its key filter), and buckets whose events the
        template's EventBridge rules send on (an existing bucket the stack did not create)."""
        places = []
        for _, resource in self._resources():
            places.extend(self._routed(resource))
            if resource.get("Type") != "AWS::S3::Bucket" or self._created(resource) is False:
                continue
            properties = resource.get("Properties") or {}
            bucket = self.value(properties.get("BucketName"))
            notifications = properties.get("NotificationConfiguration") or {}
            if not isinstance(bucket, str) or not notifications:
                continue
            for kind in ("QueueConfigurations", "LambdaConfigurations", "TopicConfigurations"):
                for item in notifications.get(kind) or []:
                    places.append(self._filtered(bucket, item.get("Filter") or {}))
            if notifications.get("EventBridgeConfiguration"):
                places.append(WatchedPlace(bucket, self._watched_prefix()))
        return places

    def _routed(self, resource: Mapping[str, Any]) -> list[WatchedPlace]:
        """An EventBridge rule of the template (created, not switched off) that sends a
        bucket's "Object Created" events on: the way a bucket the stack did not create is
        watched. Its pattern names the buckets and, optionally, key prefixes."""
        if resource.get("Type") != "AWS::Events::Rule" or self._created(resource) is False:
            return []
        pattern = (resource.get("Properties") or {}).get("EventPattern") or {}
        if "aws.s3" not in (pattern.get("source") or []) or "Object Created" not in (
                pattern.get("detail-type") or []):
            return []
        detail = pattern.get("detail") or {}
        buckets = [self.value(name) for name in (detail.get("bucket") or {}).get("name") or []]
        keys = (detail.get("object") or {}).get("key") or [{"prefix": ""}]
        prefixes = [self.value(item.get("prefix", "")) for item in keys
                    if isinstance(item, dict)]
        return [WatchedPlace(bucket, prefix if isinstance(prefix, str) else "")
                for bucket in buckets if isinstance(bucket, str)
                for prefix in prefixes]

    def _watched_prefix(self) -> str:
        return self.parameters.get(WATCHED_PREFIX_PARAMETER, "")

    def _filtered(self, bucket: str, key_filter: Mapping[str, Any]) -> WatchedPlace:
        found = {"prefix": "", "suffix": ""}
        for item in (key_filter.get("S3Key") or {}).get("Rules") or []:
            name, value = str(item.get("Name", "")).lower(), self.value(item.get("Value"))
            if name in found and isinstance(value, str):
                found[name] = value
        return WatchedPlace(bucket, found["prefix"], found["suffix"])

    def trigger(self, storage: str) -> Trigger | None:
        function = TRIGGER_FUNCTIONS.get(storage)
        resource = dict(self._resources()).get(function or "")
        if function is None or resource is None:
            return None
        condition = resource.get("Condition")
        switches: tuple[str, ...] = ()
        if condition is not None:
            switches = tuple(sorted(self._parameters_read(
                (self.template.get("Conditions") or {}).get(condition), set())))
        return Trigger(storage, function, self._created(resource), switches)

    def _parameters_read(self, node: Any, seen: set[str]) -> set[str]:
        if isinstance(node, list):
            return set().union(*(self._parameters_read(item, seen) for item in node))
        if not isinstance(node, dict):
            return set()
        if "Ref" in node:
            declared = self.template.get("Parameters") or {}
            return {str(node["Ref"])} if node["Ref"] in declared else set()
        if "Condition" in node and isinstance(node["Condition"], str):
            name = node["Condition"]
            if name in seen:
                return set()
            seen.add(name)
            return self._parameters_read((self.template.get("Conditions") or {}).get(name), seen)
        return set().union(*(self._parameters_read(value, seen) for value in node.values()))

    def provider_secrets_prefix(self) -> str | None:
        """What the functions get as CONVBRIDGE_PROVIDER_SECRETS_PREFIX."""
        variables = ((((self.template.get("Globals") or {}).get("Function") or {})
                      .get("Environment") or {}).get("Variables") or {})
        found = self.value(variables.get(SECRETS_PREFIX_VARIABLE))
        return found if isinstance(found, str) else None

    def environment(self, function: str) -> dict[str, str]:
        """The variables ``function`` gets (the template's Globals, then its own) whose values
        the parameters decide; the others are left out."""
        declared = ((((self.template.get("Globals") or {}).get("Function") or {})
                     .get("Environment") or {}).get("Variables") or {})
        properties = dict(self._resources()).get(function, {}).get("Properties") or {}
        declared = {**declared, **((properties.get("Environment") or {}).get("Variables") or {})}
        found = {name: self.value(node) for name, node in declared.items()}
        return {name: value for name, value in found.items() if isinstance(value, str)}

    def queue_concurrency(self, function: str) -> tuple[int, str] | None:
        """The ScalingConfig.MaximumConcurrency of ``function``'s SQS event source, and where
        it is set (the parameter it names, or the property itself)."""
        properties = dict(self._resources()).get(function, {}).get("Properties") or {}
        for event in (properties.get("Events") or {}).values():
            if not isinstance(event, dict) or event.get("Type") != "SQS":
                continue
            node = ((event.get("Properties") or {}).get("ScalingConfig") or {}).get(
                "MaximumConcurrency")
            found = self.value(node)
            if isinstance(found, str) and found.isdigit():
                where = (str(node["Ref"]) if isinstance(node, dict) and "Ref" in node
                         else "ScalingConfig.MaximumConcurrency")
                return int(found), where
        return None


def deployment_problems(rules: RuleSet, deployment: Deployment, *,
                        secret_exists: Callable[[str], bool] | None = None
                        ) -> tuple[list[Problem], list[str]]:
    """Problems of ``rules`` against ``deployment``, and notes (the provider secrets the
    rules need). ``secret_exists`` (a deployed stack) checks those secrets are there."""
    problems = list(deployment.problems)
    missing = [name for name, spec in (deployment.template.get("Parameters") or {}).items()
               if name not in deployment.parameters]
    if missing:
        problems.append(Problem(None, f"parameters without a value or default: "
                                      f"{', '.join(missing)} (give them as K=V)"))
    places = deployment.watched()
    for rule in rules.rules:
        problems.extend(Problem(rule.name, text) for text in _trigger_problems(rule, deployment))
        if rule.storage == "s3":
            problems.extend(Problem(rule.name, text) for text in _watch_problems(rule, places))
    notes = [f"warning: {text}" for text in budget_warnings(rules, deployment)]
    prefix = deployment.provider_secrets_prefix()
    providers = sorted({rule.provider for rule in rules.rules})
    if prefix is None:
        problems.append(Problem(None, f"cannot tell the provider secrets' names: the template "
                                      f"sets no {SECRETS_PREFIX_VARIABLE}"))
    else:
        for provider in providers:
            users = ", ".join(r.name for r in rules.rules if r.provider == provider)
            name = prefix + provider
            notes.append(f"provider secret {name} (for rules {users})")
            if secret_exists is not None and not secret_exists(name):
                problems.append(Problem(None, f"secret {name} does not exist; rules {users} "
                                              f"need it for {provider}"))
    return problems, notes


def budget_warnings(rules: RuleSet, deployment: Deployment) -> list[str]:
    """Providers of the S3 rules whose account limits the S3 trigger's environments would
    exceed together: as many run at once as its event source's MaximumConcurrency, each with
    its share of the account (convbridge.budget.environment_share), at least one job. Over the
    account nothing fails, but the provider's busy answers defer uploads that a smaller
    MaximumConcurrency would have kept waiting in the queue."""
    function = TRIGGER_FUNCTIONS["s3"]
    found = deployment.queue_concurrency(function)
    if found is None:
        return []
    running, where = found
    environment = deployment.environment(function)
    share_count = environment_count(environment.get(TRIGGER_CONCURRENCY_VARIABLE, "1")) or 1
    warnings = []
    for provider in sorted({rule.provider for rule in rules.rules if rule.storage == "s3"}):
        users = ", ".join(r.name for r in rules.rules
                          if r.provider == provider and r.storage == "s3")
        account, named = _account_limits(provider, environment)
        named_jobs = f"CONVBRIDGE_{provider.upper()}_MAX_CONCURRENT_JOBS"
        share = environment_share(account, share_count)
        jobs = running * share.max_concurrent_jobs
        rate = running * share.requests_per_second
        if jobs > account.max_concurrent_jobs:
            warnings.append(
                f"{where} {running} runs up to {running} {function} environments at once, each "
                f"with {share.max_concurrent_jobs} of {provider}'s {account.max_concurrent_jobs}"
                f" concurrent jobs ({named}): up to {jobs} job creations at once, so the "
                f"provider's busy answers will defer uploads; set {where} to at most "
                f"{account.max_concurrent_jobs}, or {named_jobs} to your plan's limit if it "
                f"is higher (rules {users})")
        if rate > account.requests_per_second * (1 + 1e-9):
            warnings.append(
                f"{where} {running} runs up to {running} {function} environments at once, each "
                f"with {share.requests_per_second:g} of {provider}'s "
                f"{account.requests_per_second:g} requests per second ({named}): up to "
                f"{rate:g} per second; set {TRIGGER_CONCURRENCY_VARIABLE} to {running} "
                f"(rules {users})")
    return warnings


def _account_limits(provider: str, environment: Mapping[str, str]) -> tuple[ProviderLimits, str]:
    """``provider``'s account limits as the template sets them over the adapter's defaults, and
    where the concurrent jobs come from."""
    default = PROVIDERS.load(provider).default_limits
    jobs_name = f"CONVBRIDGE_{provider.upper()}_MAX_CONCURRENT_JOBS"
    rate_name = f"CONVBRIDGE_{provider.upper()}_REQUESTS_PER_SECOND"
    jobs, rate = environment.get(jobs_name, ""), environment.get(rate_name, "")
    try:
        rate_value = float(rate) if rate else default.requests_per_second
    except ValueError:
        rate_value = default.requests_per_second
    limits = ProviderLimits(
        max_concurrent_jobs=int(jobs) if jobs.isdigit() else default.max_concurrent_jobs,
        requests_per_second=rate_value)
    return limits, jobs_name if jobs.isdigit() else "the adapter's default"


def _trigger_problems(rule: Rule, deployment: Deployment) -> list[str]:
    trigger = deployment.trigger(rule.storage)
    if trigger is None:
        return [f"the template has no function serving {rule.storage} "
                f"({TRIGGER_FUNCTIONS.get(rule.storage, 'none known')})"]
    if trigger.enabled is False:
        switch = f": set {', '.join(trigger.switches)}" if trigger.switches else ""
        return [f"{rule.storage} is not served: the stack's {trigger.function} is off{switch}"]
    return []


def _watch_problems(rule: Rule, places: Sequence[WatchedPlace]) -> list[str]:
    if not places:
        return ["the template watches no S3 bucket"]
    same_bucket = [p for p in places if p.bucket == rule.location]
    if not same_bucket:
        return [f"watches bucket {rule.location}, but the stack watches "
                f"{', '.join(str(p) for p in places)}"]
    if not any(rule.prefix.startswith(p.prefix) or p.prefix.startswith(rule.prefix)
               for p in same_bucket):
        return [f"watches prefix {rule.prefix!r}, but the stack watches only "
                f"{', '.join(str(p) for p in same_bucket)}"]
    return []


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``K=V`` arguments (sam's ``--parameter-overrides`` form) as a mapping."""
    found = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        found[name] = value
    return found


def stack_deployment(cloudformation: Any, stack: str,
                     overrides: Mapping[str, str]) -> Deployment:
    """The template a deployed stack was created from (as written, before the SAM transform)
    and its current parameters, ``overrides`` on top."""
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    parameters = {item["ParameterKey"]: item.get("ResolvedValue", item.get("ParameterValue", ""))
                  for item in described.get("Parameters", [])}
    body = cloudformation.get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    template = body if isinstance(body, dict) else parse_template(body)
    return Deployment.of(template, {**parameters, **overrides})
