"""The package's layers and what ships: convbridge imports only downwards (the import-linter
contracts in pyproject.toml) and never devstack, and the wheel carries convbridge alone."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_the_wheel_ships_convbridge_and_not_devstack() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = {package for where in find["where"]
                for package in find_packages(str(ROOT / where), include=find["include"])}
    assert {"convbridge", "convbridge.storage", "convbridge.providers"} <= packages
    assert not any(package.split(".")[0] == "devstack" for package in packages)


def test_the_sandbox_runs_from_devstack_and_the_convbridge_command_has_no_sandbox() -> None:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT)])}
    usage = subprocess.run([sys.executable, "-m", "devstack.sandbox", "--help"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert "--signing-secret" in usage.stdout
    command = subprocess.run([sys.executable, "-m", "convbridge.cli", "sandbox"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert command.returncode == 2
    assert "invalid choice: 'sandbox'" in command.stderr
