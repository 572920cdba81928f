"""convbridge: bridge cloud storage to file-conversion APIs with per-file scoped credentials."""

# Before any other module, so a layer built for another Python is refused with the rebuild
# command instead of failing later in a wheel's ImportError (convbridge.layer_build).
from convbridge.layer_build import refuse_mismatched_layer

refuse_mismatched_layer()

#: The one place the version is written: pyproject.toml, the CDK construct (infra/cdk) and
#: template.yaml's SemanticVersion (checked by the tests) read it from here, since the Lambda
#: layer ships these sources without installed package metadata.
__version__ = "0.1.0"
