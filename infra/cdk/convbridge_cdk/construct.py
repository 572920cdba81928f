"""ConvBridge: the resources of ``template.yaml`` as one CDK construct.

The SAM template is the reference; this construct creates the same resources with the same
logical names (prefixed and hashed the CDK way), the same properties and the same IAM
statements, so ``tests/integration/test_cdk_synth.py`` can compare the two statement by
statement. Where SAM switches a part on with a condition (an Azure secret given), the
construct takes an option: a part that is not asked for is not created. Providers need no
option: their secrets are found by name under one prefix, as in the template.

Roles are written out statement by statement and handed to the functions read-only
(``without_policy_updates``): CDK's convenience grants (an SQS event source's
``grantConsumeMessages``, for one) would otherwise add actions the code never calls.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    Aws,
    BundlingOptions,
    CfnDeletionPolicy,
    CfnOutput,
    DockerImage,
    Duration,
    ILocalBundling,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: Where functions/ and shared/ are: bundled in the installed wheel (infra/cdk/pyproject.toml),
#: else the repository this file sits in (infra/cdk/convbridge_cdk/construct.py -> ../../..).
_BUNDLE = Path(__file__).resolve().parent / "bundle"
REPO_ROOT = _BUNDLE if (_BUNDLE / "shared").is_dir() else Path(__file__).resolve().parents[3]


def _convbridge_version() -> str:
    """The version of the convbridge code this construct deploys, read from the one place it
    is written (shared/convbridge/__init__.py): the CDK's virtualenv does not install the
    package, and importing it would pull in its dependencies."""
    source = (REPO_ROOT / "shared" / "convbridge" / "__init__.py").read_text()
    for statement in ast.parse(source).body:
        if (isinstance(statement, ast.Assign)
                and [getattr(t, "id", None) for t in statement.targets] == ["__version__"]):
            return str(ast.literal_eval(statement.value))
    raise RuntimeError("shared/convbridge/__init__.py sets no __version__")


__version__ = _convbridge_version()

#: template.yaml's ProviderSecretsPrefix: its default and its AllowedPattern (whole path
#: segments ending in "/", no wildcard, since the grant is <prefix>*).
DEFAULT_PROVIDER_SECRETS_PREFIX = "convbridge/providers/"
PROVIDER_SECRETS_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_+=.@-]+/([A-Za-z0-9_+=.@-]+/)*")

#: template.yaml's CloudConvertSandbox=true: the sandbox API's base URL (seeds: API v2 docs).
CLOUDCONVERT_SANDBOX_URL = "https://api.sandbox.cloudconvert.com/v2"

#: Powertools Metrics namespace and the metrics the dashboard and the alarm read.
METRICS_NAMESPACE = "convbridge"
JOB_METRICS = ("JobsSubmitted", "JobsFinished", "JobsFailed")


#: the audience Entra ID expects of a federated client assertion
AZURE_FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


@dataclass(frozen=True)
class AzureOptions:
    """Event Grid -> Azure trigger. ``account_secret_arn``: by default (keyless) the
    ``account_name``, ``tenant_id`` and ``client_id`` of the Entra app that trusts the stack's
    roles; grants are user-delegation SAS got by workload identity federation and no
    long-lived key is held. Opt-ins per account: ``"signing": "client_certificate"`` with the
    app's ``client_certificate`` and ``client_certificate_key`` (accounts that cannot
    federate), or ``"signing": "account_key"`` with ``account_key``. ``blob_endpoint`` only
    when it is not the account's public one (https://<account>.blob.core.windows.net)."""

    account_secret_arn: str
    event_grid_secret_arn: str
    blob_endpoint: str | None = None


@dataclass(frozen=True)
class GcsOptions:
    """Pub/Sub push -> GCS trigger. ``service_account_secret_arn``: by default (keyless) the
    external-account configuration of Workload Identity Federation for AWS plus
    ``service_account_email``; read URLs are signed through IAM Credentials signBlob and no key
    is held. Opt-in: a service-account JSON key with ``"signing": "json_key"``. ``audience``
    defaults to convbridge-<stack>-<account>."""

    service_account_secret_arn: str
    push_service_account: str
    audience: str | None = None


@dataclass(frozen=True)
class SftpOptions:
    """Scheduled sweep of an SFTP drop; the host key is pinned. The sweep queues what it
    claims and submits it from that queue, at most ``claims_max_concurrency`` invocations at
    once (template.yaml's SftpClaimsMaxConcurrency)."""

    secret_arn: str
    host_key: str
    schedule: str = "rate(5 minutes)"
    claims_max_concurrency: int = 5


@dataclass(frozen=True)
class Concurrency:
    """Reserved concurrency of the functions no queue feeds; None leaves it unreserved, 0
    pauses it. The SQS consumers are capped by :class:`QueueConcurrency` instead."""

    azure_trigger: int | None = None
    gcs_trigger: int | None = None
    sftp_sweep: int | None = None
    reconciler: int | None = None


#: AWS's range for an SQS event source's MaximumConcurrency.
MAX_CONCURRENCY_RANGE = range(2, 1001)


@dataclass(frozen=True)
class QueueConcurrency:
    """Most invocations at once per SQS event source (ScalingConfig.MaximumConcurrency): a cap
    that, unlike reserved concurrency, never throttles messages into the dead-letter queue.
    ``s3_events``, with the SFTP claims queue's cap, is also how many job-creating
    environments share each provider account's limits (CONVBRIDGE_TRIGGER_CONCURRENCY); the
    default matches CloudConvert's default 5."""

    s3_events: int = 5
    completions: int = 5


@dataclass(frozen=True, kw_only=True)
class ConvBridgeProps:
    context_secret_arn: str
    #: the bucket the construct creates and watches (template.yaml's SourceBucketMode create)...
    source_bucket_name: str | None = None
    #: ...or one that exists already (SourceBucketMode existing): watched through an
    #: EventBridge rule, left as it is. Either this or ``existing_bucket_name``, which names it.
    source_bucket: s3.IBucket | None = None
    existing_bucket_name: str | None = None
    #: provider <name>'s secret is <prefix><name> in the stack's account and region
    #: (convbridge/providers/cloudconvert, ...); the functions may read only under the prefix
    provider_secrets_prefix: str = DEFAULT_PROVIDER_SECRETS_PREFIX
    watched_prefix: str = "inbox/"
    rules_location: str = "/opt/rules.yaml"
    python_runtime: str = "python3.12"
    secrets_kms_key_arn: str | None = None
    #: CloudConvert jobs go to its sandbox API instead of the live one
    cloudconvert_sandbox: bool = False
    azure: AzureOptions | None = None
    gcs: GcsOptions | None = None
    sftp: SftpOptions | None = None
    #: how often jobs whose callbacks never came are looked up and settled
    reconcile_schedule: str = "rate(1 hour)"
    log_level: str = "INFO"
    log_retention_days: int = 30
    alarm_topic_arn: str | None = None
    failure_rate_alarm_percent: float = 5
    job_failure_alarm_threshold: float = 5
    concurrency: Concurrency = field(default_factory=Concurrency)
    queue_concurrency: QueueConcurrency = field(default_factory=QueueConcurrency)
    #: Build the layers with shared/Makefile (locally, or in the SAM build image when make
    #: fails). False packages shared/ as it is: enough to synthesize and compare offline.
    bundle_layers: bool = True
    #: Where functions/ and shared/ are; the repository root by default.
    code_root: Path = REPO_ROOT


