"""The files an operator starts from: the example rules file, the licence and the version."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import convbridge
from convbridge.cli import main
from convbridge.registries import STORAGES
from convbridge.routes import capability_table
from convbridge.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RULES = ROOT / "rules.example.yaml"


def test_the_example_rules_file_loads_with_one_rule_per_storage() -> None:
    rules = load_rules(str(EXAMPLE_RULES)).rules
    assert sorted(rule.storage for rule in rules) == sorted(
        name for name in STORAGES.names() if STORAGES.target(name).startswith("convbridge."))


def test_every_example_rule_names_a_provider_that_can_take_its_files() -> None:
    # cloudconvert_v1, freeconvert and onlineconvert take no upload: an SFTP rule naming one
    # would turn every file into a failure report.
    refused = {(route.provider, route.storage) for route in capability_table()
               if not route.takes_uploads and any(h.kind == "upload" for h in route.imports)}
    assert refused, "no refused pair at all: the check below would prove nothing"
    for rule in load_rules(str(EXAMPLE_RULES)).rules:
        assert (rule.provider, rule.storage) not in refused, rule.name


def test_convbridge_version_prints_the_package_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"convbridge {convbridge.__version__}\n"


def test_pyproject_takes_its_version_from_the_package() -> None:
    # One place: the layer ships the package's sources without installed metadata, so the
    # code's own __version__ is the source and pyproject.toml reads it from there.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "convbridge.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", convbridge.__version__)


def test_the_installed_distribution_reports_the_package_version() -> None:
    # pip built the metadata of .venv's editable install from pyproject.toml
    assert importlib.metadata.version("convbridge") == convbridge.__version__


def test_licensed_mit_to_convbridge_contributors() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert "convbridge contributors" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]


def _apt_packages_installed_by(*make_arguments: str) -> set[str]:
    """The Debian packages `make` would apt-install for these arguments on a fresh machine:
    -B takes every stamp as out of date, -n only prints the commands."""
    completed = subprocess.run(["make", "-n", "-B", "--no-print-directory", *make_arguments],
                               cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    commands = re.sub(r"\\\n\s*", " ", completed.stdout).splitlines()
    lines = [line for line in commands if "apt-get install" in line]
    return {package for line in lines for package in ("openssh-server", "shellcheck", "graphviz",
                                                         "chromium")
            if package in line.split("apt-get install", 1)[1]}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("arguments", "packages"), [
    (("demo",), set()),
    (("demo", "STORAGE=gcs"), set()),
    (("demo", "STORAGE=azure_blob"), set()),
    (("demo", "STORAGE=sftp"), {"openssh-server"}),
    (("test",), {"openssh-server", "shellcheck", "chromium"}),
])
def test_make_apt_installs_only_what_the_target_runs(
    arguments: tuple[str, ...], packages: set[str]
) -> None:
    assert _apt_packages_installed_by(*arguments) == packages
