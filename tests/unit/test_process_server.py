"""ProcessServer, the child-process plumbing every local server (Azurite, fake-gcs-server,
SeaweedFS) starts on: a lost port race is tried again with fresh ports, a failed start says why,
and nothing is left behind. The servers here are small Python scripts."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from devstack.servers import LOCALHOST, ProcessServer, ServerStartError

#: serves HTTP on the port in argv[1] unless argv[2] names a file that does not exist yet:
#: then it makes that file and exits as if another process held the port
SCRIPT = """
import http.server, pathlib, sys
race = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
if race is not None and not race.exists():
    race.write_text("lost")
    print("bind: address already in use", flush=True)
    sys.exit(1)
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler
                       ).serve_forever()
"""


class ScriptServer(ProcessServer):
    label = "script"
    port_names = ("http", "spare")
    port_attempts = 2

    def __init__(self, script: str, race_file: Path | None = None) -> None:
        super().__init__(start_timeout=10.0, binary=Path(sys.executable))
        self.script = script
        self.race_file = race_file
        self.seen_ports: list[dict[str, int]] = []
        self.seen_workdirs: list[Path] = []

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        self.seen_ports.append(dict(ports))
        self.seen_workdirs.append(workdir)
        (workdir / "server.py").write_text(self.script)
        extra = [str(self.race_file)] if self.race_file is not None else []
        return [str(binary), "server.py", str(ports["http"]), *extra]

    def answers(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self._port or 0), timeout=0.5):
                return True
        except OSError:
            return False

    def port_taken(self, output: str) -> bool:
        return "address already in use" in output


def test_a_lost_port_race_is_started_again_on_fresh_ports(tmp_path: Path) -> None:
    server = ScriptServer(SCRIPT, race_file=tmp_path / "race")
    with server:
        assert server.answers()
        assert len(server.seen_ports) == 2
        first, second = server.seen_ports
        assert first.keys() == second.keys() == {"http", "spare"}
        assert first != second
        assert not server.seen_workdirs[0].exists()  # the lost attempt was cleaned up
        running = server.seen_workdirs[1]
        assert running.is_dir()
        assert server.log_path is not None and "serving" in server.log_path.read_text()
    assert not running.exists()
    assert not server.answers()


def test_a_server_that_exits_fails_with_its_output_and_leaves_nothing() -> None:
    server = ScriptServer("import sys\nprint('no licence for this host', flush=True)\n"
                          "sys.exit(3)\n")
    with pytest.raises(ServerStartError, match="exited with status 3") as caught:
        server.start()
    assert "no licence for this host" in str(caught.value)
    # an exit that is no port race is not tried again
    assert len(server.seen_workdirs) == 1
    assert not server.seen_workdirs[0].exists()
    assert server.log_path is None
