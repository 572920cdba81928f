"""Properties of the SFTP sweep over generated drops on a real OpenSSH server (chrooted account,
``audit=True`` so internal-sftp logs every file operation it performs): whatever the drop holds
(names that are not UTF-8 or hold control characters, dots and spaces, regular files, folders,
links to files and folders inside and outside the drop, an output folder that is a link), a sweep
never fails as a whole, never reads a file outside the drop or through a link, never writes
outside the drop, and claims and queues every good file exactly once, walking the drop in
windows of three files from its cursor. 25 examples, each a fresh drop folder below ``/drop``
on one server. A server that cannot start fails this test; it never
skips."""

from __future__ import annotations

import itertools
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import StorageError
from convbridge.rules import parse_rules
from convbridge.storage.sftp import PinnedHostKeys, SftpAccount, SftpStorage, printable
from convbridge.triggers.sftp_claims import ClaimMessage, SendOutcome, parse_claim
from convbridge.triggers.sftp_sweep import CURSOR_KEY, SweepSettings, sweep
from devstack.servers_sftp import DROP, SftpServer

EXAMPLES = 25
RULES = """
version: 1
rules:
  - name: drop
    match: {{storage: sftp, location: "{location}", prefix: inbox/, suffixes: [.png]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    recursive: true
    outputs: outbox/
    results: results/
    failures: failures/
"""
FileKind = Literal["file", "folder", "link_inside", "link_outside", "link_secret"]
FolderKind = Literal["dir", "link_inside", "link_outside"]
OutputKind = Literal["absent", "dir", "link_inbox", "link_outside"]

# names as bytes: plain ones (dots, spaces, a non-ASCII letter), ones that are not UTF-8, and
# ones with control characters
_PLAIN = st.text(alphabet="abXY09 .-_ü", min_size=1, max_size=6)
NAMES = st.one_of(
    _PLAIN.map(str.encode),
    st.tuples(_PLAIN, st.sampled_from([b"\xff", b"\xe9", b"\xc3(", b"\x80"])).map(
        lambda parts: parts[0].encode() + parts[1]),
    st.tuples(_PLAIN, st.sampled_from(["\n", "\r", "\t", "\x01", "\x1b", "\x7f"])).map(
        lambda parts: (parts[0] + parts[1]).encode()),
)
FOLDER_NAMES = NAMES.filter(lambda name: name not in {b".", b".."})


@dataclass(frozen=True)
class Layout:
    folders: list[tuple[bytes, FolderKind]]
    #: (index into folders or None for inbox itself, name without ".png", kind)
    files: list[tuple[int | None, bytes, FileKind]]
    outbox: OutputKind
    results: OutputKind


LAYOUTS = st.builds(
    Layout,
    folders=st.lists(st.tuples(FOLDER_NAMES, st.sampled_from(["dir", "link_inside",
                                                                "link_outside"])),
                     max_size=3, unique_by=lambda folder: folder[0]),
    files=st.lists(st.tuples(st.none() | st.integers(0, 2), NAMES,
                             st.sampled_from(["file", "file", "folder", "link_inside",
                                              "link_outside", "link_secret"])),
                   min_size=1, max_size=8),
    outbox=st.sampled_from(["absent", "dir", "link_inbox", "link_outside"]),
    results=st.sampled_from(["absent", "dir", "link_inbox", "link_outside"]),
)


def good_name(name: bytes) -> bool:
    """The oracle: a name the bridge must take (valid UTF-8, no control characters, no
    '.'/'..'), written independently of the code under test."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text not in {".", ".."} and not any(unicodedata.category(c) == "Cc" for c in text)


@dataclass
class Drop:
    """One example's drop on the server's disk, as the chrooted account sees it and here."""

    number: int
    chroot: Path
    uid: int
    gid: int
    good: dict[str, bytes] = field(default_factory=dict)  # key -> content
    #: paths (as the account sees them) that are links; nothing may be done at or below one
    links: list[bytes] = field(default_factory=list)
    #: what the sweep must report as left in the drop, as it shows names
    refused: set[str] = field(default_factory=set)
    #: content the bridge must never read
    forbidden: list[bytes] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"{DROP}/ex-{self.number}"

    def local(self, path: bytes | str) -> bytes:
        """The machine's path of ``path`` as the account sees it (inside the chroot)."""
        raw = path.encode() if isinstance(path, str) else path
        return bytes(self.chroot) + raw

    def make_folder(self, path: bytes | str) -> None:
        os.makedirs(self.local(path), exist_ok=True)
        os.chown(self.local(path), self.uid, self.gid)

    def make_file(self, path: bytes | str, data: bytes) -> None:
        with open(self.local(path), "wb") as handle:
            handle.write(data)
        os.chown(self.local(path), self.uid, self.gid)
        os.utime(self.local(path), (1_000_000, 1_000_000))

    def make_link(self, target: str, path: bytes | str) -> None:
        # an absolute target, resolved by sftp-server inside its chroot
        os.symlink(target, self.local(path))
        os.lchown(self.local(path), self.uid, self.gid)
        self.links.append(path.encode() if isinstance(path, str) else path)

    def outside(self) -> dict[bytes, tuple[bytes, float]]:
        """Everything the bridge must not touch: the files outside this drop that links lead
        to, and the file inside it that links lead to, with their content and mtime."""
        found = {}
        for top in (self.local(f"{DROP}/outside-{self.number}"), self.local("/private"),
                    self.local(f"{self.root}/elsewhere")):
            for folder, _, names in os.walk(top):
                for name in names:
                    path = os.path.join(folder, name)
                    with open(path, "rb") as handle:
                        found[path] = (handle.read(), os.lstat(path).st_mtime)
        return found


