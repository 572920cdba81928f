"""Azure Blob I/O for the sandbox's ``import/azure/blob`` and ``export/azure/blob`` tasks, done
over the Blob REST API with exactly the SAS token a task carried and nothing else, so a grant
that is too narrow (a create-only SAS asked to overwrite, a read SAS for another blob) fails
here as it would at the provider: the storage server decides, not this code.

Real CloudConvert derives the endpoint from ``storage_account`` (``<account>.blob.core.windows
.net``); the offline sandbox cannot reach that, so the caller maps account names to endpoints
(``Sandbox.set_azure_endpoint``, e.g. an Azurite URL). Account keys (``storage_access_key``)
are not emulated. Errors become ``StorageError`` with the HTTP status and Azure's error code,
never the SAS."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote

import httpx

from .storage_io import FileBlob, Spool, StorageError, guess_content_type

#: Sent with every request; a SAS's own ``sv`` decides how it is checked.
API_VERSION = "2023-11-03"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class AzureAccess:
    """Where an Azure task reads or writes, and the only credential it may use to do so;
    ``endpoint`` is the account's blob endpoint, resolved when the task runs."""

    account: str
    container: str
    sas_token: str = field(repr=False)
    endpoint: str = ""


def _url(access: AzureAccess, blob: str | None = None, query: str = "") -> str:
    path = f"{access.endpoint.rstrip('/')}/{quote(access.container)}"
    if blob is not None:
        path += "/" + quote(blob, safe="/~")
    token = access.sas_token.lstrip("?")
    return f"{path}?{query}&{token}" if query else f"{path}?{token}"


def _failure(action: str, access: AzureAccess, name: str, response: httpx.Response) -> StorageError:
    code = response.headers.get("x-ms-error-code") or response.reason_phrase
    return StorageError(f"Azure {action} {access.account}/{access.container}/{name} failed: "
                        f"HTTP {response.status_code} {code}")


def _blob_names(client: httpx.Client, access: AzureAccess, prefix: str) -> list[str]:
    names: list[str] = []
    marker = ""
    while True:
        query = "restype=container&comp=list&prefix=" + quote(prefix, safe="")
        if marker:
            query += "&marker=" + quote(marker, safe="")
        response = client.get(_url(access, query=query), headers={"x-ms-version": API_VERSION})
        if response.status_code != 200:
            raise _failure("List Blobs", access, prefix, response)
        root = ElementTree.fromstring(response.content)
        names.extend(node.text or "" for node in root.iterfind("./Blobs/Blob/Name"))
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return [name for name in names if name and not name.endswith("/")]


def read_azure(client: httpx.Client, access: AzureAccess, blob: str | None,
               blob_prefix: str | None, spool: Spool) -> list[tuple[str, FileBlob]]:
    """(blob name, file named after its last segment) for ``blob``, or for every blob under
    ``blob_prefix``; large blobs are streamed to disk."""
    try:
        names = [blob] if blob is not None else _blob_names(client, access, blob_prefix or "")
        if not names:
            raise StorageError(f"no blobs under {access.account}/{access.container}/"
                               f"{blob_prefix or ''}")
        found: list[tuple[str, FileBlob]] = []
        try:
            for name in names:
                with client.stream("GET", _url(access, name),
                                   headers={"x-ms-version": API_VERSION}) as response:
                    if response.status_code != 200:
                        raise _failure("Get Blob", access, name, response)
                    found.append((name, spool.blob_from_chunks(
                        name.rsplit("/", 1)[-1], response.iter_bytes(_CHUNK))))
        except BaseException:
            for _, each in found:
                spool.discard(each)
            raise
        return found
    except httpx.HTTPError as exc:
        raise StorageError(f"Azure {access.account}/{access.container}: "
                           f"{type(exc).__name__}") from exc


def write_azure(client: httpx.Client, access: AzureAccess, blob: str, data: FileBlob, *,
                metadata: Mapping[str, str] | None = None) -> None:
    """One Put Blob of the whole file, overwriting if the SAS allows it: whether it may is
    the server's decision, as at a real provider."""
    headers = {
        "x-ms-version": API_VERSION,
        "x-ms-blob-type": "BlockBlob",
        "Content-Type": guess_content_type(blob),
        # Azure refuses chunked uploads: the length goes first, the body streams after
        "Content-Length": str(data.size),
        **{f"x-ms-meta-{name}": value for name, value in (metadata or {}).items()},
    }
    try:
        with data.open() as body:
            response = client.put(_url(access, blob), content=_read(body), headers=headers)
    except httpx.HTTPError as exc:
        raise StorageError(f"Azure Put Blob {access.account}/{access.container}/{blob}: "
                           f"{type(exc).__name__}") from exc
    if response.status_code != 201:
        raise _failure("Put Blob", access, blob, response)


def _read(body: BinaryIO) -> Iterator[bytes]:
    while chunk := body.read(_CHUNK):
        yield chunk
