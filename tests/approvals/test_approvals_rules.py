"""The approval gate's rules at unit level: the request body, the record's
moves, who may answer which request, and the durable store."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambda_actors.approvals.gate import Answer, AskWhich, Decided, Ignored, expire_due, judge
from lambda_actors.approvals.record import Approval, IllegalMove, Source, Status, Via, decide
from lambda_actors.approvals.request import ApprovalRequest, Problem, parse
from lambda_actors.approvals.store import ApprovalStore, new_approval_id

ALICE, BOB = "@alice:example.org", "@bob:example.org"


def _record(**changes) -> Approval:
    values = dict(
        id=new_approval_id(), source=Source.API, client="gateway", request_id=None, fingerprint="f",
        approver=ALICE, agent_id="agent-0", action="Delete the build folder", details=None,
        created_at=1000.0, expires_at=1600.0,
    )
    values.update(changes)
    return Approval(**values)


# -- the request body --------------------------------------------------------------


def test_a_minimal_request_gets_the_defaults():
    request = parse({"approver": ALICE, "agent_id": "agent-0", "action": "Deploy"})
    assert request == ApprovalRequest(ALICE, "agent-0", "Deploy")
    assert request.timeout_s == 600


def test_every_problem_is_named_with_its_field():
    problems = parse(
        {
            "approver": "alice",
            "action": "x" * 1001,
            "details": 5,
            "timeout_s": 9,
            "callback_url": "ftp://gw/cb",
            "colour": "red",
        }
    )
    assert [p.field for p in problems] == ["colour", "approver", "agent_id", "action", "details", "timeout_s", "callback_url"]
    assert all(isinstance(p, Problem) and p.message for p in problems)


@pytest.mark.parametrize("timeout", [True, 2.5, "600", 604_801, 0])
def test_timeouts_are_whole_seconds_in_range(timeout):
    problems = parse({"approver": ALICE, "agent_id": "a", "action": "x", "timeout_s": timeout})
    assert [p.field for p in problems] == ["timeout_s"]


def test_details_over_16_kib_are_refused_and_an_object_is_accepted():
    assert [p.field for p in parse({"approver": ALICE, "agent_id": "a", "action": "x", "details": "d" * 17_000})] == ["details"]
    assert parse({"approver": ALICE, "agent_id": "a", "action": "x", "details": {"cmd": "rm"}}).details == {"cmd": "rm"}


def test_the_same_content_has_the_same_fingerprint_and_any_change_another():
    base = {"approver": ALICE, "agent_id": "a", "action": "x", "request_id": "r1"}
    assert parse(base).fingerprint == parse(dict(base, request_id="r2")).fingerprint
    assert parse(base).fingerprint != parse(dict(base, action="y")).fingerprint


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.text(max_size=30), st.booleans()), max_size=8))
def test_any_body_gives_a_request_or_problems_never_an_exception(body):
    result = parse(body)
    assert isinstance(result, ApprovalRequest) or (isinstance(result, list) and result)


# -- the record's moves ------------------------------------------------------------


def test_a_pending_record_moves_once_and_then_never_again():
    approved = decide(_record(), Status.APPROVED, Via.REACTION, at=1100.0, by=ALICE)
    assert (approved.status, approved.decided_by, approved.decided_via) == (Status.APPROVED, ALICE, Via.REACTION)
    for status, via in [(Status.DENIED, Via.COMMAND), (Status.EXPIRED, Via.TIMEOUT), (Status.CANCELLED, Via.API)]:
        with pytest.raises(IllegalMove):
            decide(approved, status, via, at=1200.0)


@pytest.mark.parametrize(
    ("status", "via"),
    [(Status.APPROVED, Via.TIMEOUT), (Status.EXPIRED, Via.REACTION), (Status.CANCELLED, Via.COMMAND), (Status.PENDING, Via.API)],
)
def test_a_move_by_the_wrong_way_is_illegal(status, via):
    with pytest.raises(IllegalMove):
        decide(_record(), status, via, at=1100.0)


def test_the_api_shape_uses_iso_times():
    shown = _record().to_json()
    assert shown["created_at"] == "1970-01-01T00:16:40.000Z"
    assert shown["status"] == "pending" and shown["decided_at"] is None


# -- who answers what ------------------------------------------------------------


def test_a_reaction_on_the_prompt_decides_that_request():
    first, second = _record(), _record(created_at=1001.0)
    verdict = judge(Answer(ALICE, True, Via.REACTION, 1100.0, target=second.id), [first, second], now=1101.0)
    assert isinstance(verdict, Decided) and verdict.record.id == second.id
    assert verdict.record.status is Status.APPROVED


def test_a_bare_answer_with_one_pending_decides_it():
    record = _record()
    verdict = judge(Answer(ALICE, False, Via.COMMAND, 1100.0), [record], now=1100.0)
    assert isinstance(verdict, Decided) and verdict.record.status is Status.DENIED


def test_a_bare_answer_with_several_pending_asks_which_and_decides_nothing():
    later, earlier = _record(created_at=1005.0), _record(created_at=1001.0)
    verdict = judge(Answer(ALICE, True, Via.COMMAND, 1100.0), [later, earlier], now=1100.0)
    assert verdict == AskWhich((earlier, later))


def test_only_the_approver_counts():
    record = _record()
    assert isinstance(judge(Answer(BOB, True, Via.REACTION, 1100.0, target=record.id), [record], 1100.0), Ignored)
    assert isinstance(judge(Answer(BOB, True, Via.COMMAND, 1100.0), [record], 1100.0), Ignored)


def test_an_answer_sent_before_the_deadline_counts_even_if_seen_after_it():
    record = _record()
    assert isinstance(judge(Answer(ALICE, True, Via.COMMAND, 1599.9), [record], now=1700.0), Decided)
    assert judge(Answer(ALICE, True, Via.COMMAND, 1600.0), [record], now=1700.0) == Ignored("too late")


def test_the_deadline_expires_only_what_is_due():
    due, later = _record(expires_at=1500.0), _record(expires_at=1700.0)
    (expired,) = expire_due([due, later], now=1500.0)
    assert (expired.id, expired.status, expired.decided_via) == (due.id, Status.EXPIRED, Via.TIMEOUT)


# -- the durable store -------------------------------------------------------------


@pytest.fixture
def store():
    return ApprovalStore(sqlite3.connect(":memory:"))


def test_records_round_trip_and_a_repeated_request_id_returns_the_first(store):
    record = _record(request_id="gw-1", details={"cmd": "rm -rf build/"})
    assert store.create(record) == (record, True)
    assert store.get(record.id) == record
    again, created = store.create(_record(request_id="gw-1"))
    assert (again, created) == (record, False)


def test_only_the_first_decision_is_written(store):
    record = _record(callback_url="https://gw/cb")
    store.create(record, signing_key="la_token")
    assert store.record_decision(decide(record, Status.APPROVED, Via.COMMAND, at=1100.0, by=ALICE), now=1100.0)
    assert not store.record_decision(decide(record, Status.EXPIRED, Via.TIMEOUT, at=1600.0), now=1600.0)
    assert store.get(record.id).status is Status.APPROVED
    (callback,) = store.due_callbacks(now=1100.0)
    assert callback.signing_key == "la_token" and b'"approved"' in callback.body


def test_a_callback_is_owed_only_once_decided_and_goes_when_done(store):
    record = _record(callback_url="https://gw/cb")
    store.create(record, signing_key="k")
    assert store.due_callbacks(now=10**10) == []
    store.record_decision(decide(record, Status.DENIED, Via.REACTION, at=1100.0, by=ALICE), now=1100.0)
    (callback,) = store.due_callbacks(now=1100.0)
    store.callback_failed(callback.delivery_id, "HTTP 500", next_at=1102.0)
    assert store.due_callbacks(now=1101.0) == []
    assert store.next_callback_at() == 1102.0
    store.callback_done(callback.delivery_id)
    assert store.next_callback_at() is None


def test_the_audit_list_is_newest_first_filtered_and_paged(store):
    records = [_record(created_at=1000.0 + i, approver=ALICE if i % 2 else BOB) for i in range(5)]
    for r in records:
        store.create(r)
    assert [r.id for r in store.listing()] == [r.id for r in reversed(records)]
    assert [r.id for r in store.listing(approver=ALICE)] == [records[3].id, records[1].id]
    page = store.listing(limit=2)
    assert [r.id for r in store.listing(limit=2, before=page[-1].id)] == [records[2].id, records[1].id]
    assert store.listing(status=Status.APPROVED) == []