def build(layout: Layout, drop: Drop) -> None:
    n, root = drop.number, drop.root
    secret, outside = f"/private/secret-{n}.png", f"{DROP}/outside-{n}"
    inside = f"{root}/elsewhere"
    drop.make_folder(root)
    drop.make_folder("/private")
    os.chown(drop.local("/private"), 0, 0)  # beside the drop, the account's only by reading
    drop.make_file(secret, b"SECRET-%d" % n)
    drop.make_folder(outside)
    drop.make_file(f"{outside}/planted.png", b"OUTSIDE-%d" % n)
    drop.make_folder(inside)
    drop.make_file(f"{inside}/inside.png", b"INSIDE-%d" % n)
    drop.forbidden += [b"SECRET-%d" % n, b"OUTSIDE-%d" % n, b"INSIDE-%d" % n]
    drop.make_folder(f"{root}/inbox")
    folders: list[tuple[bytes, FolderKind]] = []
    for name, kind in layout.folders:
        path = f"{root}/inbox/".encode() + name
        if kind == "dir":
            drop.make_folder(path)
        else:
            drop.make_link(inside if kind == "link_inside" else outside, path)
        if kind != "dir" or not good_name(name):
            drop.refused.add(printable(b"inbox/" + name))
        folders.append((name, kind))
    seen: set[bytes] = set()
    for index, name, kind in layout.files:
        folder = folders[index] if index is not None and index < len(folders) else None
        if folder is not None and folder[1] != "dir":
            folder = None  # a link's target holds its own planted files
        relative = (folder[0] + b"/" if folder else b"") + name + b".png"
        if relative in seen:
            continue
        seen.add(relative)
        path = f"{root}/inbox/".encode() + relative
        listed = folder is None or good_name(folder[0])  # a refused folder is not entered
        if listed and (kind != "file" or not good_name(name + b".png")) and not (
                kind == "folder" and good_name(name + b".png")):
            drop.refused.add(printable(b"inbox/" + relative))
        if kind == "file":
            content = b"GOOD:" + relative
            drop.make_file(path, content)
            if listed and good_name(name + b".png"):
                drop.good["inbox/" + relative.decode()] = content
        elif kind == "folder":
            drop.make_folder(path)
        else:
            drop.make_link({"link_inside": f"{inside}/inside.png",
                            "link_outside": f"{outside}/planted.png",
                            "link_secret": secret}[kind], path)
    for name, kind in (("outbox", layout.outbox), ("results", layout.results)):
        if kind == "dir":
            drop.make_folder(f"{root}/{name}")
        elif kind != "absent":
            drop.make_link(f"{root}/inbox" if kind == "link_inbox" else outside,
                           f"{root}/{name}")


@pytest.fixture(scope="module")
def server() -> Iterator[SftpServer]:
    with SftpServer(backend="openssh", audit=True) as running:
        yield running


NUMBERS = itertools.count()
QUOTED = re.compile(r'"([^"]*)"')
#: OpenSSH's log escapes (strnvis, VIS_SAFE | VIS_OCTAL | VIS_CSTYLE as seen): \\, \n, \ooo
_VIS = re.compile(rb"\\([0-7]{3}|.)")
_CSTYLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"a": b"\a", b"v": b"\v",
           b"f": b"\f", b"e": b"\x1b", b"s": b" ", b"0": b"\0", b"\\": b"\\"}


