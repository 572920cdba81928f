"""Environment -> validated :class:`Settings`, read once per cold start.

Settings hold secret *names* (ARNs) only; the values are fetched by :mod:`convbridge.secrets`
when first needed, so nothing sensitive sits in the environment or in a settings repr.
Every problem in the environment is reported at once, not one per deploy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from convbridge.budget import ProviderLimits, environment_share
from convbridge.errors import ConfigError
from convbridge.http import HostPattern
from convbridge.registries import PROVIDERS

PREFIX = "CONVBRIDGE_"



#: the most environments CONVBRIDGE_TRIGGER_CONCURRENCY may name: 1000, AWS's largest
#: MaximumConcurrency for one event source, is plenty for several
MAX_ENVIRONMENTS = 1000


def environment_count(text: str) -> int | None:
    """``N`` or ``N+M+...`` (whole numbers), their sum when it is 1 to MAX_ENVIRONMENTS, else
    None."""
    terms = text.strip().split("+")
    if not all(term.strip().isascii() and term.strip().isdigit() and len(term.strip()) <= 6
               for term in terms):
        return None
    total = sum(int(term) for term in terms)
    return total if 1 <= total <= MAX_ENVIRONMENTS else None


@dataclass(frozen=True)
class Settings:
    rules_location: str
    context_secret_name: str
    idempotency_table: str
    webhook_url: str | None = None
    provider_secret_names: Mapping[str, str] = field(default_factory=dict)
    provider_base_urls: Mapping[str, str] = field(default_factory=dict)
    grant_role_arn: str | None = None
    read_grant_seconds: int = 900
    write_grant_seconds: int = 3600
    s3_endpoint_url: str | None = None
    region: str = "us-east-1"
    max_callback_bytes: int = 1024 * 1024
    http_timeout_seconds: float = 10.0
    context_max_age_seconds: int = 7 * 24 * 3600
    completion_queue_url: str | None = None
    claim_expiry_seconds: int = 7 * 24 * 3600
    #: hosts the relay may download from besides the ones each provider declares; only the
    #: dev stack sets it (``http://127.0.0.1`` for its sandbox), no deployed template does
    relay_extra_hosts: tuple[HostPattern, ...] = ()
    #: CONVBRIDGE_<PROVIDER>_MAX_CONCURRENT_JOBS / _REQUESTS_PER_SECOND as set, the provider
    #: account's limits; a provider missing here, or a value left out, takes the adapter's
    #: ``default_limits``
    provider_limit_overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: CONVBRIDGE_TRIGGER_CONCURRENCY: how many execution environments that create jobs may
    #: run at once, each taking an equal share of every provider account's limits: the sum of
    #: the job-creating event sources' MaximumConcurrency (``5+5``: the S3 trigger's and the
    #: SFTP claims queue's; CloudFormation cannot add, so the sum is written out). Unset, one
    #: environment takes all.
    trigger_concurrency: int = 1
    #: an event whose provider says "not now" is sent again after base * 2^(n-1) seconds
    #: (its n-th deferral, at most the max; SQS delays stop at 900 s), and reported as a
    #: failure only after ``backpressure_max_deferrals`` deferrals
    backpressure_base_seconds: int = 30
    backpressure_max_seconds: int = 900
    backpressure_max_deferrals: int = 100
    #: the CONVBRIDGE_* variables as read, for adapters that validate their own
    #: (e.g. CONVBRIDGE_AZURE_ACCOUNT_SECRET); never holds secret values, only names
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def value(self, name: str, default: str | None = None) -> str | None:
        """``CONVBRIDGE_<name>`` as set at cold start, stripped, or ``default``."""
        found = self.environ.get(PREFIX + name, "").strip()
        return found or default

    def required(self, name: str, why: str) -> str:
        found = self.value(name)
        if found is None:
            raise ConfigError(f"{PREFIX}{name} is not set; it is needed {why}")
        return found

    def base_url(self, provider: str) -> str:
        """``CONVBRIDGE_<PROVIDER>_URL`` when set, else the adapter's ``default_base_url``."""
        found = self.provider_base_urls.get(provider)
        if found:
            return found
        default = PROVIDERS.load(provider).default_base_url
        if not default:
            raise ConfigError(f"no base URL known for provider {provider!r}; set "
                              f"{PREFIX}{provider.upper()}_URL")
        return str(default)

    def provider_secret_name(self, provider: str) -> str:
        """``CONVBRIDGE_SECRET_<PROVIDER>`` when set, else ``<prefix><provider>``: deployed
        stacks name every provider's secret under one prefix (and grant reading only that), so
        a provider added to the registry needs no setting of its own."""
        if provider in self.provider_secret_names:
            return self.provider_secret_names[provider]
        prefix = self.value("PROVIDER_SECRETS_PREFIX")
        if prefix is None:
            raise ConfigError(f"no secret configured for provider {provider!r}; set "
                              f"{PREFIX}PROVIDER_SECRETS_PREFIX or "
                              f"{PREFIX}SECRET_{provider.upper()}")
        return prefix + provider

    def provider_limits(self, provider: str) -> ProviderLimits:
        """This environment's budget for ``provider``: its share of the account's limits."""
        return environment_share(self.account_limits(provider), self.trigger_concurrency)

    def account_limits(self, provider: str) -> ProviderLimits:
        """The provider account's limits: the settings' overrides over the adapter's
        ``default_limits``."""
        default = PROVIDERS.load(provider).default_limits
        found = self.provider_limit_overrides.get(provider, {})
        return ProviderLimits(
            max_concurrent_jobs=int(found.get("max_concurrent_jobs",
                                              default.max_concurrent_jobs)),
            requests_per_second=float(found.get("requests_per_second",
                                                default.requests_per_second)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []

        def required(name: str) -> str:
            value = env.get(PREFIX + name, "").strip()
            if not value:
                problems.append(f"{PREFIX}{name} is not set")
            return value

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(PREFIX + name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{PREFIX}{name}={raw!r} is not an integer")
                return default
            if not low <= value <= high:
                problems.append(f"{PREFIX}{name}={value} is outside {low}..{high}")
            return value

        def environments(name: str) -> int:
            raw = env.get(PREFIX + name)
            if raw is None or raw.strip() == "":
                return 1
            total = environment_count(raw)
            if total is None:
                problems.append(f"{PREFIX}{name}={raw!r} is not a count of environments (a "
                                "whole number, or a sum like 5+5, 1 to 1000 in all)")
                return 1
            return total

        def url(name: str) -> str | None:
            raw = env.get(PREFIX + name, "").strip() or None
            if raw is not None and urlparse(raw).scheme not in {"http", "https"}:
                problems.append(f"{PREFIX}{name}={raw!r} is not an http(s) URL")
            return raw

        secret_names: dict[str, str] = {}
        base_urls: dict[str, str] = {}
        for key, value in env.items():
            if key.startswith(PREFIX + "SECRET_") and value.strip():
                secret_names[key[len(PREFIX + "SECRET_"):].lower()] = value.strip()
        # every registered provider's override; names only, no adapter is imported
        for provider in PROVIDERS.names():
            found = url(f"{provider.upper()}_URL")
            if found:
                base_urls[provider] = found

        limit_overrides: dict[str, dict[str, float]] = {}
        for provider in PROVIDERS.names():
            found_limits: dict[str, float] = {}
            jobs_name = f"{provider.upper()}_MAX_CONCURRENT_JOBS"
            if env.get(PREFIX + jobs_name, "").strip():
                found_limits["max_concurrent_jobs"] = integer(jobs_name, 1, 1, 10000)
            rate_name = f"{provider.upper()}_REQUESTS_PER_SECOND"
            rate_raw = env.get(PREFIX + rate_name, "").strip()
            if rate_raw:
                try:
                    rate = float(rate_raw)
                except ValueError:
                    rate = 0.0
                if not 0.1 <= rate <= 10000:
                    problems.append(f"{PREFIX}{rate_name}={rate_raw!r} is not a number in "
                                    "0.1..10000")
                found_limits["requests_per_second"] = rate
            if found_limits:
                limit_overrides[provider] = found_limits

        timeout_raw = env.get(PREFIX + "HTTP_TIMEOUT_SECONDS", "10")
        try:
            timeout = float(timeout_raw)
        except ValueError:
            problems.append(f"{PREFIX}HTTP_TIMEOUT_SECONDS={timeout_raw!r} is not a number")
            timeout = 10.0

        relay_extra_hosts: list[HostPattern] = []
        for entry in env.get(PREFIX + "RELAY_EXTRA_HOSTS", "").replace(",", " ").split():
            try:
                relay_extra_hosts.append(HostPattern.parse(entry))
            except ValueError as exc:
                problems.append(f"{PREFIX}RELAY_EXTRA_HOSTS: {exc}")

        settings = cls(
            rules_location=required("RULES"),
            context_secret_name=required("CONTEXT_SECRET"),
            idempotency_table=required("IDEMPOTENCY_TABLE"),
            completion_queue_url=url("COMPLETION_QUEUE_URL"),
            claim_expiry_seconds=integer("CLAIM_EXPIRY_SECONDS", 7 * 24 * 3600, 3600,
                                         365 * 24 * 3600),
            webhook_url=url("WEBHOOK_URL"),
            provider_secret_names=secret_names,
            provider_base_urls=base_urls,
            grant_role_arn=env.get(PREFIX + "GRANT_ROLE_ARN", "").strip() or None,
            # STS cannot go below 15 minutes; presigned URLs may.
            read_grant_seconds=integer("READ_GRANT_SECONDS", 900, 60, 43200),
            write_grant_seconds=integer("WRITE_GRANT_SECONDS", 3600, 900, 3600),
            s3_endpoint_url=url("S3_ENDPOINT_URL"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            max_callback_bytes=integer("MAX_CALLBACK_BYTES", 1024 * 1024, 1024, 6 * 1024 * 1024),
            http_timeout_seconds=timeout,
            context_max_age_seconds=integer("CONTEXT_MAX_AGE_SECONDS", 7 * 24 * 3600, 60,
                                            30 * 24 * 3600),
            relay_extra_hosts=tuple(relay_extra_hosts),
            provider_limit_overrides=limit_overrides,
            trigger_concurrency=environments("TRIGGER_CONCURRENCY"),
            backpressure_base_seconds=integer("BACKPRESSURE_BASE_SECONDS", 30, 1, 900),
            backpressure_max_seconds=integer("BACKPRESSURE_MAX_SECONDS", 900, 1, 900),
            backpressure_max_deferrals=integer("BACKPRESSURE_MAX_DEFERRALS", 100, 0, 10000),
            environ={k: v for k, v in env.items() if k.startswith(PREFIX)},
        )
        if settings.claim_expiry_seconds < settings.context_max_age_seconds:
            # A callback verifies for as long as its context lives; a settle claim forgotten
            # before that would let a replayed callback settle the job a second time.
            problems.append(
                f"{PREFIX}CLAIM_EXPIRY_SECONDS={settings.claim_expiry_seconds} is shorter than "
                f"{PREFIX}CONTEXT_MAX_AGE_SECONDS={settings.context_max_age_seconds}: claims "
                "must outlive the job contexts they settle")
        if problems:
            raise ConfigError("invalid environment:\n" + "\n".join(f"  - {p}" for p in problems))
        return settings
