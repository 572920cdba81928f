"""S3Storage grants are as narrow as DESIGN.md promises, proven against SeaweedFS, which (unlike
moto) enforces STS inline session policies and SigV4 presigned-URL scope: a read grant reaches
its one key and nothing else, a write grant can create the job's output and its outputs folder
but cannot read, list or write elsewhere (nor another source's outputs), keys with spaces and
unicode stay exact, keys with IAM wildcard characters get no STS grant at all, and no credential
shows in a grant's repr. The server runs once for the module; if it cannot start, every test
fails with the reason instead of skipping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import boto3
import botocore.exceptions
import httpx
import pytest
from hypothesis import given, settings

from convbridge.errors import GrantError
from convbridge.model import Grant, ObjectRef, OutputTarget
from convbridge.rules import parse_rules
from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage, session_policy
from devstack.servers import SeaweedFS, ServerStartError
from tests.name_strategies import RULE as NAMING_RULE
from tests.name_strategies import grantable_pairs

pytestmark = pytest.mark.seaweedfs

BUCKET = "convbridge-grants"
KEY_A = "inbox/a/b.png"
KEY_B = "inbox/a/c.png"
BODY_A = b"\x89PNG source a"
BODY_B = b"\x89PNG source b"
GRANT_RULES = """\
version: 1
rules:
  - name: images
    match: {storage: s3, location: convbridge-grants, prefix: inbox/, suffixes: [.png]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
"""


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    server = SeaweedFS()
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"SeaweedFS could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin_s3(seaweed: SeaweedFS) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        region_name=seaweed.region,
        config=S3_CLIENT_CONFIG,
        **seaweed.admin_credentials,
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY_A, Body=BODY_A)
    client.put_object(Bucket=BUCKET, Key=KEY_B, Body=BODY_B)
    return client


@pytest.fixture(scope="module")
def storage(seaweed: SeaweedFS, admin_s3: Any) -> S3Storage:
    sts = boto3.client(
        "sts",
        endpoint_url=seaweed.sts_endpoint_url,
        region_name=seaweed.region,
        **seaweed.admin_credentials,
    )
    return S3Storage(
        s3_client=admin_s3,
        sts_client=sts,
        grant_role_arn=seaweed.role_arn,
        region="us-east-1",
        endpoint_url=seaweed.endpoint_url,
    )


def grant_client(grant: Grant) -> Any:
    """An S3 client holding only the grant's credentials, pointed where the grant says."""
    return boto3.client(
        "s3",
        endpoint_url=grant.endpoint,
        region_name=grant.region,
        config=S3_CLIENT_CONFIG,
        aws_access_key_id=grant.secret["access_key_id"],
        aws_secret_access_key=grant.secret["secret_access_key"],
        aws_session_token=grant.secret["session_token"],
    )


def assert_denied(call: Callable[..., Any], **params: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**params)
    code = info.value.response["Error"]["Code"]
    assert code == "AccessDenied", f"{call.__name__}({params}) failed with {code}, not AccessDenied"


def get_or_code(client: Any, key: str) -> bytes | str:
    """The object's bytes, or the error code S3 answered with."""
    try:
        return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except botocore.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])


def with_path(url: str, key: str) -> str:
    """``url`` (path-style) with the object key swapped, signature and query left as they are."""
    parsed = httpx.URL(url)
    raw_path = f"/{BUCKET}/{quote(key)}?{parsed.query.decode()}"
    return str(parsed.copy_with(raw_path=raw_path.encode()))


# -- read grant: STS session ---------------------------------------------------------------


def test_sts_read_grant_reads_only_its_key(storage: S3Storage, admin_s3: Any) -> None:
    grant = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 900, kind="sts_session")
    client = grant_client(grant)

    assert grant.kind == "sts_session"
    assert client.get_object(Bucket=BUCKET, Key=KEY_A)["Body"].read() == BODY_A
    assert_denied(client.get_object, Bucket=BUCKET, Key=KEY_B)
    assert_denied(client.put_object, Bucket=BUCKET, Key=KEY_A, Body=b"overwritten")
    assert_denied(client.put_object, Bucket=BUCKET, Key="outbox/planted.png", Body=b"x")
    assert_denied(client.list_objects_v2, Bucket=BUCKET)
    assert_denied(client.list_objects_v2, Bucket=BUCKET, Prefix=KEY_A)
    assert_denied(client.delete_object, Bucket=BUCKET, Key=KEY_A)
    # The denied writes and delete really changed nothing.
    assert admin_s3.get_object(Bucket=BUCKET, Key=KEY_A)["Body"].read() == BODY_A
    assert admin_s3.list_objects_v2(Bucket=BUCKET, Prefix="outbox/planted").get("KeyCount") == 0


def test_sts_read_grant_is_short_lived(storage: S3Storage) -> None:
    before = datetime.now(UTC)
    grant = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 900, kind="sts_session")

    assert before + timedelta(minutes=14) < grant.expires_at <= before + timedelta(minutes=16)