@jsii.implements(ILocalBundling)
class _MakeLayer:
    """Builds a layer with the same shared/Makefile target ``sam build`` runs."""

    def __init__(self, makefile: Path, target: str, runtime: str,
                 settings: list[str]) -> None:
        self._makefile = makefile
        self._target = target
        self._runtime = runtime
        self._settings = settings

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        if shutil.which("make") is None:
            return False
        environment = dict(os.environ, PYTHON_RUNTIME=self._runtime)
        environment.pop("PIP_PYTHON_VERSION", None)  # derived from the runtime
        completed = subprocess.run(
            ["make", "-s", "-f", str(self._makefile), self._target,
             f"ARTIFACTS_DIR={output_dir}", *self._settings],
            env=environment, check=False,
        )
        return completed.returncode == 0


def _check_secret_arn(name: str, arn: str) -> None:
    if not arn.startswith("arn:") or ":secretsmanager:" not in arn or "*" in arn:
        raise ValueError(f"{name} must be a full Secrets Manager ARN without wildcards: {arn!r}")


class ConvBridge(Construct):
    """Every resource of template.yaml; the options decide which storages and providers."""

    def __init__(self, scope: Construct, construct_id: str, props: ConvBridgeProps) -> None:
        super().__init__(scope, construct_id)
        self.props = props
        self._validate(props)
        self._root = props.code_root
        self._runtime = lambda_.Runtime(props.python_runtime, lambda_.RuntimeFamily.PYTHON)
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}

        self._existing = props.source_bucket is not None or props.existing_bucket_name is not None
        bucket = self._bucket_name(props)
        self._object_arn = f"arn:{Aws.PARTITION}:s3:::{bucket}/*"
        self._watched_arn = f"arn:{Aws.PARTITION}:s3:::{bucket}/{props.watched_prefix}*"
        self._bucket_arn = f"arn:{Aws.PARTITION}:s3:::{bucket}"
        self._other_storage = bool(props.azure or props.gcs or props.sftp)

        self._layers()
        self._table()
        self._queues()
        self._bucket()
        self._core_policy()
        self._webhook()
        self._s3_trigger()
        if props.azure:
            self._azure_trigger(props.azure)
        if props.gcs:
            self._gcs_trigger(props.gcs)
        if props.sftp:
            self._sftp_sweep(props.sftp)
        self._reconciler()
        self._alarms()
        self._dashboard()
        self._outputs()

    # --- checks --------------------------------------------------------------------------

    @staticmethod
    def _bucket_name(props: ConvBridgeProps) -> str:
        given = [n for n in (props.source_bucket_name, props.existing_bucket_name) if n]
        if props.source_bucket is not None:
            given.append(props.source_bucket.bucket_name)
        if len(given) != 1:
            raise ValueError("give exactly one of source_bucket_name (a bucket to create), "
                             "source_bucket or existing_bucket_name (a bucket to watch)")
        return given[0]

    @staticmethod
    def _validate(props: ConvBridgeProps) -> None:
        """What template.yaml's parameter patterns and Rules refuse, refused at synth time."""
        _check_secret_arn("context_secret_arn", props.context_secret_arn)
        if not PROVIDER_SECRETS_PREFIX_PATTERN.fullmatch(props.provider_secrets_prefix):
            raise ValueError("provider_secrets_prefix must be whole path segments ending in "
                             f"'/', without * or ?: {props.provider_secrets_prefix!r}")
        for name, value in vars(props.queue_concurrency).items():
            if value not in MAX_CONCURRENCY_RANGE:
                raise ValueError(f"queue_concurrency.{name} must be 2..1000: {value!r}")
        if not props.watched_prefix or any(c in props.watched_prefix for c in "*?"):
            raise ValueError("watched_prefix must be non-empty, without * or ?")
        if props.azure:
            _check_secret_arn("azure.account_secret_arn", props.azure.account_secret_arn)
            _check_secret_arn("azure.event_grid_secret_arn", props.azure.event_grid_secret_arn)
        if props.gcs:
            _check_secret_arn("gcs.service_account_secret_arn",
                              props.gcs.service_account_secret_arn)
        if props.sftp:
            _check_secret_arn("sftp.secret_arn", props.sftp.secret_arn)
            if not props.sftp.host_key:
                raise ValueError("sftp.host_key is required (the host key is pinned)")
            if props.sftp.claims_max_concurrency not in MAX_CONCURRENCY_RANGE:
                raise ValueError("sftp.claims_max_concurrency must be 2..1000: "
                                 f"{props.sftp.claims_max_concurrency!r}")

    # --- building blocks -----------------------------------------------------------------

    def _layer(self, construct_id: str, target: str, description: str,
               name: str) -> lambda_.LayerVersion:
        shared = self._root / "shared"
        runtime = self.props.python_runtime
        # shared/rules.yaml becomes /opt/rules.yaml; rules kept in SSM or S3 need none there
        settings = (["RULES_FILE=none"]
                    if self.props.rules_location.startswith(("ssm:", "s3://")) else [])
        bundling = None
        if self.props.bundle_layers:
            bundling = BundlingOptions(
                image=DockerImage.from_registry(
                    f"public.ecr.aws/sam/build-{self.props.python_runtime}"),
                local=_MakeLayer(shared / "Makefile", target, runtime, settings),
                command=["bash", "-c",
                         " ".join([f"make -f Makefile {target} ARTIFACTS_DIR=/asset-output "
                                   f"PYTHON_RUNTIME={runtime}", *settings])],
            )
        return lambda_.LayerVersion(
            self, construct_id,
            code=lambda_.Code.from_asset(str(shared), bundling=bundling,
                                         exclude=["**/__pycache__", "*.pyc"]),
            description=description,
            layer_version_name=f"{Aws.STACK_NAME}-{name}",
            # built for this one runtime: its binary wheels load on no other
            compatible_runtimes=[self._runtime],
            compatible_architectures=[lambda_.Architecture.ARM_64],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _layers(self) -> None:
        self.shared_layer = self._layer(
            "SharedLayer", "build-SharedLayer",
            "The convbridge package and its runtime dependencies (boto3 comes with Lambda).",
            "shared")
        self.storage_sdk_layer = None
        if self._other_storage:
            self.storage_sdk_layer = self._layer(
                "StorageSdkLayer", "build-StorageSdkLayer",
                "The convbridge package with the Azure Blob, Google Cloud Storage and SFTP SDKs.",
                "storage-sdks")

    def _table(self) -> None:
        self.table = dynamodb.Table(
            self, "IdempotencyTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _queue_pair(self, name: str, visibility: Duration) -> tuple[sqs.Queue, sqs.Queue]:
        dead = sqs.Queue(self, f"{name}DeadLetterQueue", retention_period=Duration.days(14),
                         encryption=sqs.QueueEncryption.SQS_MANAGED,
                         removal_policy=RemovalPolicy.DESTROY)
        queue = sqs.Queue(self, f"{name}Queue", visibility_timeout=visibility,
                          retention_period=Duration.days(4),
                          encryption=sqs.QueueEncryption.SQS_MANAGED,
                          dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=dead),
                          removal_policy=RemovalPolicy.DESTROY)
        return queue, dead

    def _queues(self) -> None:
        self.s3_events_queue, self.s3_events_dlq = self._queue_pair("S3Events",
                                                                     Duration.seconds(300))
        self.completion_queue, self.completion_dlq = self._queue_pair("Completion",
                                                                       Duration.seconds(5400))
        if self._existing:
            # The existing bucket's notification configuration stays its owner's: its
            # EventBridge "Object Created" events under the watched prefix feed the queue.
            rule = events.CfnRule(
                self, "SourceBucketObjectCreatedRule",
                description="convbridge uploads under the watched prefix of the existing "
                            "source bucket",
                event_pattern={
                    "source": ["aws.s3"],
                    "detail-type": ["Object Created"],
                    "detail": {"bucket": {"name": [self._bucket_name(self.props)]},
                               "object": {"key": [{"prefix": self.props.watched_prefix}]}},
                },
                targets=[events.CfnRule.TargetProperty(
                    id="S3EventsQueue", arn=self.s3_events_queue.queue_arn)])
            statement: dict[str, Any] = {
                "Sid": "AllowSourceBucketEvents",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": self.s3_events_queue.queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule.attr_arn}},
            }
        else:
            statement = {
                "Sid": "AllowSourceBucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": self.s3_events_queue.queue_arn,
                "Condition": {
                    "ArnEquals": {"aws:SourceArn": self._bucket_arn},
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                },
            }
        policy = sqs.CfnQueuePolicy(
            self, "S3EventsQueuePolicy",
            queues=[self.s3_events_queue.queue_url],
            policy_document={"Version": "2012-10-17", "Statement": [statement]},
        )
        self._queue_policy = policy

    def _bucket(self) -> None:
        if self._existing:
            # No bucket policy either: it would replace the owner's whole policy.
            self.bucket_name = self._bucket_name(self.props)
            return
        bucket = s3.CfnBucket(
            self, "SourceBucket",
            bucket_name=self.props.source_bucket_name,
            versioning_configuration=s3.CfnBucket.VersioningConfigurationProperty(
                status="Enabled"),
            public_access_block_configuration=s3.CfnBucket.PublicAccessBlockConfigurationProperty(
                block_public_acls=True, block_public_policy=True, ignore_public_acls=True,
                restrict_public_buckets=True),
            bucket_encryption=s3.CfnBucket.BucketEncryptionProperty(
                server_side_encryption_configuration=[
                    s3.CfnBucket.ServerSideEncryptionRuleProperty(
                        server_side_encryption_by_default=(
                            s3.CfnBucket.ServerSideEncryptionByDefaultProperty(
                                sse_algorithm="AES256")))]),
            ownership_controls=s3.CfnBucket.OwnershipControlsProperty(
                rules=[s3.CfnBucket.OwnershipControlsRuleProperty(
                    object_ownership="BucketOwnerEnforced")]),
            lifecycle_configuration=s3.CfnBucket.LifecycleConfigurationProperty(rules=[
                s3.CfnBucket.RuleProperty(
                    id="abort-incomplete-multipart-uploads", status="Enabled",
                    abort_incomplete_multipart_upload=(
                        s3.CfnBucket.AbortIncompleteMultipartUploadProperty(
                            days_after_initiation=2)))]),
            notification_configuration=s3.CfnBucket.NotificationConfigurationProperty(
                queue_configurations=[s3.CfnBucket.QueueConfigurationProperty(
                    event="s3:ObjectCreated:*",
                    queue=self.s3_events_queue.queue_arn,
                    filter=s3.CfnBucket.NotificationFilterProperty(
                        s3_key=s3.CfnBucket.S3KeyFilterProperty(rules=[
                            s3.CfnBucket.FilterRuleProperty(
                                name="prefix", value=self.props.watched_prefix)])))]),
        )
        # The user's files outlive the stack; S3 tests the queue when notifications are set.
        bucket.cfn_options.deletion_policy = CfnDeletionPolicy.RETAIN
        bucket.cfn_options.update_replace_policy = CfnDeletionPolicy.RETAIN
        bucket.node.add_dependency(self._queue_policy)
        self.bucket_name = bucket.ref
        s3.CfnBucketPolicy(
            self, "SourceBucketPolicy",
            bucket=bucket.ref,
            policy_document={
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [self._bucket_arn, self._object_arn],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }],
            },
        )

    def _core_policy(self) -> None:
        props = self.props
        secrets = [props.context_secret_arn,
                   f"arn:{Aws.PARTITION}:secretsmanager:{Aws.REGION}:{Aws.ACCOUNT_ID}:secret:"
                   f"{props.provider_secrets_prefix}*"]
        statements = [
            iam.PolicyStatement(sid="ReadBridgeSecrets", actions=["secretsmanager:GetSecretValue"],
                                resources=secrets),
        ]
        if props.secrets_kms_key_arn:
            statements.append(iam.PolicyStatement(
                sid="DecryptBridgeSecrets", actions=["kms:Decrypt"],
                resources=[props.secrets_kms_key_arn],
                conditions={"StringEquals": {
                    "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"}}))
        statements.append(iam.PolicyStatement(
            sid="IdempotencyRecords",
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                     "dynamodb:DeleteItem"],
            resources=[self.table.table_arn]))
        location = props.rules_location
        if location.startswith("ssm:"):
            statements.append(iam.PolicyStatement(
                sid="ReadRulesParameter", actions=["ssm:GetParameter"],
                resources=[f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:parameter"
                           f"{location.removeprefix('ssm:')}"]))
        elif location.startswith("s3://"):
            statements.append(iam.PolicyStatement(
                sid="ReadRulesObject", actions=["s3:GetObject"],
                resources=[f"arn:{Aws.PARTITION}:s3:::{location.removeprefix('s3://')}"]))
        self.core_policy = iam.ManagedPolicy(
            self, "BridgeCorePolicy",
            description="convbridge functions; secrets, claims and rules shared by every function.",
            document=iam.PolicyDocument(statements=statements))

    def _role(self, construct_id: str, description: str,
              statements: list[iam.PolicyStatement], policy_name: str) -> iam.Role:
        role = iam.Role(
            self, construct_id,
            description=description,
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AWSLambdaBasicExecutionRole"),
                self.core_policy,
            ],
            inline_policies={policy_name: iam.PolicyDocument(statements=statements)},
        )
        return role

    def _log_group(self, construct_id: str, suffix: str) -> logs.LogGroup:
        group = logs.LogGroup(
            self, construct_id,
            log_group_name=f"/aws/lambda/{Aws.STACK_NAME}/{suffix}",
            removal_policy=RemovalPolicy.DESTROY,
        )
        # RetentionDays is an enum of the allowed values; set the number as given.
        resource = group.node.default_child
        assert isinstance(resource, logs.CfnLogGroup)
        resource.retention_in_days = self.props.log_retention_days
        return group

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        props = self.props
        environment = {
            "POWERTOOLS_SERVICE_NAME": "convbridge",
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "LOG_LEVEL": props.log_level,
            "CONVBRIDGE_RULES": props.rules_location,
            "CONVBRIDGE_CONTEXT_SECRET": props.context_secret_arn,
            "CONVBRIDGE_PROVIDER_SECRETS_PREFIX": props.provider_secrets_prefix,
            **({"CONVBRIDGE_CLOUDCONVERT_URL": CLOUDCONVERT_SANDBOX_URL}
               if props.cloudconvert_sandbox else {}),
            "CONVBRIDGE_READ_GRANT_SECONDS": "900",
            "CONVBRIDGE_WRITE_GRANT_SECONDS": "3600",
            "CONVBRIDGE_IDEMPOTENCY_TABLE": self.table.table_name,
        }
        environment |= extra
        return environment

    def _function(self, key: str, construct_id: str, *, directory: str, description: str,
                  role: iam.Role, layer: lambda_.ILayerVersion, log_group: logs.LogGroup,
                  environment: Mapping[str, str], concurrency: int | None,
                  timeout_seconds: int = 30, **extra: Any) -> lambda_.Function:
        code = self._root / "functions" / directory
        if not (code / "app.py").is_file():
            raise FileNotFoundError(f"{code}/app.py is missing: the {key} handler")
        function = lambda_.Function(
            self, construct_id,
            description=description,
            runtime=self._runtime,
            architecture=lambda_.Architecture.ARM_64,
            handler="app.handler",
            code=lambda_.Code.from_asset(str(code), exclude=["**/__pycache__", "*.pyc"]),
            role=role.without_policy_updates(),
            layers=[layer],
            timeout=Duration.seconds(timeout_seconds),
            memory_size=512,
            log_group=log_group,
            reserved_concurrent_executions=concurrency,
            environment=self._environment(environment),
            **extra,
        )
        function.node.add_dependency(role)
        self.functions[key] = function
        self.roles[key] = role
        return function

    @staticmethod
    def _azure_environment(azure: AzureOptions) -> dict[str, str]:
        environment = {"CONVBRIDGE_AZURE_ACCOUNT_SECRET": azure.account_secret_arn}
        if azure.blob_endpoint:
            environment["CONVBRIDGE_AZURE_BLOB_ENDPOINT"] = azure.blob_endpoint
        return environment

    def _storage_secret_statement(self, arns: list[str]) -> iam.PolicyStatement:
        return iam.PolicyStatement(sid="ReadStorageSecrets",
                                   actions=["secretsmanager:GetSecretValue"], resources=arns)

    def _settle_statements(self, *, list_sid: str) -> list[iam.PolicyStatement]:
        """What settling a job needs in the bucket, for the webhook and the reconciler alike:
        read and write records and relayed outputs, abort a failed relay, list (to tell a
        missing object from a forbidden one), and move a failed source aside."""
        return [
            iam.PolicyStatement(sid="ReadWriteBucketObjects",
                                actions=["s3:GetObject", "s3:PutObject"],
                                resources=[self._object_arn]),
            iam.PolicyStatement(sid="AbortFailedRelays", actions=["s3:AbortMultipartUpload"],
                                resources=[self._object_arn]),
            iam.PolicyStatement(sid=list_sid, actions=["s3:ListBucket"],
                                resources=[self._bucket_arn]),
            iam.PolicyStatement(sid="MoveFailedSources", actions=["s3:DeleteObject"],
                                resources=[self._watched_arn]),
        ]

    def _write_back_secrets(self) -> list[iam.PolicyStatement]:
        """The other clouds' secrets, for functions that settle jobs from any storage."""
        props = self.props
        storage_secrets = [arn for arn in (
            props.azure.account_secret_arn if props.azure else None,
            props.gcs.service_account_secret_arn if props.gcs else None,
            props.sftp.secret_arn if props.sftp else None) if arn]
        statements = [self._storage_secret_statement(storage_secrets)] if storage_secrets else []
        if props.azure:
            statements.append(self._federate_to_azure())
        return statements

    @staticmethod
    def _federate_to_azure() -> iam.PolicyStatement:
        """The web-identity token Entra exchanges for the bridge's Azure storage token
        (user-delegation SAS and blob access, no account key), for Entra's audience only."""
        return iam.PolicyStatement(
            sid="FederateToAzure", actions=["sts:GetWebIdentityToken"], resources=["*"],
            conditions={
                "ForAllValues:StringEquals": {
                    "sts:IdentityTokenAudience": AZURE_FEDERATION_AUDIENCE},
                "NumericLessThanEquals": {"sts:DurationSeconds": 300}})

    def _write_back_environment(self) -> dict[str, str]:
        props = self.props
        environment: dict[str, str] = {}
        if props.azure:
            environment |= self._azure_environment(props.azure)
        if props.gcs:
            environment["CONVBRIDGE_GCS_SERVICE_ACCOUNT_SECRET"] = (
                props.gcs.service_account_secret_arn)
        if props.sftp:
            environment |= {"CONVBRIDGE_SFTP_SECRET": props.sftp.secret_arn,
                            "CONVBRIDGE_SFTP_HOST_KEY": props.sftp.host_key}
        return environment

    # --- functions -----------------------------------------------------------------------

    def _webhook(self) -> None:
        props = self.props
        statements = [
            *self._settle_statements(list_sid="TellMissingObjects"),
            iam.PolicyStatement(sid="QueueCompletions", actions=["sqs:SendMessage"],
                                resources=[self.completion_queue.queue_arn]),
            iam.PolicyStatement(sid="ConsumeCompletions",
                                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                         "sqs:GetQueueAttributes"],
                                resources=[self.completion_queue.queue_arn]),
        ]
        statements += self._write_back_secrets()
        role = self._role(
            "WebhookFunctionRole",
            "convbridge webhook; writes outcomes back and finishes queued completions.",
            statements, "convbridge-webhook")
        environment = {"CONVBRIDGE_COMPLETION_QUEUE_URL": self.completion_queue.queue_url,
                       **self._write_back_environment()}
        layer = self.storage_sdk_layer or self.shared_layer
        function = self._function(
            "webhook", "WebhookFunction", directory="webhook",
            description="Verifies provider callbacks and writes outputs, result records and "
                        "failure reports.",
            role=role, layer=layer, log_group=self._log_group("WebhookLogGroup", "webhook"),
            environment=environment, concurrency=None,
            timeout_seconds=900)
        self.webhook_url = lambda_.FunctionUrl(self, "WebhookFunctionUrl", function=function,
                                               auth_type=lambda_.FunctionUrlAuthType.NONE)
        lambda_.EventSourceMapping(
            self, "WebhookFunctionCompletion", target=function,
            event_source_arn=self.completion_queue.queue_arn, batch_size=5,
            max_concurrency=props.queue_concurrency.completions,
            report_batch_item_failures=True)

    def _s3_trigger(self) -> None:
        props = self.props
        role = self._role(
            "S3TriggerRole", "convbridge S3 trigger; mints grants by assuming GrantRole.",
            [
                iam.PolicyStatement(sid="ReadWatchedObjects", actions=["s3:GetObject"],
                                    resources=[self._watched_arn]),
                iam.PolicyStatement(sid="TellMissingObjects", actions=["s3:ListBucket"],
                                    resources=[self._bucket_arn]),
                iam.PolicyStatement(sid="WriteRecords", actions=["s3:PutObject"],
                                    resources=[self._object_arn]),
                iam.PolicyStatement(sid="MoveRejectedSources", actions=["s3:DeleteObject"],
                                    resources=[self._watched_arn]),
                # `convbridge retry --stack` runs in this function (GrantRole trusts its role
                # alone): failure reports and moved sources, under rule-chosen prefixes
                iam.PolicyStatement(sid="RetryFailureReports",
                                    actions=["s3:GetObject", "s3:DeleteObject"],
                                    resources=[self._object_arn]),
                iam.PolicyStatement(sid="ConsumeS3Events",
                                    actions=["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                             "sqs:GetQueueAttributes"],
                                    resources=[self.s3_events_queue.queue_arn]),
                # a provider's "not now" re-sends the event, delayed (convbridge.backpressure)
                iam.PolicyStatement(sid="DeferS3Events",
                                    actions=["sqs:GetQueueUrl", "sqs:SendMessage"],
                                    resources=[self.s3_events_queue.queue_arn]),
            ],
            "convbridge-trigger")
        grant_role = iam.Role(
            self, "GrantRole",
            description="convbridge scoped grants; only assumed by the S3 trigger with a "
                        "session policy.",
            max_session_duration=Duration.hours(1),
            assumed_by=iam.ArnPrincipal(role.role_arn),
            inline_policies={"convbridge-grant-base": iam.PolicyDocument(statements=[
                iam.PolicyStatement(sid="ObjectReadWriteCeiling",
                                    actions=["s3:GetObject", "s3:PutObject"],
                                    resources=[self._object_arn])])},
        )
        assume = iam.Policy(
            self, "S3TriggerAssumeGrantRolePolicy",
            policy_name="convbridge-trigger-assume-grant-role",
            roles=[role],
            statements=[iam.PolicyStatement(sid="MintScopedGrants", actions=["sts:AssumeRole"],
                                            resources=[grant_role.role_arn])])
        self.grant_role = grant_role
        function = self._function(
            "s3_trigger", "S3TriggerFunction", directory="s3_trigger",
            description="Matches new S3 objects against the rules and submits conversion jobs.",
            role=role, layer=self.shared_layer,
            log_group=self._log_group("S3TriggerLogGroup", "s3-trigger"),
            environment={"CONVBRIDGE_WEBHOOK_URL": self.webhook_url.url,
                         "CONVBRIDGE_GRANT_ROLE_ARN": grant_role.role_arn,
                         "CONVBRIDGE_TRIGGER_CONCURRENCY": self._job_creating_environments()},
            concurrency=None)
        function.node.add_dependency(assume)
        lambda_.EventSourceMapping(
            self, "S3TriggerFunctionObjectCreated", target=function,
            event_source_arn=self.s3_events_queue.queue_arn, batch_size=10,
            max_batching_window=Duration.seconds(2),
            max_concurrency=props.queue_concurrency.s3_events, report_batch_item_failures=True)

    def _job_creating_environments(self) -> str:
        """How many environments of the job-creating queue consumers run at once (the S3
        trigger's and, with SFTP, the claims queue's MaximumConcurrency): each takes that share
        of every provider account's limits (convbridge.budget.environment_share). Written as
        the sum, as the template must (CloudFormation cannot add), so both synthesize alike."""
        caps = [self.props.queue_concurrency.s3_events]
        if self.props.sftp is not None:
            caps.append(self.props.sftp.claims_max_concurrency)
        return "+".join(str(cap) for cap in caps)

    def _azure_trigger(self, azure: AzureOptions) -> None:
        assert self.storage_sdk_layer is not None
        role = self._role(
            "AzureTriggerRole",
            "convbridge Azure trigger; Event Grid secret, Azure account settings, web-identity "
            "tokens for Entra only.",
            [self._storage_secret_statement([azure.event_grid_secret_arn,
                                             azure.account_secret_arn]),
             self._federate_to_azure()],
            "convbridge-azure-trigger")
        function = self._function(
            "azure_trigger", "AzureTriggerFunction", directory="azure_trigger",
            description="Receives Event Grid BlobCreated deliveries and submits conversion jobs.",
            role=role, layer=self.storage_sdk_layer,
            log_group=self._log_group("AzureTriggerLogGroup", "azure-trigger"),
            environment={"CONVBRIDGE_WEBHOOK_URL": self.webhook_url.url,
                         "CONVBRIDGE_EVENT_GRID_SECRET": azure.event_grid_secret_arn}
            | self._azure_environment(azure),
            concurrency=self.props.concurrency.azure_trigger)
        self.azure_url = lambda_.FunctionUrl(self, "AzureTriggerFunctionUrl", function=function,
                                             auth_type=lambda_.FunctionUrlAuthType.NONE)

    def _gcs_trigger(self, gcs: GcsOptions) -> None:
        assert self.storage_sdk_layer is not None
        role = self._role(
            "GcsTriggerRole", "convbridge GCS trigger; the GCS identity settings only (Google "
            "federation trusts this role itself).",
            [self._storage_secret_statement([gcs.service_account_secret_arn])],
            "convbridge-gcs-trigger")
        self.pubsub_audience = gcs.audience or f"convbridge-{Aws.STACK_NAME}-{Aws.ACCOUNT_ID}"
        function = self._function(
            "gcs_trigger", "GcsTriggerFunction", directory="gcs_trigger",
            description="Receives Pub/Sub push deliveries of GCS notifications and submits "
                        "conversion jobs.",
            role=role, layer=self.storage_sdk_layer,
            log_group=self._log_group("GcsTriggerLogGroup", "gcs-trigger"),
            environment={"CONVBRIDGE_WEBHOOK_URL": self.webhook_url.url,
                         "CONVBRIDGE_PUBSUB_AUDIENCE": self.pubsub_audience,
                         "CONVBRIDGE_PUBSUB_SERVICE_ACCOUNT": gcs.push_service_account,
                         "CONVBRIDGE_GCS_SERVICE_ACCOUNT_SECRET": gcs.service_account_secret_arn},
            concurrency=self.props.concurrency.gcs_trigger)
        self.gcs_url = lambda_.FunctionUrl(self, "GcsTriggerFunctionUrl", function=function,
                                           auth_type=lambda_.FunctionUrlAuthType.NONE)

    def _sftp_sweep(self, sftp: SftpOptions) -> None:
        assert self.storage_sdk_layer is not None
        # 6 x the 300 s timeout plus the 2 s batching window, rounded up (template.yaml)
        self.sftp_claims_queue, self.sftp_claims_dlq = self._queue_pair(
            "SftpClaims", Duration.seconds(1860))
        claims = self.sftp_claims_queue.queue_arn
        role = self._role(
            "SftpSweepRole",
            "convbridge SFTP sweep; the SFTP account secret and its claims queue only.",
            [self._storage_secret_statement([sftp.secret_arn]),
             # each claimed file is handed to the claims queue; a provider's "not now" sends
             # it again, delayed (convbridge.backpressure)
             iam.PolicyStatement(sid="QueueClaims",
                                 actions=["sqs:GetQueueUrl", "sqs:SendMessage"],
                                 resources=[claims]),
             iam.PolicyStatement(sid="ConsumeClaims",
                                 actions=["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                          "sqs:GetQueueAttributes"],
                                 resources=[claims])],
            "convbridge-sftp-sweep")
        function = self._function(
            "sftp_sweep", "SftpSweepFunction", directory="sftp_sweep",
            description="Sweeps the SFTP drop on a schedule, queues its settled files, and "
                        "submits them from the queue.",
            role=role, layer=self.storage_sdk_layer,
            log_group=self._log_group("SftpSweepLogGroup", "sftp-sweep"),
            environment={"CONVBRIDGE_WEBHOOK_URL": self.webhook_url.url,
                         "CONVBRIDGE_SFTP_SECRET": sftp.secret_arn,
                         "CONVBRIDGE_SFTP_HOST_KEY": sftp.host_key,
                         "CONVBRIDGE_SFTP_CLAIMS_QUEUE_URL": self.sftp_claims_queue.queue_url,
                         "CONVBRIDGE_TRIGGER_CONCURRENCY": self._job_creating_environments()},
            concurrency=self.props.concurrency.sftp_sweep,
            timeout_seconds=300,
            retry_attempts=0, max_event_age=Duration.seconds(300))
        events.Rule(self, "SftpSweepFunctionSweep", description="convbridge SFTP sweep",
                    schedule=events.Schedule.expression(sftp.schedule),
                    targets=[targets.LambdaFunction(function)])
        lambda_.EventSourceMapping(
            self, "SftpSweepFunctionClaims", target=function, event_source_arn=claims,
            batch_size=10, max_batching_window=Duration.seconds(2),
            max_concurrency=sftp.claims_max_concurrency, report_batch_item_failures=True)

    def _reconciler(self) -> None:
        statements = [
            *self._settle_statements(list_sid="ListRecords"),
            *self._write_back_secrets(),
        ]
        role = self._role(
            "ReconcilerRole",
            "convbridge reconciler; lists and reads result records, settles like the webhook.",
            statements, "convbridge-reconciler")
        function = self._function(
            "reconciler", "ReconcilerFunction", directory="reconciler",
            description="Settles jobs whose callbacks never came by asking their provider, on "
                        "a schedule.",
            role=role, layer=self.storage_sdk_layer or self.shared_layer,
            log_group=self._log_group("ReconcilerLogGroup", "reconciler"),
            environment=self._write_back_environment(),
            concurrency=self.props.concurrency.reconciler,
            timeout_seconds=900,
            retry_attempts=0, max_event_age=Duration.seconds(300))
        events.Rule(self, "ReconcilerFunctionReconcile", description="convbridge reconciler",
                    schedule=events.Schedule.expression(self.props.reconcile_schedule),
                    targets=[targets.LambdaFunction(function)])

    # --- alarms, dashboard, outputs ------------------------------------------------------

    def _alarm_actions(self, alarm: cloudwatch.Alarm) -> None:
        if self.props.alarm_topic_arn:
            topic = sns.Topic.from_topic_arn(self, f"{alarm.node.id}Topic",
                                             self.props.alarm_topic_arn)
            alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))

    def _alarms(self) -> None:
        for name, queue, what in (
            ("S3EventsDeadLetterAlarm", self.s3_events_dlq, "convbridge S3 events"),
            ("CompletionDeadLetterAlarm", self.completion_dlq, "convbridge completions"),
            *([("SftpClaimsDeadLetterAlarm", self.sftp_claims_dlq, "convbridge SFTP claims")]
              if self.props.sftp else []),
        ):
            alarm = cloudwatch.Alarm(
                self, name,
                alarm_description=f"{what} gave up after 5 attempts.",
                metric=queue.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(5), statistic="Maximum"),
                evaluation_periods=1, threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
            self._alarm_actions(alarm)
        labels = {"s3_trigger": ("S3TriggerFailureRateAlarm", "S3 trigger"),
                  "webhook": ("WebhookFailureRateAlarm", "webhook"),
                  "azure_trigger": ("AzureTriggerFailureRateAlarm", "Azure trigger"),
                  "gcs_trigger": ("GcsTriggerFailureRateAlarm", "GCS trigger"),
                  "sftp_sweep": ("SftpSweepFailureRateAlarm", "SFTP sweep"),
                  "reconciler": ("ReconcilerFailureRateAlarm", "reconciler")}
        for key, function in self.functions.items():
            alarm_id, label = labels[key]
            # the reconciler runs hourly: shorter periods would never hold two failures
            period = Duration.hours(1) if key == "reconciler" else Duration.minutes(5)
            rate = cloudwatch.MathExpression(
                expression="IF(invocations > 0, 100 * errors / invocations, 0)",
                label="failed invocations (%)",
                using_metrics={
                    "errors": function.metric_errors(period=period, statistic="Sum"),
                    "invocations": function.metric_invocations(period=period,
                                                               statistic="Sum"),
                },
                period=period)
            alarm = cloudwatch.Alarm(
                self, alarm_id, alarm_description=f"convbridge {label} invocations are failing.",
                metric=rate, evaluation_periods=3, datapoints_to_alarm=2,
                threshold=self.props.failure_rate_alarm_percent,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
            self._alarm_actions(alarm)
        jobs = cloudwatch.Alarm(
            self, "JobsFailedAlarm",
            alarm_description="convbridge conversion jobs are failing.",
            metric=cloudwatch.MathExpression(
                expression=f"SELECT SUM(JobsFailed) FROM {METRICS_NAMESPACE}",
                label="failed jobs", period=Duration.minutes(15)),
            evaluation_periods=1, threshold=self.props.job_failure_alarm_threshold,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        self._alarm_actions(jobs)

    def _dashboard(self) -> None:
        region = Aws.REGION

        def insights(title: str, queries: list[tuple[str, str, str]], *, x: int, y: int,
                     stacked: bool = False) -> dict[str, Any]:
            return {"type": "metric", "x": x, "y": y, "width": 8, "height": 6,
                    "properties": {"title": title, "region": region, "view": "timeSeries",
                                   "stacked": stacked, "period": 300,
                                   "metrics": [[{"id": i, "expression": e, "label": label}]
                                               for i, e, label in queries]}}

        def grouped(metric: str, function: str = "SUM", by: str = "rule, provider") -> str:
            return f"SELECT {function}({metric}) FROM {METRICS_NAMESPACE} GROUP BY {by}"

        names = {"s3_trigger": "S3 trigger", "webhook": "webhook", "reconciler": "reconciler",
                 "azure_trigger": "Azure trigger", "gcs_trigger": "GCS trigger",
                 "sftp_sweep": "SFTP sweep"}
        s3_trigger = self.functions["s3_trigger"].function_name
        webhook = self.functions["webhook"].function_name
        in_stack = f"FunctionName = '{s3_trigger}' OR FunctionName = '{webhook}'"
        widgets = [
            {"type": "text", "x": 0, "y": 0, "width": 24, "height": 1,
             "properties": {"markdown": f"## convbridge {Aws.STACK_NAME}: jobs by rule and "
                                        "provider, relay bytes, callback latency, queues and "
                                        "functions"}},
            insights("Jobs submitted (per rule, provider)",
                     [("submitted", grouped("JobsSubmitted"), "")], x=0, y=1),
            insights("Jobs finished (per rule, provider)",
                     [("finished", grouped("JobsFinished"), "")], x=8, y=1),
            insights("Jobs failed (per rule, provider)",
                     [("failed", grouped("JobsFailed"), "")], x=16, y=1),
            insights("Relay bytes (per rule, provider)",
                     [("relay", grouped("RelayBytes"), "")], x=0, y=7, stacked=True),
            insights("Callback latency, ms (job submitted to callback, per provider)",
                     [("latencyavg", grouped("CallbackLatencyMs", "AVG", "provider"), "avg"),
                      ("latencymax", grouped("CallbackLatencyMs", "MAX", "provider"), "max")],
                     x=8, y=7),
            {"type": "metric", "x": 16, "y": 7, "width": 8, "height": 6,
             "properties": {"title": "Dead-letter queues (messages)", "region": region,
                            "view": "timeSeries", "stacked": False, "period": 300,
                            "stat": "Maximum", "metrics": [
                                ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                                 self.s3_events_dlq.queue_name, {"label": "S3 events DLQ"}],
                                ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                                 self.completion_dlq.queue_name, {"label": "completions DLQ"}]]}},
            {"type": "metric", "x": 0, "y": 13, "width": 12, "height": 6,
             "properties": {"title": "Function errors", "region": region, "view": "timeSeries",
                            "stacked": False, "period": 300, "stat": "Sum", "metrics": [
                                ["AWS/Lambda", "Errors", "FunctionName",
                                 self.functions[key].function_name, {"label": label}]
                                for key, label in names.items() if key in self.functions]}},
            {"type": "metric", "x": 12, "y": 13, "width": 12, "height": 6,
             "properties": {"title": "Function invocations and throttles", "region": region,
                            "view": "timeSeries", "stacked": False, "period": 300,
                            "stat": "Sum", "metrics": [
                                [{"id": "invocations", "label": "", "expression":
                                  'SELECT SUM(Invocations) FROM SCHEMA("AWS/Lambda", '
                                  f"FunctionName) WHERE {in_stack} GROUP BY FunctionName"}],
                                [{"id": "throttles", "label": "throttled", "expression":
                                  'SELECT SUM(Throttles) FROM SCHEMA("AWS/Lambda", '
                                  f"FunctionName) WHERE {in_stack} GROUP BY FunctionName"}]]}},
        ]
        self.dashboard = cloudwatch.CfnDashboard(
            self, "Dashboard",
            dashboard_body=Stack.of(self).to_json_string({"widgets": widgets}))

    def _output(self, name: str, value: str, description: str) -> None:
        CfnOutput(self._outputs_scope, name, value=value, description=description)

    def _role_arns(self, trigger: str) -> str:
        # The trigger, and the webhook and reconciler that write its storage's jobs back.
        return ",".join(self.roles[key].role_arn for key in (trigger, "webhook", "reconciler"))

    def _outputs(self) -> None:
        # Outputs share the construct namespace with resources in CDK (not in CloudFormation).
        self._outputs_scope = Construct(self, "Outputs")
        url = self.webhook_url.url
        self._output("WebhookUrl", url, "Callback endpoint base; provider <name> calls "
                     "<url>callbacks/<name>.")
        if self.props.azure:
            self._output("AzureEventGridEndpoint", self.azure_url.url,
                         "Event Grid webhook endpoint for BlobCreated (infra/azure).")
        if self.props.gcs:
            self._output("GcsPushEndpoint", self.gcs_url.url, "Pub/Sub push endpoint.")
            self._output("PubSubAudience", self.pubsub_audience,
                         "OIDC audience the push subscription must use.")
        if self.props.azure:
            self._output("AzureFederatedRoleArns", self._role_arns("azure_trigger"),
                         "The roles that sign in to Entra ID, comma-separated (subjects in "
                         "infra/azure/federation.bicep); their issuer is account-level: aws iam "
                         "get-outbound-web-identity-federation-info.")
        if self.props.gcs:
            self._output("GcsFederatedRoleArns", self._role_arns("gcs_trigger"),
                         "The roles that impersonate the bridge's service account, "
                         "comma-separated (aws_role_arns in infra/gcp).")
        if self.props.sftp:
            self._output("SftpSweepFunctionName", self.functions["sftp_sweep"].function_name,
                         "The scheduled SFTP sweep; invoke it by hand to sweep now.")
            self._output("SftpClaimsQueueUrl", self.sftp_claims_queue.queue_url,
                         "Files the SFTP sweep claimed, waiting to be submitted by it.")
            self._output("SftpClaimsDeadLetterQueueUrl", self.sftp_claims_dlq.queue_url,
                         "SFTP claims given up on; their files return to the drop after the "
                         "claim timeout.")
        self._output("S3TriggerFunctionName", self.functions["s3_trigger"].function_name,
                     "The S3 trigger; convbridge retry --stack invokes it with a retry event.")
        self._output("ReconcilerFunctionName", self.functions["reconciler"].function_name,
                     "The scheduled reconciler; invoke it by hand to settle overdue jobs now.")
        self._output("SourceBucket", self.bucket_name, "The watched bucket.")
        self._output("GrantRoleArn", self.grant_role.role_arn,
                     "Role assumed (with a per-job session policy) to mint provider grants.")
        self._output("IdempotencyTableName", self.table.table_name, "Claims table.")
        self._output("S3EventsQueueUrl", self.s3_events_queue.queue_url, "S3 notifications.")
        self._output("S3EventsDeadLetterQueueUrl", self.s3_events_dlq.queue_url,
                     "S3 notifications the trigger gave up on.")
        self._output("CompletionQueueUrl", self.completion_queue.queue_url, "Completions.")
        self._output("CompletionDeadLetterQueueUrl", self.completion_dlq.queue_url,
                     "Completions the webhook gave up on.")
        self._output("DashboardUrl",
                     f"https://{Aws.REGION}.console.aws.amazon.com/cloudwatch/home?region="
                     f"{Aws.REGION}#dashboards:name={self.dashboard.ref}",
                     "CloudWatch dashboard.")


