"""The README's commands name only what exists: make targets in the Makefile, stack parameters
and outputs in template.yaml, Bicep parameters in infra/azure, Terraform variables in infra/gcp;
and its set-up commands are exactly `make demo` and `make test`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: AWS CLI shorthand (`--versioning-configuration Status=Enabled`), not a stack parameter
NOT_PARAMETERS = {"Status"}


class _CloudFormationLoader(yaml.SafeLoader):
    pass


_CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
TEMPLATE = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CloudFormationLoader)


def code_blocks() -> list[str]:
    """Every fenced block's text, list items' indented ones included."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in README.splitlines():
        if re.fullmatch(r" *```\w*", line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line.strip())
    return blocks


def test_every_make_target_named_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert {"demo", "test", "docs", "deploy-tools"} <= named
    assert named - targets == set()


def test_the_set_up_commands_are_make_demo_and_make_test() -> None:
    set_up = [block for block in code_blocks() if block.lstrip().startswith("make ")]
    commands = [line.split("#")[0].strip() for block in set_up for line in block.splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_stack_parameter_and_output_named_exists() -> None:
    parameters = set(re.findall(r"\b([A-Z][a-z]+[A-Za-z]*)=", README)) - NOT_PARAMETERS
    assert {"SourceBucketName", "AzureAccountSecretArn", "SftpHostKey"} <= parameters
    assert parameters - set(TEMPLATE["Parameters"]) == set()
    # `<WebhookUrl>/callbacks/...`, `<ProviderSecretsPrefix><provider>`: an output or parameter
    placeholders = set(re.findall(r"<([A-Z][a-z]+[A-Za-z]*)>", README))
    assert {"WebhookUrl", "GcsPushEndpoint", "SftpSweepFunctionName"} <= placeholders
    assert placeholders - set(TEMPLATE["Outputs"]) - set(TEMPLATE["Parameters"]) == set()


def test_bicep_parameters_and_terraform_variables_named_exist() -> None:
    for template in ("main.bicep", "federation.bicep"):
        bicep = set(re.findall(r"^param (\w+)", (ROOT / "infra/azure" / template).read_text(),
                               flags=re.MULTILINE))
        given = {name for block in code_blocks() if template in block
                 for name in re.findall(r"(?:-p |\s)(\w+)=", block)}
        assert given and given - bicep == set(), template
    variables = set(re.findall(r'^variable "(\w+)"', (ROOT / "infra/gcp/variables.tf").read_text(),
                               flags=re.MULTILINE))
    used = set(re.findall(r"-var (\w+)=", README))
    assert {"project_id", "push_endpoint"} <= used and used - variables == set()
