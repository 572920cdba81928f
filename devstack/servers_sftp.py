"""A local SFTP server for the demo, the tests and the benchmarks: OpenSSH's sshd with a chrooted
account when this process is root and /usr/sbin/sshd exists (as after ``make servers``), else
asyncssh in this process. Either way it listens on 127.0.0.1 on a free port, has a fresh Ed25519
host key, and serves one account (``username``) by password or by key, whose login folder is
``/drop``. OpenSSH's ChrootDirectory must be root-owned in every component, so the chroot is a
fresh root-owned ``/srv/convbridge-sftp-<random>`` (never /tmp) holding a ``drop`` folder the
account owns. The account is the server's own (``convbridge-sftp-<random>``), made with useradd
and a random password at start and removed at stop: servers started at the same time on one
machine (several test runs) never change each other's password. asyncssh's chroot is only
path mapping, not a security boundary. A server that cannot start raises ServerStartError
saying why, so tests fail rather than skip.

``audit=True`` (OpenSSH only) records every file operation the server performs for the account:
internal-sftp logs them (``-l INFO``) to syslog, which inside the chroot is ``/dev/log``, so the
server binds a datagram socket there and keeps each line. Tests read ``file_operations()`` to
prove which paths were opened, written, renamed or removed, as the server saw them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.servers import LOCALHOST, ServerStartError, free_ports

SSHD = "/usr/sbin/sshd"
#: where useradd and chpasswd live; searched after PATH
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
#: accounts are named USERNAME-<random>, one per server
USERNAME = "convbridge-sftp"
#: the account's login folder, as the account sees it
DROP = "/drop"
START_TIMEOUT_SECONDS = 10.0
#: ports tried before an sshd that keeps losing its port to other servers is reported
PORT_ATTEMPTS = 3
Backend = Literal["auto", "openssh", "asyncssh"]


def new_key() -> tuple[str, str]:
    """(OpenSSH private key text, ``ssh-ed25519 AAAA...`` public line) of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def openssh_available() -> str | None:
    """None when sshd can run here, else why not."""
    if os.geteuid() != 0:
        return "not running as root (sshd's chroot needs root)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (make servers installs openssh-server as root)"
    return None


