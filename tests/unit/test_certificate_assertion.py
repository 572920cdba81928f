"""The bridge's certificate-signed client assertion, as Entra checks it: for any app and any
moment within the certificate's life, LocalEntra (the stand-in the integration tests trade at)
accepts it, and refuses it once any one character of it is changed. Answered in-process
(``LocalEntra.answer``), without a socket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.storage.azure_identity import (
    ASSERTION_TYPE,
    STORAGE_SCOPE,
    CertificateAssertion,
    ClientCertificate,
)
from devstack.loopback import LoopbackRequest
from devstack.servers_azure import LocalEntra, app_certificate

TENANT = "00000000-0000-0000-0000-000000000003"
CERTIFICATE = ClientCertificate(*app_certificate())
ENTRA = LocalEntra(TENANT)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ask(client_id: str, assertion: str) -> int:
    form = {"grant_type": "client_credentials", "client_id": client_id, "scope": STORAGE_SCOPE,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    path = f"/{TENANT}/oauth2/v2.0/token"
    return ENTRA.answer(LoopbackRequest("POST", path, {}, urlencode(form).encode())).status


@settings(max_examples=15, deadline=None)
@given(client_id=st.uuids().map(str), seconds_ago=st.integers(0, 60),
       position=st.integers(0, 10_000), replacement=st.sampled_from(ALPHABET))
def test_the_assertion_verifies_and_any_changed_character_is_refused(
        client_id: str, seconds_ago: int, position: int, replacement: str) -> None:
    ENTRA.register_certificate(client_id, CERTIFICATE.certificate_pem)
    now = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    assertion = CertificateAssertion(lambda: CERTIFICATE, client_id=client_id,
                                     token_url=ENTRA.token_url, clock=lambda: now)()
    assert ask(client_id, assertion) == 200
    # not a dot, and not a part's last character, whose low bits base64 decoding may drop
    changeable = [i for i, char in enumerate(assertion)
                  if char != "." and i + 1 < len(assertion) and assertion[i + 1] != "."]
    where = changeable[position % len(changeable)]
    if assertion[where] == replacement:
        replacement = "A" if replacement != "A" else "B"
    changed = assertion[:where] + replacement + assertion[where + 1:]
    assert ask(client_id, changed) == 400
