"""The one table of grant kinds: what each one hands a provider, and whether it is scoped.

A scoped kind is short-lived and reaches only the job's own objects; every other kind hands
over a long-lived (dedicated) account and is planned only for a rule that says
``hand_over_account: true``. ``convbridge routes`` describes a kind with the words here, the
planner keeps account kinds behind the opt-in, and rules validation offers the kinds a rule may
name as its ``read_grant``.
"""

from __future__ import annotations

from dataclasses import dataclass

from convbridge.model import GrantKind


@dataclass(frozen=True)
class GrantKindInfo:
    #: short-lived and reaching only the job's own objects
    scoped: bool
    #: what the provider is handed to read a source, in ``convbridge routes``
    reads: str
    #: what the provider is handed to write its outputs, in ``convbridge routes``
    writes: str
    #: a rule may ask for it as its ``read_grant``
    rule_read_grant: bool = False


GRANT_KINDS: dict[GrantKind, GrantKindInfo] = {
    "presigned_url": GrantKindInfo(True, "signed URL for the one object",
                                   "signed URL for the output", rule_read_grant=True),
    "sts_session": GrantKindInfo(True, "STS session creds scoped to one object",
                                 "STS session creds scoped to the job's output key",
                                 rule_read_grant=True),
    "sas": GrantKindInfo(True, "SAS for one blob", "create-only SAS for the output blob",
                         rule_read_grant=True),
    "upload": GrantKindInfo(True, "nothing: the bridge uploads the bytes", "nothing"),
    "sftp_account": GrantKindInfo(False, "dedicated SFTP account", "dedicated SFTP account"),
    "gcs_service_account": GrantKindInfo(
        False, "dedicated GCS service-account key (not scoped)",
        "dedicated GCS service-account key (not scoped)"),
}
SCOPED_GRANT_KINDS: frozenset[GrantKind] = frozenset(k for k, i in GRANT_KINDS.items() if i.scoped)
#: grant kinds that hand over a long-lived (dedicated) account instead of a scoped credential
ACCOUNT_GRANT_KINDS: frozenset[GrantKind] = frozenset(
    k for k, i in GRANT_KINDS.items() if not i.scoped)
#: the kinds a rule's ``read_grant`` may name
READ_GRANT_KINDS: frozenset[GrantKind] = frozenset(
    k for k, i in GRANT_KINDS.items() if i.rule_read_grant)
_BY_NAME: dict[str, GrantKindInfo] = {kind: info for kind, info in GRANT_KINDS.items()}


def grant_kind_info(kind: str) -> GrantKindInfo | None:
    """The table's entry for ``kind`` as an adapter spells it, None for a kind not listed."""
    return _BY_NAME.get(kind)
