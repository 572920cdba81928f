"""The ConvBridge CDK construct: template.yaml's resources for CDK users."""

from convbridge_cdk.construct import (
    AzureOptions,
    Concurrency,
    ConvBridge,
    ConvBridgeProps,
    GcsOptions,
    QueueConcurrency,
    SftpOptions,
    __version__,
    props_from_config,
)

__all__ = [
    "__version__",
    "AzureOptions",
    "Concurrency",
    "ConvBridge",
    "ConvBridgeProps",
    "GcsOptions",
    "QueueConcurrency",
    "SftpOptions",
    "props_from_config",
]
