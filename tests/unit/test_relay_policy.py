"""The relay's bounds as parts: the bounded chunk iterator (a Hypothesis property), the host
allow-list entries, each provider dialect's declared download hosts, the redirect walk (over an
httpx mock transport, the edge it targets), and the settings and rules fields that feed them.
The same bounds against real servers: tests/integration/test_relay_bounds.py."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import ConfigError, OutputHostRefused, OutputTooLarge, RulesError
from convbridge.http import HostPattern, open_download
from convbridge.pipeline import bounded_chunks, relay_policy
from convbridge.providers import PROVIDERS
from convbridge.rules import DEFAULT_MAX_OUTPUT, Rule, parse_rules
from convbridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE_ENV = {"CONVBRIDGE_RULES": "/opt/rules.yaml", "CONVBRIDGE_CONTEXT_SECRET": "arn:ctx",
            "CONVBRIDGE_IDEMPOTENCY_TABLE": "claims"}


# ------------------------------------------------------------------ the bounded iterator


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
       announced=st.none() | st.integers(min_value=0, max_value=60_000),
       limit=st.integers(min_value=1, max_value=60_000))
def test_the_bounded_iterator_never_yields_past_its_bound(
        sizes: list[int], announced: int | None, limit: int) -> None:
    """300 examples: whatever the chunk sizes, announced size and limit, at most
    min(announced, limit) bytes come out before OutputTooLarge, the chunk that crosses the
    bound is the last one read, and everything comes out when the stream stays within both."""
    read: list[int] = []

    def source() -> Iterator[bytes]:
        for size in sizes:
            read.append(size)
            yield b"x" * size

    bound = limit if announced is None else min(announced, limit)
    passed = 0
    refused = False
    try:
        for chunk in bounded_chunks(source(), filename="out.pdf", announced=announced,
                                    limit=limit):
            passed += len(chunk)
            assert passed <= bound
    except OutputTooLarge:
        refused = True
    if announced is not None and announced > limit:
        assert refused and read == [] and passed == 0  # refused before reading
    elif sum(sizes) <= bound:
        assert not refused and passed == sum(sizes) and read == sizes
    else:
        assert refused
        assert passed == sum(read[:-1]) <= bound < sum(read)  # stopped at the crossing


def test_an_announced_size_over_the_limit_is_refused_before_reading() -> None:
    def never_read() -> Iterator[bytes]:
        raise AssertionError("the stream was read")
        yield b""  # a generator: nothing runs until it is read

    with pytest.raises(OutputTooLarge, match="announced at 2000 bytes, over the rule's "
                                             "max_output_bytes of 1000 bytes"):
        bounded_chunks(never_read(), filename="out.pdf", announced=2000, limit=1000)


# ------------------------------------------------------------------------- host entries


@pytest.mark.parametrize(("entry", "url", "allowed"), [
    ("*.cloudconvert.com", "https://storage.cloudconvert.com/tasks/x.pdf?sig=1", True),
    ("*.cloudconvert.com", "https://eu-central.storage.cloudconvert.com/x", True),
    ("*.cloudconvert.com", "https://STORAGE.CloudConvert.com./x", True),
    ("*.cloudconvert.com", "https://cloudconvert.com/x", False),
    ("*.cloudconvert.com", "https://evilcloudconvert.com/x", False),
    ("*.cloudconvert.com", "https://storage.cloudconvert.com.evil.example/x", False),
    ("*.cloudconvert.com", "https://storage.cloudconvert.com@evil.example/x", False),
    ("*.cloudconvert.com", "http://storage.cloudconvert.com/x", False),
    ("*.cloudconvert.com", "ftp://storage.cloudconvert.com/x", False),
    ("api.cloudconvert.com", "https://api.cloudconvert.com:8443/x", True),
    ("api.cloudconvert.com", "https://sync.api.cloudconvert.com/x", False),
    ("http://127.0.0.1", "http://127.0.0.1:9000/files/x", True),
    ("http://127.0.0.1", "https://127.0.0.1/files/x", True),
    ("http://127.0.0.1", "http://127.0.0.2:9000/files/x", False),
    ("http://127.0.0.1", "http://169.254.169.254/latest/meta-data/", False),
])
def test_an_entry_allows_its_hosts_over_https_only_unless_written_with_http(
        entry: str, url: str, allowed: bool) -> None:
    assert HostPattern.parse(entry).allows(httpx.URL(url)) is allowed


@pytest.mark.parametrize("entry", ["", "*", "*.com", "host:8080", "http://host/path",
                                   "a..b", "-a.example", "*.*.example.com", "a b"])
def test_entries_that_are_not_a_host_or_domain_pattern_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        HostPattern.parse(entry)


# ------------------------------------------------------------ the dialects' download hosts


#: download URLs as each provider's documents and fixtures show them
PROVIDER_URLS = {
    "cloudconvert": "https://storage.cloudconvert.com/tasks/22be63b3/sunset%20beach.pdf",
    "freeconvert": "https://server301.freeconvert.com/api/download/65a1f0c2e39b4800117249/a.png",
    "onlineconvert": "https://www13.api2convert.com/v2/dl/web1/download-file/3b2a1c0d",
    "cloudconvert_v1": "https://srv01.cloudconvert.com/download/~ugl5vnrpfO",
    # the test plugin's provider (tests/plugins/convbridge_toy), registered by entry point
    "toyconvert": "https://cdn.toyconvert.example/tasks/1/a.pdf",
}


@pytest.mark.parametrize("name", PROVIDERS.names())
def test_every_dialect_declares_https_hosts_that_serve_its_downloads(name: str) -> None:
    entries = [HostPattern.parse(p) for p in PROVIDERS.load(name).download_hosts]
    assert entries and not any(entry.plain_http for entry in entries)
    assert any(entry.allows(httpx.URL(PROVIDER_URLS[name])) for entry in entries)
    for elsewhere in ("http://169.254.169.254/latest/meta-data/", "https://127.0.0.1/x",
                      "https://metadata.google.internal/computeMetadata/v1/",
                      "https://bucket.s3.amazonaws.com/x",
                      PROVIDER_URLS[name].replace("https://", "http://")):
        assert not any(entry.allows(httpx.URL(elsewhere)) for entry in entries), elsewhere


def test_the_relay_policy_adds_the_base_host_and_the_configured_extra_hosts() -> None:
    class Stub:
        settings = Settings.from_env({**BASE_ENV, "CONVBRIDGE_FREECONVERT_URL":
                                      "https://fc.internal.example/v1",
                                      "CONVBRIDGE_RELAY_EXTRA_HOSTS": "http://127.0.0.1"})

        def provider(self, name: str) -> object:
            return PROVIDERS.load(name)(api_key="k", signing_secret=None,
                                        base_url=self.settings.base_url(name), http=None)  # type: ignore[arg-type]

    rule = Rule(name="r", storage="s3", location="b", prefix="in/", suffixes=(),
                output_format="pdf", provider="freeconvert", outputs_prefix="out/",
                results_prefix="res/", failures_prefix="fail/", max_output_bytes=1234)
    policy = relay_policy(Stub(), rule)  # type: ignore[arg-type]
    assert [str(h) for h in policy.hosts] == ["https://*.freeconvert.com",
                                              "https://fc.internal.example",
                                              "http(s)://127.0.0.1"]
    assert policy.max_bytes == 1234


# ------------------------------------------------------------------------- the redirects


def walk(routes: dict[str, httpx.Response], url: str,
         allowed: tuple[HostPattern, ...]) -> tuple[list[str], int]:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return routes[str(request.url)]

    with httpx.Client(transport=httpx.MockTransport(answer)) as client, \
            open_download(client, url, allowed) as response:
        return asked, response.status_code


CC = (HostPattern.parse("*.cloudconvert.com"),)


def test_redirects_within_the_list_are_followed_relative_or_absolute() -> None:
    routes = {
        "https://storage.cloudconvert.com/a": httpx.Response(303, headers={"Location": "/b"}),
        "https://storage.cloudconvert.com/b": httpx.Response(
            308, headers={"Location": "https://eu.storage.cloudconvert.com/c"}),
        "https://eu.storage.cloudconvert.com/c": httpx.Response(200, content=b"pdf"),
    }
    asked, status = walk(routes, "https://storage.cloudconvert.com/a", CC)
    assert status == 200 and len(asked) == 3


@pytest.mark.parametrize("location", [
    "http://storage.cloudconvert.com/b",  # downgraded to plain http
    "https://storage.cloudconvert.com.evil.example/b",
    "https://169.254.169.254/latest/meta-data/",
    "//evil.example/b",
])
def test_a_redirect_off_the_list_is_refused_and_not_requested(location: str) -> None:
    routes = {"https://storage.cloudconvert.com/a":
              httpx.Response(302, headers={"Location": location})}
    with pytest.raises(OutputHostRefused, match="a redirect to .* is not an allowed download "
                                                "origin") as refused:
        walk(routes, "https://storage.cloudconvert.com/a", CC)
    assert "/b" not in str(refused.value) and "meta-data" not in str(refused.value)


@pytest.mark.parametrize("url", ["https://[::1/x", "https:///x", "not a url"])
def test_a_url_that_does_not_parse_is_refused(url: str) -> None:
    with pytest.raises(OutputHostRefused):
        walk({}, url, CC)


# ------------------------------------------------------------------- settings and rules


def test_extra_hosts_are_parsed_and_bad_entries_listed_with_the_rest() -> None:
    settings_ = Settings.from_env({**BASE_ENV, "CONVBRIDGE_RELAY_EXTRA_HOSTS":
                                   "http://127.0.0.1, files.example.com *.cdn.example.com"})
    assert settings_.relay_extra_hosts == (HostPattern("127.0.0.1", plain_http=True),
                                           HostPattern("files.example.com"),
                                           HostPattern("*.cdn.example.com"))
    assert Settings.from_env(BASE_ENV).relay_extra_hosts == ()
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE_ENV, "CONVBRIDGE_RELAY_EXTRA_HOSTS": "host:8080 *.com",
                           "CONVBRIDGE_READ_GRANT_SECONDS": "soon"})
    message = str(caught.value)
    assert "'host:8080' is not a host name" in message and "'*.com' would match" in message
    assert "READ_GRANT_SECONDS" in message


def test_no_deployed_template_lets_the_relay_download_elsewhere() -> None:
    deployed = [ROOT / "template.yaml", *sorted((ROOT / "infra").rglob("*.*"))]
    for path in deployed:
        if path.is_file() and "node_modules" not in path.parts and "cdk.out" not in path.parts:
            assert "RELAY_EXTRA_HOSTS" not in path.read_text(encoding="utf-8",
                                                              errors="replace"), path


RULE = textwrap.dedent("""\
    version: 1
    rules:
      - name: r
        match: {storage: s3, location: b, prefix: in/}
        convert: {to: pdf}
        provider: cloudconvert
        outputs: out/
        results: res/
        failures: fail/
""")


def test_max_output_bytes_defaults_to_5_gib_and_is_validated() -> None:
    assert DEFAULT_MAX_OUTPUT == 5 * 1024 ** 3
    (rule,) = parse_rules(RULE).rules
    assert rule.max_output_bytes == DEFAULT_MAX_OUTPUT
    (rule,) = parse_rules(RULE + "    max_output_bytes: 1048576\n").rules
    assert rule.max_output_bytes == 1048576
    for bad in ("0", "-1", "1.5", "true", "'1 GiB'"):
        with pytest.raises(RulesError, match="max_output_bytes: must be a positive integer"):
            parse_rules(RULE + f"    max_output_bytes: {bad}\n")


def test_every_default_base_url_is_https() -> None:
    """The base URL's host is allowed over https like the declared ones: a deployment never
    relays over plain http."""
    defaults = [PROVIDERS.load(name).default_base_url for name in PROVIDERS.names()]
    assert all(url and url.startswith("https://") for url in defaults)
