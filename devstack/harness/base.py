"""The contract between :class:`devstack.stack.DevStack` and one storage's local server.

DevStack owns what every flow shares (moto for Secrets Manager, DynamoDB and SQS; the provider
sandbox; the webhook behind a local Function URL; queue pollers). A harness owns its storage:
starting its server, the environment the bridge needs to reach it, uploads, reads, listings,
and the trigger event a real deployment would receive for an upload.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from devstack.stack import DevStack


class StorageHarness(ABC):
    #: the rules file's ``match.storage`` name
    storage: ClassVar[str]
    #: ``functions/<trigger_function>/app.py`` receives this storage's events
    trigger_function: ClassVar[str]
    #: for the demo: the storage and its local server, and how uploads reach the trigger
    title: ClassVar[str]
    delivery: ClassVar[str] = "trigger events"

    def __init__(self, location: str) -> None:
        self.location = location

    @abstractmethod
    def start(self, stack: DevStack) -> None:
        """Start the storage server (moto is already up) and create the location."""

    def stop(self) -> None:  # noqa: B027 (optional hook)
        """Stop what ``start`` started."""

    @abstractmethod
    def env(self, stack: DevStack) -> dict[str, str]:
        """Environment variables the bridge needs to reach this storage."""

    def seed(self, stack: DevStack) -> None:  # noqa: B027 (optional hook)
        """Create secrets or other cloud state once the environment is in place."""

    @abstractmethod
    def upload(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def objects(self, prefix: str = "") -> dict[str, int]:
        """Key -> size for everything under ``prefix``."""

    @abstractmethod
    def event_for(self, key: str) -> dict[str, Any]:
        """The event the trigger function would receive for an upload of ``key``."""

    def watch(self, stack: DevStack, prefix: str = "inbox/") -> bool:
        """Arrange for uploads to reach the trigger by themselves, as in a deployment; False
        when the storage cannot, and the caller delivers ``event_for`` each upload."""
        return False

    def load_trigger(self) -> ModuleType:
        """The trigger function's module (its ``handler`` receives this storage's events):
        ``functions/<trigger_function>/app.py``, or a package's own for a storage it adds."""
        from devstack.lambda_local import load_function

        return load_function(self.trigger_function)

    def describe(self, key: str) -> str:
        return f"{self.storage}://{self.location}/{key}"

    def deliver(self, stack: DevStack, event: dict[str, Any]) -> dict[str, Any]:
        """Hand ``event`` to the trigger function, as the cloud would."""
        return stack.invoke_trigger(event)

    def default_rules(self, read_grant: str) -> str:
        return DEFAULT_RULES % {"storage": self.storage, "location": self.location,
                                "read_grant": read_grant}


DEFAULT_RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: %(storage)s, location: %(location)s, prefix: inbox/,
            suffixes: [.png, .jpg, .jpeg, .webp]}
    convert: {to: pdf}
    provider: cloudconvert
    read_grant: %(read_grant)s
    max_size_bytes: 10485760
    outputs: outbox/
    results: results/
    failures: failures/
"""