# -- read grant: presigned URL -------------------------------------------------------------


def test_presigned_read_grant_reads_only_its_key(storage: S3Storage, admin_s3: Any) -> None:
    grant = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 900)
    assert grant.kind == "presigned_url" and grant.url

    answer = httpx.get(grant.url)
    assert answer.status_code == 200 and answer.content == BODY_A

    other_key = with_path(grant.url, KEY_B)
    assert httpx.URL(other_key).path == f"/{BUCKET}/{KEY_B}"
    assert httpx.get(other_key).status_code == 403

    signature = httpx.URL(grant.url).params["X-Amz-Signature"]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = grant.url.replace(f"X-Amz-Signature={signature}", f"X-Amz-Signature={flipped}")
    assert tampered != grant.url
    assert httpx.get(tampered).status_code == 403

    # A GET signature does not authorise a PUT to the same URL.
    assert httpx.put(grant.url, content=b"overwritten").status_code == 403
    assert admin_s3.get_object(Bucket=BUCKET, Key=KEY_A)["Body"].read() == BODY_A


def test_presigned_read_grant_expires(storage: S3Storage) -> None:
    grant = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 1)
    assert grant.url
    time.sleep(2.1)

    assert httpx.get(grant.url).status_code == 403


# -- write grant ---------------------------------------------------------------------------


def test_write_grant_creates_only_the_jobs_outputs(storage: S3Storage, admin_s3: Any) -> None:
    target = OutputTarget(storage="s3", location=BUCKET, key="outbox/a/b.png.pdf")
    grant = storage.grant_write(target, 900)
    client = grant_client(grant)

    assert grant.kind == "sts_session" and grant.prefix == "outbox/a/b.png.pdf/"
    client.put_object(Bucket=BUCKET, Key="outbox/a/b.png.pdf", Body=b"%PDF result")
    # Several outputs (one per page) go to the folder named after the output key.
    client.put_object(Bucket=BUCKET, Key="outbox/a/b.png.pdf/page-1.png", Body=b"page 1")
    assert admin_s3.get_object(Bucket=BUCKET, Key="outbox/a/b.png.pdf")["Body"].read() == (
        b"%PDF result")
    assert admin_s3.get_object(Bucket=BUCKET, Key="outbox/a/b.png.pdf/page-1.png")[
        "Body"].read() == b"page 1"

    for key in ("outbox/a/c.png.pdf", "outbox/other.pdf", "inbox/x.png",
                "outbox/a/b.png.pdf.extra", "outbox/a/b.png.pdfx/page-1.png",
                "outbox/a/b.png/c.png.pdf", "outbox/a/b/c.png.pdf", KEY_A):
        assert_denied(client.put_object, Bucket=BUCKET, Key=key, Body=b"x")
    assert_denied(client.get_object, Bucket=BUCKET, Key=KEY_A)
    assert_denied(client.get_object, Bucket=BUCKET, Key="outbox/a/b.png.pdf")
    assert_denied(client.list_objects_v2, Bucket=BUCKET)
    assert_denied(client.list_objects_v2, Bucket=BUCKET, Prefix="outbox/a/b.png.pdf/")
    assert_denied(client.delete_object, Bucket=BUCKET, Key="outbox/a/b.png.pdf")
    assert admin_s3.get_object(Bucket=BUCKET, Key=KEY_A)["Body"].read() == BODY_A


def test_a_write_grant_cannot_reach_the_outputs_of_a_source_in_a_folder_of_its_name(
        storage: S3Storage, admin_s3: Any) -> None:
    """``inbox/a/b.png`` and ``inbox/a/b/c.png`` under one rule: the one-hour credentials of
    the first job cannot write where the second job's output goes."""
    rule = parse_rules(GRANT_RULES).rules[0]
    first, second = rule.output_key("inbox/a/b.png"), rule.output_key("inbox/a/b/c.png")
    admin_s3.put_object(Bucket=BUCKET, Key=second, Body=b"the second job's output")
    client = grant_client(storage.grant_write(OutputTarget("s3", BUCKET, first), 900))

    client.put_object(Bucket=BUCKET, Key=first, Body=b"the first job's output")
    assert_denied(client.put_object, Bucket=BUCKET, Key=second, Body=b"overwritten")
    assert admin_s3.get_object(Bucket=BUCKET, Key=second)["Body"].read() == (
        b"the second job's output")


def test_write_grant_folder_stays_under_dotted_directory(storage: S3Storage) -> None:
    grant = storage.grant_write(OutputTarget("s3", BUCKET, "outbox/job.42/result"), 900)
    client = grant_client(grant)

    client.put_object(Bucket=BUCKET, Key="outbox/job.42/result", Body=b"result")
    assert_denied(client.put_object, Bucket=BUCKET, Key="outbox/job/other-job.pdf", Body=b"x")


