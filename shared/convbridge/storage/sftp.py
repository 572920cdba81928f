"""SFTP drops over paramiko: a pinned host key, one dedicated account, and writes that appear
under their final name only when complete.

The protocol cannot scope a credential to one file, so there is no narrow grant to mint. By
default nothing of the account leaves the bridge: the relay read is an ``upload`` grant (the
bridge pushes the bytes to the provider itself; asked for ``presigned_url``, the pipeline's
last resort, it answers the same) and outputs come back through the relay. Only a rule with
``hand_over_account: true`` gets ``sftp_account`` grants, which hand the provider the account
from Secrets Manager (``CONVBRIDGE_SFTP_SECRET``: ``username`` with ``password`` or
``private_key``); the account should be a dedicated, chrooted one, since it reaches everything
that account can. The server's host key is pinned by
``CONVBRIDGE_SFTP_HOST_KEY`` (a bare ``ssh-ed25519 AAAA...`` key or known_hosts lines) and
checked before the account is used at all, so an impostor never sees a password. Keys map to
paths below ``CONVBRIDGE_SFTP_ROOT`` (default: the login directory); a key with ``.``, ``..`` or
empty segments is refused before any path is built. Versions are ``size:mtime``.

One name never stops a listing: names are read as the server's bytes, and an entry whose name
is not UTF-8, or one ``key_problem`` refuses (control characters such as a newline), is left
where it is with a logged reason while the rest of the folder is listed. The bridge never
follows a symbolic link out of the drop. Listings carry lstat attributes, and links in them
are refused like bad names. A file is read only if it is a regular file by lstat, before and
after opening, and the opened handle's fstat matches. Before a write, rename or delete, the
folders between the root and the key must resolve (realpath) to exactly the path they are named
by, so no folder on the way is a link; writes still go to a temporary name renamed into place.
SFTP v3 opens by name, with neither O_NOFOLLOW nor inode numbers, so one race remains: a link
swapped in between the check and the operation (one round trip) is followed, and a swap that
copies size, mode and times escapes the fstat comparison. Only a holder of the dedicated,
chrooted account can swap entries, and a link it makes reaches nothing that the account
cannot already read and write itself; what the checks stop is a link left in the drop, which is
how a read outside it, or an output that lands in the watched folder, would happen.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import logging
import posixpath
import re
import secrets
import socket
import stat as stat_mode
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from convbridge.errors import (
    ConfigError,
    GrantError,
    OutputCollision,
    StaleWrite,
    StorageError,
    VendorError,
    vendor_errors,
)
from convbridge.model import (
    CLAIM_PREFIX,
    DONE_PREFIX,
    FAILED_PREFIX,
    SOURCE_TAG,
    Grant,
    GrantKind,
    ObjectRef,
    OutputTarget,
)
from convbridge.storage._vendor import VendorModule
from convbridge.storage.base import Storage

if TYPE_CHECKING:
    import paramiko
    import paramiko.hostkeys as _hostkeys
    import paramiko.sftp as _sftp_protocol

    from convbridge.clients import CloudClients
    from convbridge.settings import Settings
else:
    paramiko = VendorModule("paramiko")
    _hostkeys = VendorModule("paramiko.hostkeys")
    _sftp_protocol = VendorModule("paramiko.sftp")

logger = logging.getLogger(__name__)

DEFAULT_PORT = 22
CONNECT_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 256 * 1024
#: listing requests in flight at once (paramiko's listdir_iter sends 50)
READ_AHEAD = 16
#: temporary names of writes in progress; the sweep never takes a file named like this
PARTIAL_PREFIX = ".convbridge-"
PARTIAL_SUFFIX = ".part"
#: key types a pin may name, as the first word of a bare key
KEY_TYPES = frozenset({"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                       "ecdsa-sha2-nistp521"})
#: an RSA key is negotiated as one of its SHA-2 signature algorithms (SHA-1 is refused)
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}

T = TypeVar("T")
#: Unicode's control characters (category Cc) exactly; a listing checks every name, so no
#: per-character category lookup
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: told about every entry a listing leaves out for a reason: (printable name, reason)
Refusal = Callable[[str, str], None]


class HostKeyMismatch(StorageError):
    """The server's host key is not the pinned one; nothing was sent to it."""


@dataclass(frozen=True)
class SftpAccount:
    username: str
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)

    def pkey(self) -> paramiko.PKey:
        for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return kind.from_private_key(io.StringIO(self.private_key or ""))
            except (paramiko.SSHException, ValueError):
                continue
        raise ConfigError("the SFTP secret's private_key is not an unencrypted Ed25519, ECDSA "
                          "or RSA key in OpenSSH or PEM form")


