"""SFTP I/O for the sandbox and the `import/upload` inbox through which the bridge pushes SFTP
files it will not hand an account for. `import/sftp` and `export/sftp` log in with exactly the
account the task carries (password or private key, never anything ambient) and, like a
provider, do not check the server's host key: pinning is the bridge's job, and the bridge's
tests prove it. An upload form is signed per task (HMAC over the task's slot and expiry with a
key of this sandbox), accepts one file, no larger than `max_file_size`, sent as the last form
field after every parameter exactly as issued. Errors are `StorageError` with messages safe to
show in an API response."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import hmac
import io
import posixpath
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paramiko

from .storage_io import FileBlob, Spool, StorageError

CONNECT_TIMEOUT_SECONDS = 10.0
_READ_CHUNK = 256 * 1024
UPLOAD_WAIT_SECONDS = 120.0
UPLOAD_FORM_SECONDS = 24 * 3600
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class SftpAccess:
    """Where an SFTP task reads or writes, and the only credentials it may use to do so."""

    host: str
    username: str
    port: int = 22
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ImportSftp:
    access: SftpAccess
    file: str | None = None
    path: str | None = None
    filename: str | None = None
    kind: ClassVar[str] = "import/sftp"


@dataclass(frozen=True)
class ExportSftp:
    access: SftpAccess
    file: str | None = None
    path: str | None = None
    kind: ClassVar[str] = "export/sftp"


@dataclass(frozen=True)
class ImportUpload:
    """`slot` names the task's upload form (random, so it cannot be guessed)."""

    slot: str = field(default_factory=lambda: secrets.token_hex(16))
    kind: ClassVar[str] = "import/upload"


def _private_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise StorageError("SFTP private_key is not an unencrypted Ed25519, ECDSA or RSA key")