@settings(max_examples=15, deadline=None)
@given(pair=grantable_pairs)
def test_sampled_write_grants_cannot_reach_another_sources_outputs(
        storage: S3Storage, admin_s3: Any, pair: tuple[str, str]) -> None:
    """15 generated pairs of sources under one rule, proven with real session policies: the
    grant for the first creates its output and output folder, and cannot write the second's."""
    first, second = pair
    own, other = NAMING_RULE.output_key(first), NAMING_RULE.output_key(second)
    client = grant_client(storage.grant_write(OutputTarget("s3", BUCKET, own), 900))

    client.put_object(Bucket=BUCKET, Key=own, Body=b"output")
    client.put_object(Bucket=BUCKET, Key=f"{NAMING_RULE.output_folder(first)}page-1.png",
                      Body=b"page")
    for key in (other, f"{NAMING_RULE.output_folder(second)}page-1.png"):
        assert_denied(client.put_object, Bucket=BUCKET, Key=key, Body=b"x")


# -- awkward keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["inbox/my résumé.png", "inbox/a b+c%20&d=e.png", "inbox/日本語/ファイル.png"]
)
def test_read_grants_handle_spaces_and_unicode(storage: S3Storage, admin_s3: Any, key: str) -> None:
    body = f"contents of {key}".encode()
    admin_s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    ref = ObjectRef("s3", BUCKET, key)

    client = grant_client(storage.grant_read(ref, 900, kind="sts_session"))
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert_denied(client.get_object, Bucket=BUCKET, Key=KEY_A)

    url = storage.grant_read(ref, 900).url
    assert url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == body


@pytest.mark.parametrize(
    ("key", "lookalike"), [("inbox/a*.png", "inbox/aX.png"), ("inbox/q?.png", "inbox/qZ.png")]
)
def test_no_sts_grant_is_minted_for_keys_with_wildcard_characters(
    storage: S3Storage, seaweed: SeaweedFS, admin_s3: Any, key: str, lookalike: str
) -> None:
    admin_s3.put_object(Bucket=BUCKET, Key=key, Body=b"the real one")
    admin_s3.put_object(Bucket=BUCKET, Key=lookalike, Body=b"someone else's")

    # Control: this server does treat * and ? in a resource as wildcards, so a policy naming the
    # raw key would reach the lookalike. That is why no STS grant may name such a key.
    sts = boto3.client(
        "sts", endpoint_url=seaweed.sts_endpoint_url, region_name=seaweed.region,
        **seaweed.admin_credentials,
    )
    raw_policy = session_policy("s3:GetObject", [f"arn:aws:s3:::{BUCKET}/{key}"])
    creds = sts.assume_role(
        RoleArn=seaweed.role_arn, RoleSessionName="convbridge-test-raw", Policy=raw_policy,
        DurationSeconds=900,
    )["Credentials"]
    raw = grant_client(
        Grant(kind="sts_session", storage="s3", location=BUCKET, scope="control",
              expires_at=creds["Expiration"], region=seaweed.region,
              endpoint=seaweed.endpoint_url,
              secret={"access_key_id": creds["AccessKeyId"],
                      "secret_access_key": creds["SecretAccessKey"],
                      "session_token": creds["SessionToken"]})
    )
    assert get_or_code(raw, lookalike) == b"someone else's"

    # SeaweedFS 4.48 does not expand IAM's ${*} / ${?} escapes either (it denies the exact key),
    # so no STS grant is minted for such a key: the pipeline reads through a presigned URL and
    # relays the output instead.
    with pytest.raises(GrantError, match="wildcards"):
        storage.grant_read(ObjectRef("s3", BUCKET, key), 900, kind="sts_session")
    with pytest.raises(GrantError, match="wildcards"):
        storage.grant_write(OutputTarget("s3", BUCKET, f"outbox/{key}.pdf"), 900)
    url = storage.grant_read(ObjectRef("s3", BUCKET, key), 900).url
    assert url
    assert httpx.get(url).content == b"the real one"


# -- secrets stay out of logs --------------------------------------------------------------


def test_grants_keep_secrets_out_of_repr_and_logs(
    storage: S3Storage, seaweed: SeaweedFS, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="convbridge"):
        read = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 900, kind="sts_session")
        write = storage.grant_write(OutputTarget("s3", BUCKET, "outbox/a/b.png.pdf"), 900)
        presigned = storage.grant_read(ObjectRef("s3", BUCKET, KEY_A), 900)

    for grant in (read, write):
        secret_key = grant.secret["secret_access_key"]
        token = grant.secret["session_token"]
        assert secret_key and token
        for text in (repr(grant), str(grant), caplog.text):
            assert secret_key not in text
            assert token not in text
    assert presigned.url
    signature = httpx.URL(presigned.url).params["X-Amz-Signature"]
    for text in (repr(presigned), str(presigned), caplog.text):
        assert signature not in text
    # The adapter's own long-lived key stays out of its repr too.
    assert seaweed.secret_key not in repr(storage)
