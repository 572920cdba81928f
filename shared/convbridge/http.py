"""The one HTTP client convbridge uses to talk to providers: explicit timeouts everywhere.

Built once per cold start and shared, so connections to a provider are reused across the
objects of a batch. The transport is injectable: tests pass an ``httpx.MockTransport`` for
edge cases and real servers for everything else.
"""

from __future__ import annotations

import httpx

from convbridge import __version__

USER_AGENT = f"convbridge/{__version__}"


def make_client(
    timeout_seconds: float, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
        headers={"User-Agent": USER_AGENT},
        transport=transport,
        follow_redirects=False,
    )
