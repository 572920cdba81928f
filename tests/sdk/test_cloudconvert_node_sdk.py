"""CloudConvert's official Node.js SDK (npm `cloudconvert` 3.x, a devDependency in
package.json), unchanged, against the sandbox: cloudconvert_node_sdk.mjs runs 7 checks
(create and wait on the sync API, get job and task with task wait and listing, list jobs by
tag, upload an input, download an export/url result through a 302, verify a delivered webhook
with `webhooks.verify`, a task.write-only key refused reading) and prints one JSON line per
check; every check must pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from devstack.sandbox import Faults, Sandbox
from tests.sdk.conftest import API_KEY, SIGNING_SECRET, png

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("cloudconvert_node_sdk.mjs")
CHECKS = ["create and wait", "get job and task", "list jobs by tag", "upload an input",
          "download an export/url result", "verify a delivered webhook",
          "a key without task.read is refused"]


def test_every_node_sdk_check_passes(sandbox: Sandbox, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed (make servers installs the npm packages)"
    assert (ROOT / "node_modules" / "cloudconvert").is_dir(), "run npm install (package.json)"
    source = tmp_path / "in.png"
    source.write_bytes(png())
    sandbox.set_faults(Faults(redirect_downloads=True))
    try:
        finished = subprocess.run(
            [node, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "SANDBOX_URL": sandbox.url, "SANDBOX_SYNC_URL": sandbox.sync_url,
                 "API_KEY": API_KEY, "SIGNING_SECRET": SIGNING_SECRET,
                 "WRITE_ONLY_KEY": sandbox.mint_cloudconvert_key({"task.write"}),
                 "INPUT_URL": sandbox.serve_file(source, "in.png"), "INPUT_FILE": str(source)})
    finally:
        sandbox.set_faults(Faults())
    assert finished.returncode == 0, finished.stderr
    results = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert [r["check"] for r in results] == CHECKS
    failed = {r["check"]: r["detail"] for r in results if not r["ok"]}
    assert not failed, failed

