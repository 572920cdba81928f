"""convbridge: bridge cloud storage to file-conversion APIs with per-file scoped credentials."""

#: The one place the version is written: pyproject.toml, the CDK construct (infra/cdk) and
#: template.yaml's SemanticVersion (checked by the tests) read it from here, since the Lambda
#: layer ships these sources without installed package metadata.
__version__ = "0.1.0"
