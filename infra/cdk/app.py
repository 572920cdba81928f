"""CDK app: one stack holding one ConvBridge construct, configured from the context key
"convbridge" (cdk.json holds an example with every option on; override it with
``cdk synth -c convbridge='{"sourceBucketName": ...}'`` or edit cdk.json).

Offline checks synthesize with ``"bundleLayers": false`` (the layer assets are then the shared/
sources as they are); a real deployment leaves it on so the layers are built with
shared/Makefile, exactly as ``sam build`` builds them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import aws_cdk as cdk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convbridge_cdk import ConvBridge, props_from_config  # noqa: E402


def main() -> None:
    app = cdk.App()
    config = app.node.try_get_context("convbridge")
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise SystemExit('context "convbridge" is missing: see infra/cdk/README.md')
    overrides = app.node.try_get_context("convbridge:bundleLayers")
    if overrides is not None:
        config = dict(config, bundleLayers=overrides)
    stack = cdk.Stack(
        app, config.get("stackName", "convbridge"),
        description="convbridge: storage -> file-conversion API bridge (CDK)",
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                            region=os.environ.get("CDK_DEFAULT_REGION")),
    )
    ConvBridge(stack, "ConvBridge", props_from_config(config))
    app.synth()


if __name__ == "__main__":
    main()