@contextmanager
def _sftp(access: SftpAccess) -> Iterator[paramiko.SFTPClient]:
    where = f"sftp://{access.host}:{access.port}"
    try:
        sock = socket.create_connection((access.host, access.port),
                                        timeout=CONNECT_TIMEOUT_SECONDS)
    except OSError as exc:
        raise StorageError(f"cannot connect to {where}: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT_SECONDS)
        if access.private_key:
            transport.auth_publickey(access.username, _private_key(access.private_key))
        else:
            transport.auth_password(access.username, access.password or "")
        client = paramiko.SFTPClient.from_transport(transport)
        if client is None:
            raise StorageError(f"{where} opened no SFTP channel")
        yield client
    except paramiko.AuthenticationException as exc:
        raise StorageError(f"{where} refused the credentials for {access.username}") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise StorageError(f"SFTP on {where} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        transport.close()


def read_sftp(spec: ImportSftp, spool: Spool) -> list[FileBlob]:
    """The `file`, or every regular file directly in `path`, as blobs."""
    with _sftp(spec.access) as client:
        if spec.file:
            names = [spec.file]
        else:
            folder = spec.path or "."
            names = [posixpath.join(folder, entry.filename)
                     for entry in client.listdir_attr(folder)
                     if entry.st_mode is not None and entry.st_mode & 0o170000 == 0o100000]
            if not names:
                raise StorageError(f"no files in {folder}")
        blobs: list[FileBlob] = []
        try:
            for name in names:
                try:
                    with client.open(name, "rb") as handle:
                        handle.prefetch()
                        label = spec.filename if spec.filename and spec.file else None
                        blobs.append(spool.blob_from_chunks(label or posixpath.basename(name),
                                                            _chunks(handle)))
                except FileNotFoundError as exc:
                    raise StorageError(f"{name}: no such file") from exc
        except BaseException:
            for blob in blobs:
                spool.discard(blob)
            raise
        return blobs


def _chunks(handle: paramiko.SFTPFile) -> Iterator[bytes]:
    while chunk := handle.read(_READ_CHUNK):
        yield chunk


def write_sftp(spec: ExportSftp, files: list[FileBlob]) -> None:
    """`file` names the one output; `path` is a folder for any number. Folders are not
    created: a missing one fails the task, as a strict server would."""
    if spec.file and len(files) > 1:
        raise StorageError(f"file {spec.file!r} names one file but there are {len(files)}; "
                           "use path")
    with _sftp(spec.access) as client:
        for blob in files:
            target = spec.file or posixpath.join(spec.path or ".", blob.filename)
            try:
                with blob.open() as source, client.open(target, "wb") as handle:
                    handle.set_pipelined(True)
                    while chunk := source.read(_READ_CHUNK):
                        handle.write(chunk)
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc}") from exc


@dataclass
class _Slot:
    expires: int
    blob: FileBlob | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Uploads:
    """The upload forms of `import/upload` tasks and the files posted to them."""

    def __init__(self, spool: Spool, *, max_file_size: int = MAX_UPLOAD_BYTES) -> None:
        self._spool = spool
        self._key = secrets.token_bytes(32)
        self._max = max_file_size
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def _slot(self, slot: str) -> _Slot:
        with self._lock:
            return self._slots.setdefault(slot, _Slot(int(time.time()) + UPLOAD_FORM_SECONDS))

    def _signature(self, slot: str, expires: int) -> str:
        return hmac.new(self._key, f"{slot}:{expires}".encode(), hashlib.sha1).hexdigest()

    def form_parameters(self, slot: str) -> dict[str, Any]:
        found = self._slot(slot)
        return {"expires": found.expires, "max_file_count": 1, "max_file_size": self._max,
                "signature": self._signature(slot, found.expires)}

    def accept(self, slot: str, content_type: str, body: bytes) -> tuple[int, str]:
        """(HTTP status, message) for a form post to `slot`."""
        with self._lock:
            found = self._slots.get(slot)
        if found is None:
            return 404, "Upload form not found."
        if found.done.is_set():
            return 422, "This form has already received its file."
        fields = form_fields(content_type, body)
        if fields is None:
            return 400, "The body is not multipart/form-data."
        expected = {k: str(v) for k, v in self.form_parameters(slot).items()}
        names = [name for name, _, _ in fields]
        if names[:-1] != list(expected) or names[-1:] != ["file"]:
            return 422, ("Send every form parameter as issued, then the file as the last "
                         f"field; got {names}.")
        given = {name: value.decode(errors="replace") for name, _, value in fields[:-1]}
        if not hmac.compare_digest(given["signature"], expected["signature"]) or given != expected:
            return 403, "The form parameters do not match the signed ones."
        if time.time() > found.expires:
            return 403, "The upload form has expired."
        _, filename, data = fields[-1]
        if len(data) > self._max:
            return 413, "The file is larger than max_file_size."
        found.blob = self._spool.blob(filename or "file", data)
        found.done.set()
        return 201, "Uploaded."

    def put(self, slot: str, filename: str, data: bytes) -> tuple[int, str]:
        """(HTTP status, message) for a file sent straight to `slot` by a caller its dialect
        has already authorised (Online-Convert's per-job token)."""
        found = self._slot(slot)
        if found.done.is_set():
            return 422, "This job has already received its file."
        if len(data) > self._max:
            return 413, "The file is larger than max_file_size."
        found.blob = self._spool.blob(filename or "file", data)
        found.done.set()
        return 201, "Uploaded."

    def wait(self, slot: str, timeout: float = UPLOAD_WAIT_SECONDS) -> FileBlob:
        found = self._slot(slot)
        if not found.done.wait(timeout) or found.blob is None:
            raise StorageError(f"no file was uploaded within {timeout:.0f} s")
        return found.blob


def form_fields(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]] | None:
    """(name, filename, value) for each part, in the order sent."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        return None
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        filename = part.get_filename()
        if filename is not None:
            # raw UTF-8 in the header arrives surrogate-escaped
            filename = filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        fields.append((str(name), filename, payload if isinstance(payload, bytes) else b""))
    return fields
