"""The SFTP storage adapter against real SFTP servers: OpenSSH's sshd with a chrooted account
(when root) and asyncssh, each started fresh. Host-key pinning, atomic writes, claims by rename,
key refusal and grants. A server that cannot start fails these tests; it never skips them."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest

from convbridge.errors import GrantError, OutputCollision, StaleWrite, StorageError
from convbridge.model import OUTPUT_MARKER, SOURCE_TAG, ObjectRef, OutputTarget, source_tag
from convbridge.storage.sftp import (
    HostKeyMismatch,
    PinnedHostKeys,
    SftpAccount,
    SftpStorage,
)
from devstack.servers_sftp import DROP, SftpServer, new_key, openssh_available
from tests.conditional_writes import check_conditional_record_writes

BACKENDS = ["openssh", "asyncssh"] if openssh_available() is None else ["asyncssh"]


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[SftpServer]:
    with SftpServer(backend=request.param) as running:
        yield running


def storage_for(server: SftpServer, *, pins: str | None = None, password: bool = False
                ) -> SftpStorage:
    account = SftpAccount(username=server.username,
                          password=server.password if password else None,
                          private_key=None if password else server.private_key)
    return SftpStorage(account=lambda: account,
                       host_keys=PinnedHostKeys(pins or server.host_public_key), root=DROP)


def test_a_server_without_a_pinned_key_is_refused_before_login(server: SftpServer) -> None:
    _, other = new_key()
    seen_before = len(server.log_text())
    wrong = storage_for(server, pins=other, password=True)
    with pytest.raises(HostKeyMismatch, match="not the pinned one") as refused:
        wrong.stat(server.location, "inbox/a.png")
    assert server.password not in str(refused.value)
    with pytest.raises(HostKeyMismatch):
        list(wrong.read_stream(server.location, "inbox/a.png"))
    # pinned to a key type the server does not have: refused as well, not downgraded
    ecdsa = paramiko.ECDSAKey.generate()
    with pytest.raises(HostKeyMismatch, match="none of the pinned host key types"):
        storage_for(server, pins=f"ecdsa-sha2-nistp256 {ecdsa.get_base64()}").stat(
            server.location, "x")
    if server.backend == "openssh":
        time.sleep(0.2)
        log = server.log_text()[seen_before:]
        assert "Connection from" in log
        assert "Accepted" not in log and "Failed" not in log  # no credential was ever offered


def test_known_hosts_lines_plain_and_hashed_are_pinned(server: SftpServer) -> None:
    kind, blob = server.host_public_key.split()[:2]
    name = f"[{server.host}]:{server.port}"
    hashed = paramiko.HostKeys.hash_host(name)
    other = new_key()[1]
    for pins in (f"{name} {kind} {blob}", f"{hashed} {kind} {blob}",
                 f"# pinned\nother.example {other}\n{name} {kind} {blob}"):
        assert storage_for(server, pins=pins).stat(server.location, "missing") is None
    # a line for another host (or another port) pins nothing here
    with pytest.raises(HostKeyMismatch, match="no host key is pinned"):
        storage_for(server, pins=f"{server.host} {kind} {blob}").stat(server.location, "x")


@pytest.mark.parametrize("password", [True, False], ids=["password", "private_key"])
def test_writes_appear_whole_or_not_at_all(server: SftpServer, password: bool) -> None:
    drop = storage_for(server, password=password)
    location = server.location
    seen_during: list[ObjectRef | None] = []

    def slow() -> Iterator[bytes]:
        yield b"a" * 70_000
        # mid-write, from another connection: nothing under the final name yet
        seen_during.append(drop_view.stat(location, "out/deep/file.bin"))
        yield b"b" * 30_000

    drop_view = storage_for(server)  # another connection, as another reader would be
    written = drop.write_stream(location, "out/deep/file.bin", slow(), expected_size=100_000)
    assert written == 100_000 and seen_during == [None]
    found = drop.stat(location, "out/deep/file.bin")
    assert found is not None and found.size == 100_000
    assert found.version is not None and found.version.startswith("100000:")
    assert drop.read_bytes(location, "out/deep/file.bin") == b"a" * 70_000 + b"b" * 30_000
    # a short stream leaves neither the file nor its temporary name behind
    with pytest.raises(StorageError, match="expected 10"):
        drop.write_stream(location, "out/short.bin", [b"12345"], expected_size=10)
    assert drop.stat(location, "out/short.bin") is None
    assert list(drop.list_keys(location, "out/")) == ["out/deep/file.bin"]
    # replacing is atomic too (posix-rename onto the old file)
    drop.write_stream(location, "out/deep/file.bin", [b"new"])
    assert drop.read_bytes(location, "out/deep/file.bin") == b"new"


def test_conditional_record_writes_are_best_effort_but_catch_a_changed_record(
        server: SftpServer) -> None:
    drop = storage_for(server)
    first = drop.put_bytes(server.location, "results/a.json", b'{"status": "submitting"}',
                           content_type="application/json", metadata={})
    drop.put_bytes(server.location, "results/a.json", b'{"status": "finished"}',
                   content_type="application/json", metadata={})
    with pytest.raises(StaleWrite):
        drop.put_bytes(server.location, "results/a.json", b'{"status": "submitted"}',
                       content_type="application/json", metadata={}, if_revision=first)
    assert drop.read_bytes(server.location, "results/a.json") == b'{"status": "finished"}'


def test_claims_by_rename_have_exactly_one_winner(server: SftpServer) -> None:
    location = server.location
    drop = storage_for(server)
    drop.write_stream(location, "inbox/a.png", [b"x"])
    drop.write_stream(location, "processing/inbox/b.png", [b"old"])
    drop.write_stream(location, "inbox/b.png", [b"new"])
    winners = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        mine = storage_for(server)
        barrier.wait()
        winners.append(mine.move(location, "inbox/a.png", "processing/inbox/a.png",
                                 replace=False))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(winners) == [False, False, False, True]
    # a claim never overwrites an earlier claim of the same name
    assert drop.move(location, "inbox/b.png", "processing/inbox/b.png", replace=False) is False
    assert drop.read_bytes(location, "processing/inbox/b.png") == b"old"
    drop.after_settle(location, "processing/inbox/b.png", "finished")
    drop.after_settle(location, "processing/inbox/a.png", "failed")
    assert sorted(drop.list_keys(location, "")) == ["done/inbox/b.png", "failed/inbox/a.png",
                                                    "inbox/b.png"]


def test_keys_that_would_leave_the_drop_are_refused_before_any_io(server: SftpServer) -> None:
    drop = storage_for(server)
    for key in ("../etc/passwd", "inbox/../../x", "/etc/passwd", "a//b", "a/./b", "inbox/",
                "bad\x00name", ""):
        with pytest.raises(StorageError, match="refusing key"):
            drop.stat(server.location, key)
        with pytest.raises(StorageError, match="refusing key"):
            drop.write_stream(server.location, key, [b"x"])
    # names that only look odd are files like any other
    for key in ("-rf", "--help.png", "..png", "a..b", " lead and trail ", "ünï/çødé.png"):
        drop.write_stream(server.location, f"odd/{key}", [key.encode()])
        assert drop.read_bytes(server.location, f"odd/{key}") == key.encode()
    assert len(list(drop.list_keys(server.location, "odd/"))) == 6


def test_links_and_folders_are_not_objects(server: SftpServer) -> None:
    drop = storage_for(server)
    drop.write_stream(server.location, "inbox/real.png", [b"x"])
    client = drop._session(server.location).sftp
    client.symlink(f"{DROP}/inbox/real.png", f"{DROP}/inbox/link.png")
    client.mkdir(f"{DROP}/inbox/folder.png")
    assert drop.stat(server.location, "inbox/link.png") is None
    assert drop.stat(server.location, "inbox/folder.png") is None
    found = [entry.key for entry in drop.scan(server.location, "inbox/", recursive=True)]
    assert found == ["inbox/real.png"]


def test_grants_hand_over_the_account_only_when_asked(server: SftpServer) -> None:
    drop = storage_for(server, password=True)
    ref = ObjectRef("sftp", server.location, "inbox/a.png")
    relay = drop.grant_read(ref, 900)
    assert relay.kind == "upload" and not relay.secret and relay.url is None
    account = drop.grant_read(ref, 900, kind="sftp_account")
    assert account.kind == "sftp_account" and account.key == f"{DROP}/inbox/a.png"
    assert dict(account.secret) == {"host": server.host, "port": str(server.port),
                                    "username": server.username, "password": server.password}
    assert "not scoped by the protocol" in account.scope
    assert server.password not in repr(account) and server.password not in account.scope
    write = drop.grant_write(OutputTarget("sftp", server.location, "outbox/new/a.png.pdf"), 900)
    # several outputs go into the folder named by the output key itself (the naming scheme)
    assert (write.key, write.prefix) == (f"{DROP}/outbox/new/a.png.pdf",
                                         f"{DROP}/outbox/new/a.png.pdf/")
    assert drop.stat(server.location, "outbox/new") is None  # the folder exists ...
    assert drop._session(server.location).sftp.stat(f"{DROP}/outbox/new")  # ... as a folder
    with pytest.raises(StorageError):
        drop.grant_read(ref, 900, kind="sts_session")


def test_a_folder_removed_behind_the_adapters_back_is_made_again(server: SftpServer) -> None:
    location = server.location
    drop = storage_for(server)
    drop.write_stream(location, "inbox/a.png", [b"a"])
    assert drop.move(location, "inbox/a.png", "processing/inbox/a.png", replace=False)
    drop.write_stream(location, "results/a.json", [b"{}"])
    assert drop.move(location, "processing/inbox/a.png", "done/inbox/a.png", replace=True)
    client = storage_for(server)._session(location).sftp  # someone tidying the drop
    for folder in ("processing/inbox", "processing", "results/a.json", "results"):
        (client.remove if folder.endswith(".json") else client.rmdir)(f"{DROP}/{folder}")
    drop.write_stream(location, "inbox/b.png", [b"b"])
    assert drop.move(location, "inbox/b.png", "processing/inbox/b.png", replace=False)
    drop.write_stream(location, "results/b.json", [b"{}"])
    assert drop.read_bytes(location, "results/b.json") == b"{}"
    # a source that is gone is still just "not moved"
    assert drop.move(location, "inbox/b.png", "processing/inbox/b2.png", replace=False) is False


def test_one_badly_named_entry_never_stops_a_listing(server: SftpServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    drop = storage_for(server)
    location = server.location
    drop.write_stream(location, "inbox/good.png", [b"g"])
    drop.write_stream(location, "inbox/sub/deeper.png", [b"d"])
    client = drop._session(location).sftp
    # names are bytes on the wire: an old client in a Latin-1 locale sends these
    with client.open(f"{DROP}/inbox/caf\xe9.png".encode("latin-1"), "wb") as handle:
        handle.write(b"latin-1")
    client.mkdir(f"{DROP}/inbox/".encode() + b"dir\xff")
    with client.open(f"{DROP}/inbox/".encode() + b"dir\xff/inner.png", "wb") as handle:
        handle.write(b"inner")
    client.mkdir(f"{DROP}/inbox/line\nbreak")
    with client.open(f"{DROP}/inbox/line\nbreak/inner.png", "wb") as handle:
        handle.write(b"inner")
    with client.open(f"{DROP}/inbox/tab\there.png", "wb") as handle:
        handle.write(b"tab")
    client.symlink("good.png", f"{DROP}/inbox/link.png")
    client.symlink("sub", f"{DROP}/inbox/linked-folder")
    caplog.set_level("WARNING")
    found = [entry.key for entry in drop.scan(location, "inbox/", recursive=True)]
    assert sorted(found) == ["inbox/good.png", "inbox/sub/deeper.png"]
    # by default each is logged, escaped, with its reason
    assert f"sftp://{location}/inbox/caf\\xe9.png left in the drop: its name is not valid " \
           "UTF-8" in caplog.text
    assert "inbox/line\\nbreak left in the drop" in caplog.text
    refusals: dict[str, str] = {}
    assert [entry.key for entry in drop.scan(location, "inbox/", recursive=True,
                                             refused=refusals.__setitem__)] == found
    assert refusals == {
        "inbox/caf\\xe9.png": "its name is not valid UTF-8",
        "inbox/dir\\xff": "its name is not valid UTF-8",
        "inbox/line\\nbreak": "its name has control characters",
        "inbox/tab\\there.png": "its name has control characters",
        "inbox/link.png": "a symbolic link (the bridge never follows links)",
        "inbox/linked-folder": "a symbolic link (the bridge never follows links)",
    }
    # the session is still usable afterwards: nothing was left half-read
    assert drop.read_bytes(location, "inbox/good.png") == b"g"
    assert sorted(drop.list_keys(location, "inbox/")) == found


def test_reads_never_follow_a_link(server: SftpServer) -> None:
    drop = storage_for(server)
    location = server.location
    drop.write_stream(location, "elsewhere/secret.png", [b"secret"])
    drop.write_stream(location, "inbox/plain.png", [b"plain"])
    client = drop._session(location).sftp
    client.symlink("../elsewhere/secret.png", f"{DROP}/inbox/link.png")
    client.symlink("elsewhere", f"{DROP}/linked")
    with pytest.raises(StorageError, match="inbox/link.png: it is a symbolic link"):
        drop.read_bytes(location, "inbox/link.png")
    with pytest.raises(StorageError, match="the folder linked/ is, or passes through, a "
                                           "symbolic link"):
        drop.read_bytes(location, "linked/secret.png")
    for key in ("inbox/link.png", "linked/secret.png"):
        ref = ObjectRef("sftp", location, key)
        for kind in ("upload", "sftp_account"):
            with pytest.raises(StorageError, match="symbolic link"):
                drop.grant_read(ref, 900, kind=kind)
    assert drop.read_bytes(location, "inbox/plain.png") == b"plain"
    # a missing file can be granted (reading it fails later, as anywhere)
    assert drop.grant_read(ObjectRef("sftp", location, "inbox/missing.png"), 900).kind == "upload"


def test_writes_moves_and_deletes_never_go_through_a_linked_folder(server: SftpServer) -> None:
    drop = storage_for(server)
    location = server.location
    drop.write_stream(location, "inbox/a.png", [b"a"])
    drop.write_stream(location, "outbox/first.pdf", [b"first"])  # the folder once was real
    client = drop._session(location).sftp
    client.rename(f"{DROP}/outbox", f"{DROP}/old-outbox")
    client.symlink("inbox", f"{DROP}/outbox")  # outbox replaced by a link to the watched folder
    client.mkdir(f"{DROP}/results")
    client.symlink("../inbox", f"{DROP}/results/deeper")
    for key in ("outbox/a.pdf", "outbox/new/a.pdf", "results/deeper/a.json"):
        with pytest.raises(StorageError, match="symbolic link"):
            drop.write_stream(location, key, [b"pdf"])
        with pytest.raises(StorageError, match="symbolic link"):
            drop.put_bytes(location, key, b"{}", content_type="application/json", metadata={})
        with pytest.raises(StorageError, match="symbolic link"):
            drop.move(location, "inbox/a.png", key, replace=False)
        with pytest.raises(GrantError, match="symbolic link"):
            drop.grant_write(OutputTarget("sftp", location, key), 900)
    with pytest.raises(StorageError, match="symbolic link"):
        drop.delete(location, "outbox/a.png")  # would remove inbox/a.png
    with pytest.raises(StorageError, match="symbolic link"):
        drop.move(location, "outbox/a.png", "processing/a.png", replace=False)
    # nothing landed in the watched folder, and nothing left it
    assert sorted(client.listdir(f"{DROP}/inbox")) == ["a.png"]
    assert drop.read_bytes(location, "inbox/a.png") == b"a"
    # a real folder again: writes go on as before
    client.remove(f"{DROP}/outbox")
    drop.write_stream(location, "outbox/new/a.pdf", [b"pdf"])
    assert drop.read_bytes(location, "outbox/new/a.pdf") == b"pdf"


def test_output_writes_never_replace_another_file(server: SftpServer) -> None:
    """An output write (its metadata names its source) is create-only: SFTP keeps no metadata
    to tell the same source's earlier output from a file someone else put there, so anything
    in the way but the very same bytes is an OutputCollision and is left as it was."""
    drop = storage_for(server)
    location = server.location
    output = {OUTPUT_MARKER: "rule", SOURCE_TAG: source_tag(location, "inbox/a.png")}
    assert drop.write_stream(location, "outbox/a.pdf", [b"first ", b"output"],
                             metadata=output) == 12
    # the same bytes again (a repeated relay of the same output) count as written
    assert drop.write_stream(location, "outbox/a.pdf", [b"first output"], metadata=output) == 12
    with pytest.raises(OutputCollision, match="already exists"):
        drop.write_stream(location, "outbox/a.pdf", [b"another source's"], metadata=output)
    assert drop.read_bytes(location, "outbox/a.pdf") == b"first output"
    client = drop._session(location).sftp
    client.symlink("a.pdf", f"{DROP}/outbox/link.pdf")
    with pytest.raises(OutputCollision):
        drop.write_stream(location, "outbox/link.pdf", [b"first output"], metadata=output)
    assert stat.S_ISLNK(client.lstat(f"{DROP}/outbox/link.pdf").st_mode or 0)
    assert sorted(client.listdir(f"{DROP}/outbox")) == ["a.pdf", "link.pdf"]  # no partials
    # records (no source tag) replace, as the pipeline's record updates need
    drop.write_stream(location, "outbox/a.pdf", [b"replaced"])
    assert drop.read_bytes(location, "outbox/a.pdf") == b"replaced"


def test_a_large_folder_is_listed_whole(server: SftpServer) -> None:
    """Listings keep several requests in flight; every entry arrives once, in any order."""
    assert server.drop_path is not None
    folder = server.drop_path / "big"
    folder.mkdir()
    names = {f"{n:05d}.png" for n in range(2500)}
    for name in names:
        (folder / name).write_bytes(b"x")
    (folder / "badÿ.png").write_bytes(b"x")  # U+00FF, fine as UTF-8
    os.close(os.open(bytes(folder) + b"/not-utf8-\xff.png", os.O_CREAT | os.O_WRONLY))
    refusals: dict[str, str] = {}
    found = [entry.key for entry in storage_for(server).scan(
        server.location, "big/", recursive=False, refused=refusals.__setitem__)]
    assert sorted(found) == sorted(f"big/{name}" for name in names | {"badÿ.png"})
    assert refusals == {"big/not-utf8-\\xff.png": "its name is not valid UTF-8"}


def test_a_picked_port_taken_before_sshd_binds_it_is_picked_again() -> None:
    """free_ports() lets a port go before sshd binds it; a server starting meanwhile may take
    it. The test server then starts on another port instead of failing the tests using it."""
    server = SftpServer(backend="openssh")
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.port != taken
            assert storage_for(server).stat(server.location, "missing.png") is None


def test_a_create_only_record_write_is_refused_once_a_record_exists(server: SftpServer) -> None:
    drop, location = storage_for(server), server.location
    check_conditional_record_writes(drop, location)
    # no temporary file of the refused writes is left beside the record
    assert [name for name in drop.list_keys(location, "results/") if "once" not in name] == []
