"""SFTP on a local server (OpenSSH sshd with a chrooted account when root, asyncssh otherwise):
the account in Secrets Manager, its host key pinned in the environment, and the scheduled
EventBridge event that starts a sweep.

SFTP has no events: uploads reach the bridge when the sweep runs. ``event_for`` is the
schedule's event (the key plays no part in it) and ``deliver`` runs the sweep handler, which
waits ``settle_seconds`` to see that files stopped changing. Uploads, reads and listings go over
SFTP with the same account, as a user of the drop would, never through the server's disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import socket
import stat
import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import boto3
import paramiko

from devstack.harness.base import StorageHarness
from devstack.servers_sftp import DROP, SftpServer

if TYPE_CHECKING:
    from devstack.stack import DevStack

REGION = "us-east-1"
ACCOUNT_SECRET = "convbridge/sftp-account"

SFTP_RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: sftp, location: "%(location)s", prefix: inbox/,
            suffixes: [.png, .jpg, .jpeg, .webp]}
    convert: {to: pdf}
    provider: cloudconvert
    read_grant: %(read_grant)s
    max_size_bytes: 10485760
    recursive: %(recursive)s
    ready_marker: %(ready_marker)s
    hand_over_account: %(hand_over_account)s
    outputs: outbox/
    results: results/
    failures: failures/
"""


def scheduled_event(rule_arn: str = "arn:aws:events:us-east-1:123456789012:rule/convbridge-sftp"
                    ) -> dict[str, Any]:
    """An EventBridge ``Scheduled Event``, as a ``rate(...)`` rule delivers it."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": "2026-11-23T12:00:00Z",
            "region": REGION, "resources": [rule_arn], "detail": {}}


class SftpHarness(StorageHarness):
    storage: ClassVar[str] = "sftp"
    trigger_function: ClassVar[str] = "sftp_sweep"
    title: ClassVar[str] = "SFTP (OpenSSH sshd with a chrooted account; asyncssh when not root)"
    delivery: ClassVar[str] = ("scheduled EventBridge event -> SFTP sweep -> claims queue -> "
                               "sweep function")

    def __init__(self, *, server: SftpServer | None = None, settle_seconds: float = 1.0,
                 auth: Literal["key", "password"] = "key", hand_over_account: bool = False,
                 recursive: bool = True, ready_marker: bool = False,
                 pinned_host_key: str | None = None) -> None:
        #: a server passed in belongs to the caller (tests share one); else started here
        self.server = server or SftpServer()
        self._owns_server = server is None
        super().__init__(self.server.location)
        self.settle_seconds = settle_seconds
        self.auth = auth
        self.hand_over_account = hand_over_account
        self.recursive = recursive
        self.ready_marker = ready_marker
        #: what the bridge is told to pin; the server's own key unless a test says otherwise
        self.pinned_host_key = pinned_host_key
        self._client: paramiko.SFTPClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, stack: DevStack) -> None:
        self.server.start()  # a no-op for a shared server that is already running

    def stop(self) -> None:
        if self._client is not None:
            self._client.get_channel().get_transport().close()
            self._client = None
        if self._owns_server:
            self.server.stop()

    def env(self, stack: DevStack) -> dict[str, str]:
        return {
            "CONVBRIDGE_SFTP_SECRET": ACCOUNT_SECRET,
            "CONVBRIDGE_SFTP_HOST_KEY": self.pinned_host_key or self.server.host_public_key,
            "CONVBRIDGE_SFTP_ROOT": DROP,
            "CONVBRIDGE_SFTP_SETTLE_SECONDS": str(self.settle_seconds),
            "CONVBRIDGE_SFTP_SWEEP_MARGIN_SECONDS": "2",
        }

    def seed(self, stack: DevStack) -> None:
        account = {"username": self.server.username}
        if self.auth == "key":
            account["private_key"] = self.server.private_key
        else:
            account["password"] = self.server.password
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=ACCOUNT_SECRET, SecretString=json.dumps(account))

    def default_rules(self, read_grant: str) -> str:
        def flag(value: bool) -> str:
            return "true" if value else "false"

        return SFTP_RULES % {"location": self.location, "read_grant": read_grant,
                             "recursive": flag(self.recursive),
                             "ready_marker": flag(self.ready_marker),
                             "hand_over_account": flag(self.hand_over_account)}

    # -- the drop, as its user sees it ---------------------------------------------------

    def connect(self) -> paramiko.SFTPClient:
        """A new SFTP session of the account (the caller closes it), host key checked."""
        transport = paramiko.Transport(socket.create_connection((self.server.host,
                                                                 self.server.port)))
        transport.start_client(timeout=10)
        offered = transport.get_remote_server_key()
        if offered.get_base64() != self.server.host_public_key.split()[1]:
            transport.close()
            raise RuntimeError("the SFTP test server presented an unexpected host key")
        transport.auth_publickey(self.server.username, paramiko.Ed25519Key.from_private_key(
            io.StringIO(self.server.private_key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client

    @property
    def client(self) -> paramiko.SFTPClient:
        if self._client is None or not self._client.get_channel().get_transport().is_active():
            self._client = self.connect()
        return self._client

    def path(self, key: str) -> str:
        return posixpath.join(DROP, key)

    def makedirs(self, key: str) -> None:
        """Create the folders above ``key``."""
        folder = DROP
        for part in key.split("/")[:-1]:
            folder = f"{folder}/{part}"
            with contextlib.suppress(OSError):  # it exists
                self.client.mkdir(folder)

    def upload(self, key: str, data: bytes) -> None:
        self.makedirs(key)
        with self.client.open(self.path(key), "wb") as handle:
            handle.write(data)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            with self.client.open(self.path(key), "rb") as handle:
                data: bytes = handle.read()
                return data
        except FileNotFoundError:
            return None

    def objects(self, prefix: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        pending = [""]
        while pending:
            folder = pending.pop()
            for item in self.client.listdir_attr(self.path(folder) if folder else DROP):
                key = f"{folder}{item.filename}"
                if stat.S_ISDIR(item.st_mode or 0):
                    pending.append(f"{key}/")
                elif key.startswith(prefix):
                    found[key] = int(item.st_size or 0)
        return found

    def event_for(self, key: str) -> dict[str, Any]:
        return scheduled_event()

    def describe(self, key: str) -> str:
        return f"sftp://{self.location}{DROP}/{key}"