class SftpServer:
    """One SFTP server: ``start()``/``stop()`` (or ``with``), then ``location``, the account
    (``username``, ``password``, ``private_key``) and ``host_public_key`` to pin. The port is
    chosen at construction, so rules naming the location can be written before it starts."""

    def __init__(self, *, backend: Backend = "auto", port: int | None = None,
                 audit: bool = False) -> None:
        self.requested = backend
        self.audit = audit
        self.backend: str | None = None
        self.host = LOCALHOST
        self.port = port or free_ports(1)[0]
        self._picked_port = port is None
        self.username = f"{USERNAME}-{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(18)
        self.private_key, self.client_public_key = new_key()
        self._host_private, self.host_public_key = new_key()
        #: where the drop lives on this machine (for inspection; clients use SFTP)
        self.drop_path: Path | None = None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: Any = None
        self._connections: list[Any] = []
        self._account_made = False
        self._audit_socket: socket.socket | None = None
        self._audit_lines: list[str] = []
        self._audit_lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """sshd's log (OpenSSH only): connections, logins and refusals."""
        return self._workdir / "sshd.log" if self._workdir and self.backend == "openssh" \
            else None

    def log_text(self) -> str:
        path = self.log_path
        return path.read_text(errors="replace") if path and path.exists() else ""

    def file_operations(self) -> list[str]:
        """internal-sftp's log of the account's file operations so far (``audit=True``), one
        line each, e.g. ``open "/drop/a.png" flags READ mode 0666``; bytes that are not UTF-8
        appear as ``\\xff``. Every operation the client saw answered is in it."""
        if self._audit_socket is None:
            raise RuntimeError("this SFTP server was not started with audit=True")
        with self._audit_lock:
            self._drain_audit()
            return list(self._audit_lines)

    def start(self) -> None:
        if self.backend is not None:
            return
        problem = openssh_available()
        if self.audit and self.requested == "asyncssh":
            raise ServerStartError("audit=True needs OpenSSH (internal-sftp's log)")
        if self.audit or self.requested == "openssh" or (self.requested == "auto"
                                                          and problem is None):
            if problem is not None:
                raise ServerStartError(f"cannot run OpenSSH sshd: {problem}")
            self._start_openssh_on_a_free_port()
            self.backend = "openssh"
        else:
            self._start_asyncssh()
            self.backend = "asyncssh"
        # a test run that dies early must not leave sshd running or a chroot in /srv
        atexit.register(self.stop)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            # sshd serves each connection from a child that outlives the listener (and would
            # hold the deleted chroot): end the ones this server started, by pid
            for pid in _descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        loop, self._loop = self._loop, None
        if loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close_asyncssh(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
        self._listener = None
        audit, self._audit_socket = self._audit_socket, None
        if audit is not None:
            audit.close()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if self._account_made:
            self._account_made = False
            _remove_account(self.username)
        self.backend = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- OpenSSH -------------------------------------------------------------------------

    def _start_openssh_on_a_free_port(self) -> None:
        """sshd binds its port itself, after free_ports() has let it go, and a server starting
        in that moment can take it first: a port this server picked is then picked again."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_openssh()
                return
            except ServerStartError as exc:
                if (not self._picked_port or "Address already in use" not in str(exc)
                        or attempt == PORT_ATTEMPTS):
                    raise
                self.port = free_ports(1)[0]

    def _start_openssh(self) -> None:
        uid, gid = _ensure_account(self.username, self.password)
        self._account_made = True
        Path("/srv").mkdir(mode=0o755, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="convbridge-sftp-", dir="/srv"))
        self._workdir = workdir
        try:
            # every component of a ChrootDirectory must be root-owned and not group/other
            # writable; only the drop inside it belongs to the account
            workdir.chmod(0o755)
            chroot = workdir / "chroot"
            chroot.mkdir(mode=0o755)
            drop = chroot / DROP.strip("/")
            drop.mkdir(mode=0o755)
            os.chown(drop, uid, gid)
            self.drop_path = drop
            if self.audit:
                self._listen_for_audit(chroot)
            etc = workdir / "etc"
            etc.mkdir(mode=0o700)
            host_key = etc / "host_ed25519"
            host_key.write_text(self._host_private)
            host_key.chmod(0o600)
            # sshd reads authorized keys as the account: world-readable, outside etc/
            keys = workdir / "authorized_keys"
            keys.write_text(self.client_public_key + "\n")
            keys.chmod(0o644)
            config = etc / "sshd_config"
            config.write_text(_SSHD_CONFIG.format(
                host_key=host_key, keys=keys, user=self.username, chroot=chroot, drop=DROP,
                sftp_log="-l INFO " if self.audit else ""))
            # privilege separation directory, absent until sshd was run once
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            log = workdir / "sshd.log"
            with open(log, "wb") as stderr:
                self._process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config), "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
            self._wait_for_banner(lambda: self._process is not None
                                  and self._process.poll() is None, log)
        except BaseException:
            self.stop()
            raise

    def _listen_for_audit(self, chroot: Path) -> None:
        """syslog's socket inside the chroot, where the account's internal-sftp logs to; read
        continuously, since a full socket queue would make the server wait on its log."""
        dev = chroot / "dev"
        dev.mkdir(mode=0o755)
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(dev / "log"))
        (dev / "log").chmod(0o666)  # the account's sftp session writes to it
        receiver.setblocking(False)
        self._audit_socket = receiver

        def collect() -> None:
            while self._audit_socket is receiver:
                with contextlib.suppress(OSError, ValueError):
                    select.select([receiver], [], [], 0.2)
                with self._audit_lock:
                    if self._audit_socket is not receiver:
                        return
                    self._drain_audit()

        threading.Thread(target=collect, name="sftp-audit", daemon=True).start()

    def _drain_audit(self) -> None:
        """Move what the socket holds into the lines (under the audit lock, so the order is
        the server's): ``<190>Dec  1 21:33:11 internal-sftp[6553]: open "..."``."""
        receiver = self._audit_socket
        while receiver is not None:
            try:
                datagram = receiver.recv(65536)
            except (BlockingIOError, OSError):
                return
            text = datagram.decode("utf-8", "backslashreplace").rstrip("\n")
            self._audit_lines.append(text.partition("]: ")[2] or text)

    def _wait_for_banner(self, alive: Any, log: Path | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if not alive():
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise ServerStartError(f"the SFTP server ({self.requested}) exited before "
                                       f"listening on {self.location}:\n{tail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"the SFTP server did not answer on {self.location} "
                                       f"within {START_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.05)

    # -- asyncssh ------------------------------------------------------------------------

    async def _close_asyncssh(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        for connection in self._connections:
            connection.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_asyncssh(self) -> None:
        try:
            import asyncssh
        except ImportError as exc:
            raise ServerStartError(
                f"no SFTP server can start: OpenSSH unavailable ({openssh_available()}) and "
                f"asyncssh is not installed ({exc})") from exc
        # asyncssh logs every connection at INFO; the demo and tests print their own summaries
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        workdir = Path(tempfile.mkdtemp(prefix="convbridge-sftp-"))
        self._workdir = workdir
        drop = workdir / DROP.strip("/")
        drop.mkdir()
        self.drop_path = drop
        server = self
        client_key = asyncssh.import_public_key(self.client_public_key)

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: Any) -> None:
                server._connections.append(conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                return username == server.username and secrets.compare_digest(
                    password, server.password)

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: Any) -> bool:
                return bool(username == server.username and key == client_key)

        def sftp(chan: Any) -> Any:
            return asyncssh.SFTPServer(chan, chroot=str(workdir).encode())

        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def listen() -> None:
            try:
                self._listener = await asyncssh.listen(
                    self.host, self.port, server_factory=Server, sftp_factory=sftp,
                    server_host_keys=[asyncssh.import_private_key(self._host_private)],
                    allow_scp=False)
            except BaseException as exc:  # reported by start()
                failure.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.create_task(listen())
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="sftp-asyncssh", daemon=True)
        self._thread.start()
        ready.wait(START_TIMEOUT_SECONDS)
        if failure or self._listener is None:
            self.stop()
            raise ServerStartError(f"asyncssh could not listen on {self.location}: "
                                   f"{failure[0] if failure else 'timed out'}")


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the command name may hold spaces and parentheses; fields follow the last ")"
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def _ensure_account(username: str, password: str) -> tuple[int, int]:
    """The account's uid and gid, creating it (no home, no shell) when missing; the password
    is set on every start, which also unlocks it (sshd refuses locked accounts even for keys)."""
    try:
        found = pwd.getpwnam(username)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--home-dir", DROP, "--shell",
              "/usr/sbin/nologin", username])
        found = pwd.getpwnam(username)
    _run(["chpasswd"], f"{username}:{password}\n")
    return found.pw_uid, found.pw_gid


def _remove_account(username: str) -> None:
    """userdel, best effort: a stop must finish even if the account is already gone."""
    with contextlib.suppress(ServerStartError):
        _run(["userdel", username])


def _run(command: list[str], stdin: str | None = None) -> None:
    # account tools live in the sbin folders, which a minimal PATH (CI's) may leave out
    found = shutil.which(command[0], path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")
    command = [found or command[0], *command[1:]]
    try:
        subprocess.run(command, input=stdin, text=True, capture_output=True, check=True,
                       timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise ServerStartError(f"{command[0]} failed: {detail}") from exc


_SSHD_CONFIG = """\
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
UsePAM no
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {keys}
StrictModes no
AllowUsers {user}
MaxStartups 200
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match User {user}
  ChrootDirectory {chroot}
  ForceCommand internal-sftp {sftp_log}-d {drop}
  AllowTcpForwarding no
  X11Forwarding no
  PermitTTY no
"""