@dataclass(frozen=True)
class Entry:
    """One regular file seen by a listing."""

    key: str
    size: int
    mtime: int
    atime: int

    @property
    def version(self) -> str:
        return f"{self.size}:{self.mtime}"


class PinnedHostKeys:
    """Host keys from configuration: bare keys (pinned for every host this deployment reaches)
    and known_hosts lines (plain or hashed host names, ``[host]:port`` for other ports), one
    per line; a literal ``\\n`` separates lines where the environment cannot hold a newline."""

    def __init__(self, text: str) -> None:
        self._any: list[paramiko.PKey] = []
        self._known = paramiko.HostKeys()
        for number, raw in enumerate(text.replace("\\n", "\n").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                kind, _, rest = line.partition(" ")
                if kind in KEY_TYPES:  # a bare key: "ssh-ed25519 AAAA... comment"
                    blob = base64.b64decode(rest.split()[0], validate=True)
                    self._any.append(paramiko.PKey.from_type_string(kind, blob))
                    continue
                entry = _hostkeys.HostKeyEntry.from_line(line, number)
            except (ValueError, IndexError, paramiko.SSHException) as exc:
                raise ConfigError(f"CONVBRIDGE_SFTP_HOST_KEY line {number} is not a host key "
                                  f"or known_hosts line: {exc}") from exc
            if entry is None:
                raise ConfigError(f"CONVBRIDGE_SFTP_HOST_KEY line {number} is not a host key "
                                  "or known_hosts line")
            for name in entry.hostnames:
                self._known.add(name, entry.key.get_name(), entry.key)
        if not self._any and not self._known.keys():
            raise ConfigError("CONVBRIDGE_SFTP_HOST_KEY holds no host key")

    def expected(self, host: str, port: int) -> list[paramiko.PKey]:
        name = host if port == DEFAULT_PORT else f"[{host}]:{port}"
        found = self._known.lookup(name)
        return [*self._any, *(found.values() if found else [])]

    def check(self, host: str, port: int, offered: paramiko.PKey) -> None:
        expected = self.expected(host, port)
        if not any(offered == key for key in expected):
            raise HostKeyMismatch(
                f"sftp://{host}:{port} presented the {offered.get_name()} host key "
                f"{offered.fingerprint}, which is not the pinned one; refusing to log in "
                "(check CONVBRIDGE_SFTP_HOST_KEY)")


def split_location(location: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (``[v6::addr]:port`` for IPv6)."""
    if location.startswith("["):
        host, _, rest = location[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    host, colon, port = location.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return location, DEFAULT_PORT


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a file below the root, or None. Checked on every path built, so
    no caller can reach outside the drop whatever it was handed."""
    if not key:
        return "empty"
    if key.startswith("/"):
        return "absolute"
    if _CONTROL.search(key):
        return "control characters"
    if any(part in {"", ".", ".."} for part in key.split("/")):
        return "empty, '.' or '..' segments"
    return None


def printable(name: bytes | str) -> str:
    """``name`` fit for a log line: bytes that are not UTF-8 as ``\\xff``, control and other
    unprintable characters escaped, so a name cannot forge or break a line."""
    text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class _Session:
    """One SSH connection and its SFTP channel, used by one thread."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient) -> None:
        self.transport = transport
        self.sftp = sftp
        #: the root as the server resolves it (links in the configured root are the
        #: operator's choice); the folders below it are checked against this
        self.resolved_root: str | None = None

    def close(self) -> None:
        self.sftp.close()
        self.transport.close()


class SftpStorage(Storage):
    name: ClassVar[str] = "sftp"
    #: only ever planned for rules with ``hand_over_account: true`` (see convbridge.planner)
    write_grant_kinds: ClassVar[tuple[GrantKind, ...]] = ("sftp_account",)
    relay_read_kind: ClassVar[GrantKind] = "upload"
    read_grant_kinds: ClassVar[frozenset[GrantKind]] = frozenset(
        {"sftp_account", "presigned_url", "upload"})
    swept: ClassVar[bool] = True
    event_formats: ClassVar[tuple[str, ...]] = ("scheduled sweep (EventBridge schedule)",)

    @classmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> SftpStorage:
        secret_name = settings.required("SFTP_SECRET", "to log in to the SFTP drop")
        pins = PinnedHostKeys(settings.required("SFTP_HOST_KEY",
                                                "to pin the SFTP server's host key"))

        def account() -> SftpAccount:
            secret = clients.secrets.get(secret_name)
            found = SftpAccount(username=secret.field("username"),
                                password=secret.optional("password"),
                                private_key=secret.optional("private_key"))
            if not found.password and not found.private_key:
                raise ConfigError(f"secret {secret_name} needs a password or a private_key")
            return found

        return cls(account=account, host_keys=pins, root=settings.value("SFTP_ROOT", "") or "")

    def __init__(self, *, account: Callable[[], SftpAccount], host_keys: PinnedHostKeys,
                 root: str = "", connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        #: read on every new connection, so a rotated secret is picked up (SecretStore caches)
        self._account = account
        self._pins = host_keys
        # "" is the login folder, "/" the server's root; "drop/" and "drop" are the same
        self.root = root if root in {"", "/"} else root.rstrip("/")
        self._timeout = connect_timeout
        self._local = threading.local()
        self._sessions: list[_Session] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SftpStorage(root={self.root!r})"

    # -- connections ---------------------------------------------------------------------

    def _session(self, location: str) -> _Session:
        sessions: dict[str, _Session] | None = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = {}
        session = sessions.get(location)
        if session is not None and session.transport.is_active():
            return session
        session = sessions[location] = self._connect(location)
        with self._lock:
            self._sessions.append(session)
        return session

    def _connect(self, location: str) -> _Session:
        host, port = split_location(location)
        types = [algorithm for key in self._pins.expected(host, port)
                 for algorithm in _ALGORITHMS.get(key.get_name(), (key.get_name(),))]
        if not types:
            raise HostKeyMismatch(f"no host key is pinned for sftp://{host}:{port}; refusing "
                                  "to connect (set CONVBRIDGE_SFTP_HOST_KEY)")
        where = f"sftp://{host}:{port}"
        with _sftp_errors(_Call(f"cannot reach {where}", "reach")):
            sock = socket.create_connection((host, port), timeout=self._timeout)
        transport = paramiko.Transport(sock)
        try:
            with _sftp_errors(_Call(where, "handshake", pinned=tuple(types))):
                options = transport.get_security_options()
                # offer only the pinned key types, so a server with several host keys presents
                # the one we can check
                options.key_types = tuple(t for t in dict.fromkeys(types)
                                          if t in paramiko.Transport._key_info)
                transport.start_client(timeout=self._timeout)
                self._pins.check(host, port, transport.get_remote_server_key())
                account = self._account()
                if account.private_key:
                    transport.auth_publickey(account.username, account.pkey())
                else:
                    transport.auth_password(account.username, account.password or "")
                sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise StorageError(f"{where} opened no SFTP channel")
        except BaseException:  # ours, a secret that cannot be read, an interrupt: no socket left
            transport.close()
            raise
        return _Session(transport, sftp)

    def close(self) -> None:
        """Close every connection this adapter opened, in any thread."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _run(self, location: str, key: str, action: str,
             work: Callable[[paramiko.SFTPClient, _Session], T]) -> T:
        session = self._session(location)
        with _sftp_errors(_Call(f"cannot {action} sftp://{location}/{key}")):
            answer = work(session.sftp, session)
        return answer

    def path(self, key: str) -> str:
        """The remote path of ``key``, as the account sees it."""
        problem = key_problem(key)
        if problem:
            raise StorageError(f"refusing key {key!r}: {problem}")
        return posixpath.join(self.root, key) if self.root else key

    def _folder(self, prefix: str) -> str:
        folder = prefix.rstrip("/")
        return self.path(folder) if folder else (self.root or ".")

    # -- grants --------------------------------------------------------------------------

    def _account_grant(self, location: str, key: str, prefix: str | None, ttl_seconds: int,
                       what: str) -> Grant:
        host, port = split_location(location)
        account = self._account()
        secret = {"host": host, "port": str(port), "username": account.username}
        if account.private_key:
            secret["private_key"] = account.private_key
        else:
            secret["password"] = account.password or ""
        return Grant(
            kind="sftp_account", storage=self.name, location=location, key=self.path(key),
            # the folder several outputs would share; "..png" has none worth naming
            prefix=self.path(prefix.rstrip("/")) + "/" if prefix and not key_problem(
                prefix.rstrip("/")) else None,
            scope=(f"{what} through the dedicated chrooted account {account.username}@"
                   f"{location} (not scoped by the protocol: it reaches all the account can, "
                   "and does not expire with this grant)"),
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds), secret=secret,
        )

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        """Refused when ``ref`` is a link, or lies in a folder that is one: the provider (or
        the bridge's own upload) would read whatever the link leads to. A missing file passes;
        reading it fails later, as on any storage."""
        if kind not in {"sftp_account", "presigned_url", "upload"}:
            raise GrantError(f"sftp cannot mint a read grant of kind {kind!r}")
        self._run(ref.location, ref.key, "grant a read of",
                  lambda sftp, session: self._regular_file(sftp, session, ref.location, ref.key,
                                                           missing_ok=True))
        if kind == "sftp_account":
            return self._account_grant(ref.location, ref.key, None, ttl_seconds,
                                       self.path(ref.key))
        return Grant(
            kind="upload", storage=self.name, location=ref.location, key=ref.key,
            scope=f"no credential: the bridge uploads sftp://{ref.location}/{ref.key} "
                  "to the provider itself",
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        )

    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        """An output folder that is (or passes through) a link is a GrantError, so the
        pipeline relays instead, and the relay's own write refuses it with a failure report."""
        folder = f"{target.key}/"  # several outputs: the folder named by the output key
        # the provider writes into folders that must exist first; the account can create them
        # too, but not every provider does
        self._makedirs(target.location, target.key, refusal=GrantError)
        return self._account_grant(target.location, target.key, folder, ttl_seconds,
                                   self.path(target.key))

    # -- links ---------------------------------------------------------------------------

    def _folder_resolves(self, sftp: paramiko.SFTPClient, session: _Session, location: str,
                         key: str, *, refusal: type[StorageError] = StorageError) -> bool:
        """Make sure that no folder between the root and ``key`` is a symbolic link: the
        server's realpath of the folder above ``key`` must be the root's plus the folder's own
        name, else ``refusal`` is raised. False when it cannot resolve, because more than its
        last part is missing (OpenSSH's realpath allows a missing last part, resolving what
        leads to it): nothing can be reached through a folder that is not there."""
        folder = posixpath.dirname(key)
        if not folder:
            return True
        if session.resolved_root is None:
            session.resolved_root = sftp.normalize(self.root or ".")
        expected = posixpath.join(session.resolved_root, folder)
        try:
            resolved = sftp.normalize(self.path(folder))
        except FileNotFoundError:
            return False
        except UnicodeDecodeError:
            resolved = "a path that is not UTF-8"
        if resolved != expected:
            raise refusal(_through_a_link(location, key, folder, resolved))
        return True

    def _regular_file(self, sftp: paramiko.SFTPClient, session: _Session, location: str,
                      key: str, *, missing_ok: bool = False, folders: bool = True
                      ) -> paramiko.SFTPAttributes | None:
        """lstat of ``key``, which must be a regular file (in a folder reached without links,
        unless ``folders`` is off because the caller just checked). None for a missing file
        when ``missing_ok``."""
        if folders and not self._folder_resolves(sftp, session, location, key) and missing_ok:
            return None
        try:
            found = sftp.lstat(self.path(key))
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        mode = found.st_mode or 0
        if stat_mode.S_ISLNK(mode):
            raise StorageError(f"refusing sftp://{location}/{key}: it is a symbolic link; the "
                               "bridge never follows links out of the drop")
        if not stat_mode.S_ISREG(mode):
            raise StorageError(f"refusing sftp://{location}/{key}: not a regular file")
        return found

    def _open_if_same(self, sftp: paramiko.SFTPClient, session: _Session, location: str,
                      key: str) -> paramiko.SFTPFile | None:
        """The open file, if lstat before and after opening and the handle's fstat agree;
        None (closed) if they do not."""
        before = self._regular_file(sftp, session, location, key)
        handle = sftp.open(self.path(key), "rb")
        try:
            opened = handle.stat()
            after = self._regular_file(sftp, session, location, key, folders=False)
        except BaseException:
            handle.close()
            raise
        if _same_file(before, opened) and _same_file(opened, after):
            return handle
        handle.close()
        return None

    # -- reading -------------------------------------------------------------------------

    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        """Only a regular file in a folder reached without links, and only if the handle
        opened is that file: lstat before and after opening, and the handle's fstat, must
        agree (see the module's note on the race that remains). A file replaced while it was
        being opened (a record renamed over, say) gets one more try."""

        def open_checked(sftp: paramiko.SFTPClient, session: _Session) -> paramiko.SFTPFile:
            handle = self._open_if_same(sftp, session, location, key)
            if handle is None:  # replaced while it was opened: once more
                handle = self._open_if_same(sftp, session, location, key)
            if handle is None:
                raise StorageError(f"refusing sftp://{location}/{key}: the file opened is not "
                                   "the one listed (it changed, or a link was swapped in, "
                                   "while it was opened)")
            handle.prefetch()
            return handle

        handle = self._run(location, key, "read", open_checked)
        broke_off = _Call(f"read of sftp://{location}/{key} broke off")
        try:
            while True:
                with _sftp_errors(broke_off):
                    chunk = handle.read(READ_CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    def stat(self, location: str, key: str) -> ObjectRef | None:
        """Regular files only: a symlink, folder or device is "no object", so a link planted
        in the drop cannot make the bridge read outside it."""

        def work(sftp: paramiko.SFTPClient, _: _Session) -> ObjectRef | None:
            try:
                found = sftp.lstat(self.path(key))
            except FileNotFoundError:
                return None
            if not stat_mode.S_ISREG(found.st_mode or 0):
                return None
            size, mtime = int(found.st_size or 0), int(found.st_mtime or 0)
            return ObjectRef(storage=self.name, location=location, key=key,
                             version=f"{size}:{mtime}", size=size)

        return self._run(location, key, "stat", work)

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        directory = prefix.rpartition("/")[0] + "/" if "/" in prefix else ""
        for entry in self.scan(location, directory, recursive=True):
            if entry.key.startswith(prefix):
                yield entry.key

    def scan(self, location: str, directory: str, *, recursive: bool,
             skip: Callable[[str], bool] = lambda folder: False,
             refused: Refusal | None = None) -> Iterator[Entry]:
        """Regular files in ``directory`` (a prefix ending in ``/``, or ``""``), in storage
        order; with ``recursive`` also below it, except in folders ``skip`` refuses. Writes
        in progress (the bridge's temporary names) are left out silently. Entries the bridge
        will not take are told to ``refused`` with the reason (by default, logged), and a
        folder among them is not entered: symbolic links, names that are not UTF-8, names
        ``key_problem`` refuses (control characters), and what is neither file nor folder."""

        def refuse(name: bytes | str, reason: str) -> None:
            if refused is None:
                logger.warning("sftp://%s/%s left in the drop: %s", location, printable(name),
                               reason)
            else:
                refused(printable(name), reason)

        pending = [directory]
        while pending:
            current = pending.pop()

            def listing(sftp: paramiko.SFTPClient, _: _Session,
                        current: str = current) -> list[tuple[bytes, paramiko.SFTPAttributes]]:
                try:
                    return _read_folder(sftp, self._folder(current))
                except FileNotFoundError:
                    return []

            for raw, item in self._run(location, current, "list", listing):
                mode = item.st_mode or 0
                if stat_mode.S_ISDIR(mode) and not recursive:
                    continue
                try:
                    key = current + raw.decode("utf-8")
                except UnicodeDecodeError:
                    refuse(current.encode() + raw, "its name is not valid UTF-8")
                    continue
                if stat_mode.S_ISLNK(mode):
                    refuse(key, "a symbolic link (the bridge never follows links)")
                    continue
                if not (stat_mode.S_ISDIR(mode) or stat_mode.S_ISREG(mode)):
                    refuse(key, "neither a regular file nor a folder")
                    continue
                name = key.rpartition("/")[2]
                if name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX):
                    continue
                problem = key_problem(key)
                if problem:
                    refuse(key, f"its name has {problem}")
                elif stat_mode.S_ISDIR(mode):
                    if not skip(f"{key}/"):
                        pending.append(f"{key}/")
                else:
                    yield Entry(key, int(item.st_size or 0), int(item.st_mtime or 0),
                                int(item.st_atime or 0))

    # -- writing -------------------------------------------------------------------------

    def _makedirs(self, location: str, key: str, *,
                  refusal: type[StorageError] = StorageError) -> None:
        """Make the folders above ``key``, never through a link: a realpath and an lstat when
        they all exist (the common case), else each is made in turn and one that exists must
        be a folder, not a link."""
        folder = posixpath.dirname(key)
        if not folder:
            return

        def work(sftp: paramiko.SFTPClient, session: _Session) -> None:
            if self._folder_resolves(sftp, session, location, key, refusal=refusal):
                with contextlib.suppress(FileNotFoundError):
                    if stat_mode.S_ISDIR(sftp.lstat(self.path(folder)).st_mode or 0):
                        return
            parts = folder.split("/")
            for depth in range(1, len(parts) + 1):
                current = "/".join(parts[:depth])
                try:
                    sftp.mkdir(self.path(current))
                except OSError:
                    # exists already (or a racing writer made it): fine if it is a folder
                    mode = sftp.lstat(self.path(current)).st_mode or 0
                    if stat_mode.S_ISLNK(mode):
                        raise refusal(_through_a_link(location, key, current, None)) from None
                    if not stat_mode.S_ISDIR(mode):
                        raise
            # a folder swapped in while they were being made is caught here
            self._folder_resolves(sftp, session, location, key, refusal=refusal)

        self._run(location, key, "create the folders of", work)

    def write_stream(
        self,
        location: str,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        expected_size: int | None = None,
    ) -> int:
        """Written under a temporary name in the same folder and renamed into place with
        ``posix-rename`` (which replaces), so readers see the old file or the whole new one.
        The folder is checked for links before the temporary file is made and again before
        the rename. SFTP keeps no content type or metadata: they are dropped (the loop guard
        relies on prefixes for this storage).

        An output write (SOURCE_TAG in ``metadata``) never replaces a file already under
        ``key``: the rename is then SFTP's plain rename, which OpenSSH performs as link() and
        unlink() and which so fails, atomically, when the name exists. With no metadata to
        tell the same source's earlier output from a file someone else put there, an existing
        file holding exactly the bytes just written (the same output written again, as a
        repeated relay does) counts as written; any other raises OutputCollision and is left
        as it was."""
        return self._write_file(location, key, chunks, expected_size=expected_size,
                                create_only=SOURCE_TAG in (metadata or {}))

    def _write_file(self, location: str, key: str, chunks: Iterable[bytes], *,
                    expected_size: int | None, create_only: bool) -> int:
        path = self.path(key)
        partial = posixpath.join(posixpath.dirname(path),
                                 f"{PARTIAL_PREFIX}{secrets.token_hex(8)}{PARTIAL_SUFFIX}")
        session = self._session(location)

        def create() -> paramiko.SFTPFile:
            self._makedirs(location, key)
            return session.sftp.open(partial, "wbx")

        call = _Call(f"cannot write sftp://{location}/{key}")
        with _sftp_errors(call):
            handle = _again_if_folder_gone(create)
        written = 0
        digest = hashlib.sha256()
        with _sftp_errors(call):
            try:
                with handle:
                    handle.set_pipelined(True)
                    for chunk in chunks:
                        handle.write(chunk)
                        written += len(chunk)
                        if create_only:
                            digest.update(chunk)
                if expected_size is not None and written != expected_size:
                    raise StorageError(f"sftp://{location}/{key}: got {written} bytes, expected "
                                       f"{expected_size}; nothing was written")
                self._folder_resolves(session.sftp, session, location, key)
                if not create_only:
                    session.sftp.posix_rename(partial, path)
                elif not self._rename_if_absent(session, location, key, partial, digest.digest()):
                    raise OutputCollision(f"sftp://{location}/{key} already exists and holds other "
                                          "bytes; it was left as it is")
            except BaseException:
                try:
                    session.sftp.remove(partial)
                except FileNotFoundError:
                    pass  # renamed into place before the trouble, or never made
                except (OSError, EOFError, paramiko.SSHException):
                    logger.warning("could not remove the partial write %s", partial)
                raise
        return written

    def _rename_if_absent(self, session: _Session, location: str, key: str, partial: str,
                          digest: bytes) -> bool:
        """Rename ``partial`` onto ``key`` unless ``key`` exists. True when renamed, or when
        the existing file holds the same bytes (the partial is then removed); False when
        another file is in the way."""
        try:
            session.sftp.rename(partial, self.path(key))
            return True
        except OSError:
            if not _exists(session.sftp, self.path(key)):
                raise  # nothing in the way: the rename failed for another reason
        try:
            existing = hashlib.sha256()
            for chunk in self.read_stream(location, key):
                existing.update(chunk)
        except StorageError:
            return False  # a link, or unreadable: not ours to replace either way
        if existing.digest() != digest:
            return False
        logger.info("sftp://%s/%s already holds these bytes; kept", location, key)
        session.sftp.remove(partial)
        return True

    def put_bytes(
        self,
        location: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        if_revision: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """The revision is a digest of the content. ``if_revision`` is best effort: SFTP has
        no conditional write, so the check (reading the current file) and the rename are two
        steps, and a writer in between can still be overwritten. ``if_absent`` is exact: the
        file is renamed into place with SFTP's plain rename, which refuses an existing name
        (a file already holding exactly these bytes counts as written)."""
        if if_absent and if_revision is None:
            try:
                self._write_file(location, key, [data], expected_size=len(data),
                                 create_only=True)
            except OutputCollision as exc:
                raise StaleWrite(f"sftp://{location}/{key} already exists") from exc
            return _revision(data)
        if if_revision is not None:
            try:
                current = _revision(self.read_bytes(location, key))
            except StorageError:
                current = None
            if current != if_revision:
                raise StaleWrite(f"sftp://{location}/{key} changed since {if_revision}")
        self.write_stream(location, key, [data], expected_size=len(data))
        return _revision(data)

    def read_revision(self, location: str, key: str) -> tuple[bytes, str] | None:
        """The revision ``put_bytes`` matches is the content's digest, not ``stat``'s size and
        time."""
        if self.stat(location, key) is None:
            return None
        try:
            data = self.read_bytes(location, key)
        except StorageError:
            if self.stat(location, key) is None:
                return None
            raise
        return data, _revision(data)

    def delete(self, location: str, key: str) -> None:
        """Removing a link removes the link, never what it leads to; a folder on the way that
        is a link is refused."""

        def work(sftp: paramiko.SFTPClient, session: _Session) -> None:
            if not self._folder_resolves(sftp, session, location, key):
                return
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(self.path(key))

        self._run(location, key, "delete", work)

    def move(self, location: str, key: str, target: str, *, replace: bool) -> bool:
        """Rename ``key`` to ``target`` (creating its folder). Without ``replace`` this is
        SFTP's plain rename, which refuses an existing target, so of two movers of one file
        exactly one succeeds. False if ``key`` is gone or (without ``replace``) ``target``
        exists; with ``replace``, ``posix-rename`` overwrites. A rename moves a link itself,
        never what it leads to; folders of either name that are links are refused."""
        source, destination = self.path(key), self.path(target)

        def rename(sftp: paramiko.SFTPClient, session: _Session) -> None:
            self._makedirs(location, target)
            if not self._folder_resolves(sftp, session, location, key):
                raise FileNotFoundError(source)
            if replace:
                sftp.posix_rename(source, destination)
            else:
                sftp.rename(source, destination)

        def work(sftp: paramiko.SFTPClient, session: _Session) -> bool:
            try:
                _again_if_folder_gone(lambda: rename(sftp, session), sftp, source)
            except FileNotFoundError:
                return False
            except OSError:
                if replace:
                    raise
                # plain rename answers a bare "Failure" when the target exists
                return False
            return True

        return self._run(location, key, "move", work)

    def touch_access_time(self, location: str, key: str, mtime: int) -> None:
        """Set the access time to now and keep ``mtime`` (and so the version): the sweep
        dates a claim this way, since a rename keeps both times. SFTP's setstat follows
        links, so ``key`` must be a regular file reached without links."""

        def work(sftp: paramiko.SFTPClient, session: _Session) -> None:
            self._regular_file(sftp, session, location, key)
            sftp.utime(self.path(key), (time.time(), mtime))

        self._run(location, key, "date", work)

    def after_settle(self, location: str, key: str, status: str) -> None:
        """A claimed source (under ``processing/``) goes to ``done/`` or ``failed/`` under its
        dropped key, replacing an earlier source of the same name there."""
        if not key.startswith(CLAIM_PREFIX):
            return
        target = (DONE_PREFIX if status == "finished" else FAILED_PREFIX) + key[len(CLAIM_PREFIX):]
        try:
            if self.move(location, key, target, replace=True):
                logger.info("moved %s to %s", key, target)
        except StorageError as exc:
            # the records are written; the next sweep moves the source once it can
            logger.warning("could not move %s to %s: %s", key, target, exc)


def _read_folder(sftp: paramiko.SFTPClient, path: str
                 ) -> list[tuple[bytes, paramiko.SFTPAttributes]]:
    """Every entry of the folder ``path`` but ``.`` and ``..``, its name as the server's bytes,
    with lstat attributes (OpenSSH and asyncssh list without following links). paramiko's own
    listings decode every name as strict UTF-8 inside the loop, so one badly named entry fails
    the whole folder; this is its ``listdir_iter`` with the decoding left to the caller, on the
    same request primitives: READ_AHEAD requests in flight, answers taken by request number
    (a server may answer out of order)."""
    kind, message = sftp._request(_sftp_protocol.CMD_OPENDIR, path)
    if kind != _sftp_protocol.CMD_HANDLE:
        raise paramiko.SFTPError("expected a folder handle")
    handle = message.get_binary()
    answers = _Answers()
    entries: list[tuple[bytes, paramiko.SFTPAttributes]] = []
    try:
        waiting = collections.deque(sftp._async_request(answers, _sftp_protocol.CMD_READDIR, handle)
                                    for _ in range(READ_AHEAD))
        ended = False
        while waiting:
            number = waiting.popleft()
            while number not in answers.received:
                sftp._read_response()  # one packet, handed to its request's receiver
            kind, message = answers.received.pop(number)
            if kind == _sftp_protocol.CMD_STATUS:
                try:
                    sftp._convert_status(message)
                except EOFError:  # the end of the folder; later requests end the same way
                    ended = True
                    continue
            if kind != _sftp_protocol.CMD_NAME:
                raise paramiko.SFTPError("expected a list of names")
            for _ in range(message.get_int()):
                name = message.get_binary()
                message.get_binary()  # the "ls -l" line: unused, and as undecodable as the name
                attributes = paramiko.SFTPAttributes._from_msg(message)
                if name not in {b".", b".."}:
                    entries.append((name, attributes))
            if not ended:
                waiting.append(sftp._async_request(answers, _sftp_protocol.CMD_READDIR, handle))
        return entries
    finally:
        sftp._request(_sftp_protocol.CMD_CLOSE, handle)


class _Answers:
    """Receives the answers to a listing's READDIR requests by number (paramiko hands an
    answer to the object its request was registered with)."""

    def __init__(self) -> None:
        self.received: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, kind: int, message: paramiko.Message, number: int) -> None:
        self.received[number] = (kind, message)


