"""What every storage keeps of the result record's conditional writes, checked against each
storage's real local server by its own test module: a create-only write is refused once a
record exists, a write naming the revision read wins once, and a missing record reads as
None."""

from __future__ import annotations

import json

import pytest

from convbridge.errors import StaleWrite
from convbridge.storage.base import Storage


def check_conditional_record_writes(storage: Storage, location: str) -> None:
    key = "results/once.json"
    storage.write_json(location, key, {"n": 1}, marker="r", if_absent=True)
    with pytest.raises(StaleWrite):
        storage.write_json(location, key, {"n": 2}, marker="r", if_absent=True)
    data, revision = storage.read_revision(location, key) or (b"", "")
    assert json.loads(data) == {"n": 1}
    # replacing exactly what was read, once: a second writer of that revision loses
    storage.write_json(location, key, {"n": 3}, marker="r", if_revision=revision)
    with pytest.raises(StaleWrite):
        storage.write_json(location, key, {"n": 4}, marker="r", if_revision=revision)
    assert json.loads(storage.read_bytes(location, key)) == {"n": 3}
    assert storage.read_revision(location, "results/none.json") is None