def logged_paths(line: str) -> list[bytes]:
    """The quoted paths of one internal-sftp log line, as the bytes they name."""
    def unvis(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return bytes([int(code, 8)]) if len(code) == 3 else _CSTYLE[code]

    return [_VIS.sub(unvis, quoted.encode()) for quoted in QUOTED.findall(line)]


@settings(max_examples=EXAMPLES, deadline=None)
@given(layout=LAYOUTS)
def test_any_drop_is_swept_without_leaving_it(server: SftpServer, layout: Layout) -> None:
    """25 generated drops (see the module docstring)."""
    assert server.drop_path is not None
    owner = server.drop_path.stat()
    drop = Drop(next(NUMBERS), server.drop_path.parent, owner.st_uid, owner.st_gid)
    build(layout, drop)
    before = drop.outside()
    account = SftpAccount(username=server.username, private_key=server.private_key)
    storage = SftpStorage(account=lambda: account,
                          host_keys=PinnedHostKeys(server.host_public_key), root=drop.root)
    bridge: Any = SimpleNamespace(rules=parse_rules(RULES.format(location=server.location)),
                                  storage=lambda name: storage)
    read: dict[str, bytes] = {}
    refused_writes: list[str] = []

    class Relay:
        """The claims queue and its consumer on the relay route, per message: read the
        claimed file (the upload), write its output and a record, and the webhook's move to
        done/."""

        def send(self, claims: Sequence[ClaimMessage]) -> SendOutcome:
            for claim in (parse_claim(c.body()) for c in claims):
                try:
                    data = b"".join(storage.read_stream(claim.location, claim.key))
                except StorageError:
                    continue
                read[claim.key] = data
                relative = claim.key.removeprefix("processing/inbox/")
                for key in (f"outbox/{relative}.out", f"results/{relative}.json"):
                    try:
                        storage.write_stream(claim.location, key, [data])
                    except StorageError as exc:
                        refused_writes.append(f"{key}: {exc}")
                storage.after_settle(claim.location, claim.key, "finished")
            return SendOutcome(sent=tuple(claims))

    logged = len(server.file_operations())
    # each run ends (its margin reached) after two claims, leaving a cursor for the next
    config = SweepSettings(settle_seconds=0, margin_seconds=1, window_files=3)
    claims_this_run = [0]
    touch = storage.touch_access_time

    def counted(location: str, key: str, mtime: int) -> None:
        claims_this_run[0] += 1
        touch(location, key, mtime)

    storage.touch_access_time = counted  # type: ignore[method-assign]
    reports = []
    try:
        for _ in range(len(layout.files) + 3):
            claims_this_run[0] = 0
            reports.append(sweep(bridge, config=config, sleep=lambda _: None,
                                 wall_clock=time.time, queue=Relay(),
                                 remaining_ms=lambda: 5000 if claims_this_run[0] < 2 else 0))
            if reports[-1].cursors == {server.location: ""} and len(reports) > 1 and (
                    not reports[-1].claimed):
                break  # a whole pass that found nothing left to claim
    finally:
        storage.close()
    operations = server.file_operations()[logged:]

    # never fails as a whole, and every good file is claimed exactly once
    assert all(report.errors == [] for report in reports)
    assert Counter(key for report in reports for key in report.claimed) == Counter(
        f"processing/{key}" for key in drop.good)
    # what was read is exactly the good files, each its own bytes
    assert read == {f"processing/{key}": content for key, content in drop.good.items()}
    assert not any(secret in data for data in read.values() for secret in drop.forbidden)
    # the server did nothing outside this drop, and nothing at or through a link
    root = drop.root.encode() + b"/"
    assert operations, "the audit log is empty: this test would prove nothing"
    for line in operations:
        for path in logged_paths(line):
            assert path.startswith(root), line
            for link in drop.links:
                assert path != link and not path.startswith(link + b"/"), (line, link)
        if line.startswith("open ") and "flags READ" in line:
            [path] = logged_paths(line)
            if path == root + CURSOR_KEY.encode():
                continue  # the sweep's own cursor
            assert path.removeprefix(root + b"processing/").decode() in drop.good, line
    # what links lead to is unchanged, and outputs exist only in a real output folder
    assert drop.outside() == before
    for top in (drop.root, f"{DROP}/outside-{drop.number}", "/private"):
        for folder, _, names in os.walk(drop.local(top)):
            for name in names:
                if name.endswith((b".out", b".json")):
                    path = os.path.realpath(os.path.join(folder, name))
                    if path == drop.local(f"{drop.root}/{CURSOR_KEY}"):
                        continue  # the sweep's own cursor, in its own folder
                    assert path.startswith((drop.local(f"{drop.root}/outbox/"),
                                            drop.local(f"{drop.root}/results/"))), path
    blocked = [name for name, kind in (("outbox", layout.outbox), ("results", layout.results))
               if kind.startswith("link")]
    if drop.good:
        for name in blocked:
            assert any(w.startswith(f"{name}/") and "symbolic link" in w
                       for w in refused_writes), (name, refused_writes)
    assert all(w.split("/", 1)[0] in blocked for w in refused_writes), refused_writes
    # every good file went on to done/; everything else was left where it was
    for key in drop.good:
        assert os.path.isfile(drop.local(f"{drop.root}/done/{key}")), key
        assert not os.path.lexists(drop.local(f"{drop.root}/{key}")), key
    for link in drop.links:
        assert os.path.islink(drop.local(link)), link
    # each entry left behind was reported with a reason, and no good one was
    refused = {name for report in reports for name in report.refused}
    assert refused == drop.refused
    assert not set(drop.good) & refused
