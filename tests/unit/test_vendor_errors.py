"""An adapter's table of vendor exceptions: each raised vendor error becomes ours once, at
the boundary, chained to the vendor's."""

from __future__ import annotations

import pytest

from convbridge.errors import (
    GrantError,
    OutputCollision,
    StaleWrite,
    StorageError,
    VendorError,
    vendor_errors,
)


class Refused(Exception):
    """Stands for an SDK's exception."""


class Conflict(Refused):
    pass


TABLE: tuple[VendorError[str], ...] = (
    VendorError(lambda: Conflict, None, when=lambda call, _: call == "stat"),
    VendorError(lambda: Conflict, lambda call, _: OutputCollision(f"{call}: taken")),
    VendorError(lambda: Refused, lambda call, exc: StorageError(f"cannot {call}: {exc}")),
)


def test_the_first_matching_row_maps_the_vendor_error_from_it() -> None:
    with pytest.raises(OutputCollision, match="write: taken") as caught, \
            vendor_errors(TABLE, "write"):
        raise Conflict("409")
    assert isinstance(caught.value.__cause__, Conflict)

    with pytest.raises(StorageError, match="cannot read: 503") as caught, \
            vendor_errors(TABLE, "read"):
        raise Refused("503")
    assert type(caught.value) is StorageError


def test_a_row_without_ours_drops_the_error_and_the_rest_of_the_block() -> None:
    def lookup() -> str:
        raise Conflict("404")

    answer = "absent"
    with vendor_errors(TABLE, "stat"):
        answer = lookup()
    assert answer == "absent"


def test_our_errors_and_unmapped_ones_pass_unchanged() -> None:
    stale = StaleWrite("changed")
    with pytest.raises(StaleWrite) as caught, vendor_errors(TABLE, "write"):
        raise stale
    assert caught.value is stale
    with pytest.raises(KeyError), vendor_errors(TABLE, "write"):
        raise KeyError("field")


def test_vendor_classes_are_read_only_when_an_error_is_mapped() -> None:
    looked_up: list[str] = []

    def vendor() -> type[BaseException]:
        looked_up.append("looked up")
        return ValueError

    table = (VendorError(vendor, lambda call, exc: GrantError(f"{call}: {type(exc).__name__}")),)
    with vendor_errors(table, "sign"):
        pass
    assert looked_up == []
    with pytest.raises(GrantError, match="sign: ValueError"), vendor_errors(table, "sign"):
        raise ValueError("the key, quoted")
    assert looked_up == ["looked up"]
