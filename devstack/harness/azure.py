"""Azure Blob on Azurite: a container, the account key in Secrets Manager, and Event Grid
``Microsoft.Storage.BlobCreated`` deliveries posted over HTTP to the real Azure trigger behind a
local Function URL, with the endpoint code in the URL as Event Grid would send it.

Azurite has no Event Grid, so uploads do not deliver themselves: ``event_for`` builds the event
Azure would send for a blob as it now is, and ``deliver`` posts it. The provider sandbox is told
where the emulator's account lives, so its ``import/azure/blob`` and ``export/azure/blob`` tasks
reach Azurite with exactly the SAS tokens the bridge minted.
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import boto3
import httpx
from azure.storage.blob import BlobServiceClient, ContainerClient

from devstack.harness.base import StorageHarness
from devstack.lambda_local import FunctionUrlServer
from devstack.servers_azure import ACCOUNT_NAME, AzuriteServer

if TYPE_CHECKING:
    from devstack.stack import DevStack

REGION = "us-east-1"
ACCOUNT_SECRET = "convbridge/azure-account"
EVENT_GRID_SECRET = "convbridge/event-grid"
SUBSCRIPTION = "6f1c2a9e-0d4b-4c1e-9a55-2b7f3c8d9e01"
TOPIC = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/convbridge-dev/providers/"
         f"Microsoft.Storage/storageAccounts/{ACCOUNT_NAME}")


def blob_created(url: str, *, etag: str, size: int, content_type: str, api: str = "PutBlob",
                 schema: str = "eventgrid", topic: str = TOPIC,
                 subject: str = "") -> dict[str, Any]:
    """One ``Microsoft.Storage.BlobCreated`` event as Event Grid delivers it, in the Event Grid
    schema or as a CloudEvent (field names and layout as in Azure's documented samples)."""
    request_id = str(uuid.uuid4())
    data = {
        "api": api,
        "clientRequestId": str(uuid.uuid4()),
        "requestId": request_id,
        "eTag": etag,
        "contentType": content_type,
        "contentLength": size,
        "blobType": "BlockBlob",
        "url": url,
        "sequencer": "0000000000000000000000000000F4A90000000000a1b2c3",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }
    if schema == "cloudevents":
        return {"source": topic, "subject": subject, "type": "Microsoft.Storage.BlobCreated",
                "time": "2026-11-23T12:00:00.0000000Z", "id": request_id, "data": data,
                "specversion": "1.0"}
    return {"topic": topic, "subject": subject, "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": "2026-11-23T12:00:00.0000000Z", "id": request_id, "data": data,
            "dataVersion": "", "metadataVersion": "1"}


class AzureHarness(StorageHarness):
    storage: ClassVar[str] = "azure_blob"
    trigger_function: ClassVar[str] = "azure_trigger"
    title: ClassVar[str] = "Azure Blob (Azurite)"
    delivery: ClassVar[str] = "Event Grid webhook deliveries (code in the URL) -> Azure trigger"

    def __init__(self, container: str = "convbridge-demo", *,
                 server: AzuriteServer | None = None) -> None:
        super().__init__(f"{ACCOUNT_NAME}/{container}")
        self.container = container
        #: a server passed in belongs to the caller (tests share one); else started here
        self.server = server or AzuriteServer()
        self._owns_server = server is None
        #: the secret Event Grid carries in the endpoint URL (``?code=``)
        self.endpoint_code = secrets.token_urlsafe(32)
        self.trigger: FunctionUrlServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, stack: DevStack) -> None:
        if self._owns_server:
            self.server.start()
        self.container_client.create_container()
        stack.sandbox.set_azure_endpoint(ACCOUNT_NAME, self.server.endpoint_url)

    def stop(self) -> None:
        if self.trigger is not None:
            self.trigger.stop()
            self.trigger = None
        if self._owns_server:
            self.server.stop()

    def env(self, stack: DevStack) -> dict[str, str]:
        return {
            "CONVBRIDGE_AZURE_ACCOUNT_SECRET": ACCOUNT_SECRET,
            "CONVBRIDGE_AZURE_BLOB_ENDPOINT": self.server.endpoint_url,
            # Azurite speaks plain HTTP; never set this against Azure itself
            "CONVBRIDGE_AZURE_ALLOW_HTTP": "1",
            "CONVBRIDGE_EVENT_GRID_SECRET": EVENT_GRID_SECRET,
        }

    def seed(self, stack: DevStack) -> None:
        sm = boto3.client("secretsmanager", region_name=REGION)
        sm.create_secret(Name=ACCOUNT_SECRET, SecretString=json.dumps(
            # plain-HTTP Azurite serves no delegation keys: this account opts into its key
            {"account_name": ACCOUNT_NAME, "signing": "account_key",
             "account_key": self.server.account_key}))
        sm.create_secret(Name=EVENT_GRID_SECRET, SecretString=json.dumps(
            {"code": self.endpoint_code}))

    # -- storage -------------------------------------------------------------------------------

    @property
    def service(self) -> BlobServiceClient:
        return BlobServiceClient(self.server.endpoint_url, credential={
            "account_name": ACCOUNT_NAME, "account_key": self.server.account_key})

    @property
    def container_client(self) -> ContainerClient:
        return self.service.get_container_client(self.container)

    def upload(self, key: str, data: bytes) -> None:
        self.container_client.upload_blob(key, data, overwrite=True)

    def read_bytes(self, key: str) -> bytes | None:
        blob = self.container_client.get_blob_client(key)
        if not blob.exists():
            return None
        return blob.download_blob().readall()

    def objects(self, prefix: str = "") -> dict[str, int]:
        return {item.name: int(item.size) for item in
                self.container_client.list_blobs(name_starts_with=prefix or None)}

    def describe(self, key: str) -> str:
        return f"{self.server.endpoint_url}/{self.container}/{quote(key)}"

    # -- Event Grid ----------------------------------------------------------------------------

    def event_for(self, key: str, *, schema: str = "eventgrid",
                  api: str = "PutBlob") -> dict[str, Any]:
        """The event Event Grid would send for ``key`` as stored now, in the Event Grid schema
        or as a CloudEvent."""
        blob = self.container_client.get_blob_client(key)
        props = blob.get_blob_properties()
        event = blob_created(
            blob.url, etag=str(props.etag), size=int(props.size), api=api, schema=schema,
            content_type=props.content_settings.content_type or "application/octet-stream",
            subject=f"/blobServices/default/containers/{self.container}/blobs/{key}",
        )
        return event

    def post(self, stack: DevStack, body: bytes, *, code: str | None = None,
             query: str | None = None, method: str = "POST",
             headers: dict[str, str] | None = None) -> httpx.Response:
        """One HTTP request to the Azure trigger's Function URL, as Event Grid sends it;
        ``code`` defaults to the right endpoint code ("" sends none), ``query`` replaces the
        whole query string."""
        if self.trigger is None:
            self.trigger = FunctionUrlServer(stack.trigger_module.handler).start()
        code = self.endpoint_code if code is None else code
        if query is None:
            query = f"code={quote(code, safe='')}" if code else ""
        query = f"?{query}" if query else ""
        sent = {"Content-Type": "application/json", "aeg-event-type": "Notification",
                "aeg-delivery-count": "0", **(headers or {})}
        return httpx.request(method, f"{self.trigger.url}/{query}", content=body,
                             headers=sent, timeout=60)

    def deliver(self, stack: DevStack, event: dict[str, Any]) -> dict[str, Any]:
        """Post ``event`` as Event Grid does (an Event Grid schema event inside an array, a
        CloudEvent alone in structured mode) and return the trigger's answer with its HTTP
        status under ``http_status``."""
        cloud = "specversion" in event
        payload: object = event if cloud else [event]
        headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"} if cloud else {}
        response = self.post(stack, json.dumps(payload).encode(), headers=headers)
        answer: dict[str, Any] = response.json()
        answer["http_status"] = response.status_code
        return answer