def _flag(value: Any) -> bool:
    """A JSON or -c context flag: true/false, or their spellings as text."""
    return str(value).lower() not in {"false", "0", "no", ""}


def props_from_config(config: Mapping[str, Any], code_root: Path = REPO_ROOT) -> ConvBridgeProps:
    """Props from plain JSON (cdk.json context "convbridge", or ``-c convbridge='{...}'``):
    camelCase keys as in the README."""
    if isinstance(config, str):
        config = json.loads(config)

    def optional(key: str, cls: Any, fields: dict[str, str]) -> Any:
        part = config.get(key)
        if not part:
            return None
        return cls(**{attr: part[name] for name, attr in fields.items() if name in part})

    if "providerSecretArns" in config:
        # Ignoring it would deploy a stack that reads none of the secrets the user listed.
        raise ValueError("providerSecretArns is replaced by providerSecretsPrefix: store each "
                         "provider's secret as <prefix><provider> (infra/cdk/README.md)")
    concurrency = config.get("reservedConcurrency") or {}
    if {"s3Trigger", "webhook"} & set(concurrency):
        # Reserving them would throttle queue deliveries into the dead-letter queues.
        raise ValueError("reservedConcurrency.s3Trigger and .webhook are replaced by "
                         "maxConcurrency.s3Events and .completions (infra/cdk/README.md)")
    queue_concurrency = config.get("maxConcurrency") or {}
    mode = config.get("sourceBucketMode", "create")
    if mode not in {"create", "existing"}:
        raise ValueError(f"sourceBucketMode must be create or existing: {mode!r}")
    return ConvBridgeProps(
        **{"source_bucket_name" if mode == "create" else "existing_bucket_name":
           config["sourceBucketName"]},
        context_secret_arn=config["contextSecretArn"],
        provider_secrets_prefix=config.get("providerSecretsPrefix",
                                           DEFAULT_PROVIDER_SECRETS_PREFIX),
        watched_prefix=config.get("watchedPrefix", "inbox/"),
        rules_location=config.get("rulesLocation", "/opt/rules.yaml"),
        python_runtime=config.get("pythonRuntime", "python3.12"),
        secrets_kms_key_arn=config.get("secretsKmsKeyArn") or None,
        cloudconvert_sandbox=_flag(config.get("cloudConvertSandbox", False)),
        azure=optional("azure", AzureOptions, {
            "accountSecretArn": "account_secret_arn", "blobEndpoint": "blob_endpoint",
            "eventGridSecretArn": "event_grid_secret_arn"}),
        gcs=optional("gcs", GcsOptions, {
            "serviceAccountSecretArn": "service_account_secret_arn",
            "pushServiceAccount": "push_service_account", "audience": "audience"}),
        sftp=optional("sftp", SftpOptions, {
            "secretArn": "secret_arn", "hostKey": "host_key", "schedule": "schedule",
            "claimsMaxConcurrency": "claims_max_concurrency"}),
        reconcile_schedule=config.get("reconcileSchedule", "rate(1 hour)"),
        log_level=config.get("logLevel", "INFO"),
        log_retention_days=int(config.get("logRetentionDays", 30)),
        alarm_topic_arn=config.get("alarmTopicArn") or None,
        failure_rate_alarm_percent=float(config.get("failureRateAlarmPercent", 5)),
        job_failure_alarm_threshold=float(config.get("jobFailureAlarmThreshold", 5)),
        queue_concurrency=QueueConcurrency(**{
            attr: int(queue_concurrency[name]) for name, attr in {
                "s3Events": "s3_events", "completions": "completions"}.items()
            if name in queue_concurrency}),
        concurrency=Concurrency(**{
            attr: concurrency.get(name) for name, attr in {
                "azureTrigger": "azure_trigger", "gcsTrigger": "gcs_trigger",
                "sftpSweep": "sftp_sweep", "reconciler": "reconciler"}.items()}),
        bundle_layers=_flag(config.get("bundleLayers", True)),
        code_root=code_root,
    )