#: where in the adapter paramiko raised: opening the socket, the SSH handshake and login, or
#: an SFTP request of an open session
_Step = Literal["reach", "handshake", "request"]


@dataclass(frozen=True)
class _Call:
    """What the adapter asked of the server, as the table below reads it."""

    #: the head of our message: "cannot read sftp://host:22/key", or the server for a
    #: handshake
    doing: str
    step: _Step = "request"
    #: the host key types offered in a handshake, named when the server has none of them
    pinned: tuple[str, ...] = ()


def _host_key_refused(call: _Call, exc: BaseException) -> bool:
    return call.step == "handshake" and "host key" in str(exc).lower()


def _paramiko_failure() -> tuple[type[BaseException], ...]:
    """What paramiko and the socket under it raise for a failed exchange."""
    return (OSError, EOFError, paramiko.SSHException)


#: paramiko's exceptions (and the socket's) as ours, first match first
_SFTP_ERRORS: tuple[VendorError[_Call], ...] = (
    VendorError(lambda: OSError, lambda call, exc: StorageError(f"{call.doing}: {exc}"),
                when=lambda call, _: call.step == "reach"),
    VendorError(lambda: paramiko.AuthenticationException,
                lambda call, _: StorageError(f"{call.doing} refused the account's credentials"),
                when=lambda call, _: call.step == "handshake"),
    VendorError(_paramiko_failure,
                lambda call, _: HostKeyMismatch(
                    f"{call.doing} offers none of the pinned host key types "
                    f"({', '.join(call.pinned)}); refusing"),
                when=_host_key_refused),
    VendorError(_paramiko_failure,
                lambda call, exc: StorageError(f"SSH session to {call.doing} failed: "
                                               f"{type(exc).__name__}: {exc}"),
                when=lambda call, _: call.step == "handshake"),
    VendorError(lambda: UnicodeDecodeError,
                lambda call, _: StorageError(f"{call.doing}: a file name there is not UTF-8"),
                when=lambda call, _: call.step == "request"),
    VendorError(_paramiko_failure,
                lambda call, exc: StorageError(f"{call.doing}: {type(exc).__name__}: {exc}"),
                when=lambda call, _: call.step == "request"),
)


