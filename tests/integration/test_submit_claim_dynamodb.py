"""The submit claim against DynamoDB on moto server: one conditional PutItem holds an upload,
a refused one names the holder in the same answer, a takeover replaces exactly the holder it
read, and items stored by the earlier release (powertools' layout) still answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest

from bench.aws_calls import CallCounter
from convbridge.claims import SUBMIT_SCOPE, Claims, SubmitClaim, claim_id, now_ms
from convbridge.pipeline.submit import ClaimedSubmission
from devstack.servers import MotoServer

TABLE = "convbridge-claims-test"
KEY = {"storage": "s3", "location": "bucket", "key": "inbox/a.png", "version": "v1",
       "rule": "png-to-pdf", "attempt": None}
CLAIM = SubmitClaim(nonce="0" * 16 + "a" * 16, route="native", issued_at=1_800_000_000,
                    source_size=42)


class RemainingTime:
    def __init__(self, millis: int) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


@pytest.fixture
def dynamodb(moto: MotoServer) -> Iterator[Any]:
    client = boto3.client("dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    yield client
    client.delete_table(TableName=TABLE)


def claims_on(client: Any, remaining_ms: int = 60_000) -> Claims:
    claims = Claims(TABLE, client)
    claims.register_lambda_context(RemainingTime(remaining_ms))
    return claims


def stored(client: Any) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(TableName=TABLE, Key={
        "id": {"S": claim_id(SUBMIT_SCOPE, KEY)}})["Item"]
    return item


def test_the_first_claim_holds_in_one_call_and_a_duplicate_learns_the_holder(
        dynamodb: Any) -> None:
    counter = CallCounter()
    counter.watch(dynamodb)
    claims = claims_on(dynamodb)
    counter.counting = True
    before = now_ms()
    held = claims.claim_submission(KEY, CLAIM)
    assert held.ours and sum(counter.calls.values()) == 1
    assert held.claim.deadline_ms is not None
    assert before + 60_000 <= held.claim.deadline_ms <= now_ms() + 60_000
    counter.calls.clear()
    other = claims.claim_submission(KEY, replace(CLAIM, nonce="1" * 32))
    assert sum(counter.calls.values()) == 1  # the holder came back with the refusal
    assert not other.ours and other.claim == held.claim
    assert not other.claim.ended(now_ms())
    item = stored(dynamodb)
    assert item["status"] == {"S": "SUBMITTING"} and item["nonce"] == {"S": CLAIM.nonce}
    assert int(item["expiration"]["N"]) > time.time() + 6 * 24 * 3600


def test_a_takeover_replaces_exactly_the_holder_it_read(dynamodb: Any) -> None:
    claims = claims_on(dynamodb, remaining_ms=1)
    held = claims.claim_submission(KEY, CLAIM)
    time.sleep(0.01)
    assert held.claim.ended(now_ms())
    newer = replace(CLAIM, nonce="2" * 32)
    # without naming the holder, or naming another one, nothing is replaced
    assert not claims.claim_submission(KEY, newer).ours
    assert not claims.claim_submission(KEY, newer, replacing=replace(
        held.claim, nonce="9" * 32)).ours
    assert not claims.claim_submission(KEY, newer, replacing=replace(
        held.claim, deadline_ms=(held.claim.deadline_ms or 0) + 1)).ours
    taken = claims.claim_submission(KEY, newer, replacing=held.claim)
    assert taken.ours and stored(dynamodb)["nonce"] == {"S": newer.nonce}
    # a second taker that read the same dead holder loses, and learns the new one
    late = claims.claim_submission(KEY, replace(CLAIM, nonce="3" * 32), replacing=held.claim)
    assert not late.ours and late.claim.nonce == newer.nonce


def test_a_release_deletes_only_its_own_claim(dynamodb: Any) -> None:
    claims = claims_on(dynamodb)
    claims.claim_submission(KEY, CLAIM)
    claims.release_submission(KEY, "f" * 32)
    assert stored(dynamodb)["nonce"] == {"S": CLAIM.nonce}
    claims.release_submission(KEY, CLAIM.nonce or "")
    assert claims.claim_submission(KEY, replace(CLAIM, nonce="4" * 32)).ours


def test_an_expired_claim_is_claimed_again(dynamodb: Any) -> None:
    item = {"id": {"S": claim_id(SUBMIT_SCOPE, KEY)}, "status": {"S": "SUBMITTING"},
            "nonce": {"S": "5" * 32}, "expiration": {"N": str(int(time.time()) - 10)},
            "in_progress_expiration": {"N": str(now_ms() + 600_000)}}
    dynamodb.put_item(TableName=TABLE, Item=item)
    assert claims_on(dynamodb).claim_submission(KEY, CLAIM).ours


def test_a_submission_claim_of_the_earlier_release_answers_with_its_result(
        dynamodb: Any) -> None:
    """The earlier release claimed submissions with powertools (PutItem, then UpdateItem to
    COMPLETED with the result): that very item, made here by powertools, still answers."""
    earlier = Claims(TABLE, dynamodb)
    done = earlier.once(SUBMIT_SCOPE, KEY, lambda: ClaimedSubmission("submitted", job_id="j-1"),
                        ClaimedSubmission)
    assert not done.replayed
    other = claims_on(dynamodb).claim_submission(KEY, CLAIM)
    assert not other.ours
    assert other.claim.nonce is None
    assert other.claim.completed == {"status": "submitted", "reason": "", "job_id": "j-1"}


def test_an_earlier_release_claim_left_in_progress_is_taken_over_once_it_ended(
        dynamodb: Any) -> None:
    deadline = now_ms() - 1000
    dynamodb.put_item(TableName=TABLE, Item={
        "id": {"S": claim_id(SUBMIT_SCOPE, KEY)}, "status": {"S": "INPROGRESS"},
        "expiration": {"N": str(int(time.time()) + 3600)},
        "in_progress_expiration": {"N": str(deadline)}})
    claims = claims_on(dynamodb)
    holder = claims.claim_submission(KEY, CLAIM)
    assert not holder.ours
    assert (holder.claim.nonce, holder.claim.deadline_ms, holder.claim.completed) == (
        None, deadline, None)
    assert holder.claim.ended(now_ms())
    assert claims.claim_submission(KEY, CLAIM, replacing=holder.claim).ours
    assert stored(dynamodb)["status"] == {"S": "SUBMITTING"}
