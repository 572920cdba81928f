"""SAS and GCS V4 signed-URL minting through the adapters themselves: both sign locally with a
key already in memory, so no server is needed to time them."""

from __future__ import annotations

import base64
import json
import time

from convbridge.model import ObjectRef

N = 500


def _per_call(action: object) -> float:
    action()  # type: ignore[operator]  # warm: key parsing, imports
    started = time.perf_counter()
    for _ in range(N):
        action()  # type: ignore[operator]
    return (time.perf_counter() - started) / N


def azure_sas_seconds() -> float:
    from convbridge.storage.azure_blob import AzureBlobStorage

    key = base64.b64encode(b"k" * 64).decode()
    storage = AzureBlobStorage(account_name="benchaccount", account_key=lambda: key)
    ref = ObjectRef("azure_blob", "benchaccount/inbox", "a/photo 1.png")
    return _per_call(lambda: storage.grant_read(ref, 900))


def gcs_signed_url_seconds() -> float:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage as gcs
    from google.oauth2 import service_account

    from convbridge.storage.gcs import GcsStorage

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "bench", "private_key_id": "1",
            "private_key": pem, "client_email": "bench@bench.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    signer = service_account.Credentials.from_service_account_info(json.loads(json.dumps(info)))
    client = gcs.Client(project="bench", credentials=signer)
    storage = GcsStorage(client=client, signer=signer)
    ref = ObjectRef("gcs", "bench-bucket", "inbox/a/photo 1.png", version="1700000000000000")
    return _per_call(lambda: storage.grant_read(ref, 900))