def _sftp_errors(call: _Call) -> contextlib.AbstractContextManager[None]:
    return vendor_errors(_SFTP_ERRORS, call)


def _through_a_link(location: str, key: str, folder: str, target: str | None) -> str:
    leads = f" (it leads to {target})" if target else ""
    return (f"refusing sftp://{location}/{key}: the folder {folder}/ is, or passes through, a "
            f"symbolic link{leads}; the bridge never follows links out of the drop")


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _same_file(one: paramiko.SFTPAttributes | None, other: paramiko.SFTPAttributes | None
               ) -> bool:
    """As near as SFTP v3 can tell (it has no inode numbers): same type, permissions, owner,
    size and modification time."""
    if one is None or other is None:
        return False
    return all(getattr(one, name) == getattr(other, name)
               for name in ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime"))


def _again_if_folder_gone(action: Callable[[], T], sftp: paramiko.SFTPClient | None = None,
                          source: str | None = None) -> T:
    """Run ``action``; if it fails for a missing folder (someone removed it between the check
    that made it and the use), run it once more. With ``source``, a missing ``source`` is the
    answer instead (the file is gone), not a missing folder."""
    try:
        return action()
    except FileNotFoundError:
        if sftp is not None and source is not None:
            try:
                sftp.lstat(source)
            except FileNotFoundError:
                raise
        return action()


def _revision(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]
