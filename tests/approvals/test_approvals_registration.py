"""Agent registration's pure parts (SPEC 7.2): the request body, the record's
moves, and the durable store with its callback. No homeserver, no tree."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambda_actors.approvals.record import Approval, Source, Status, Via, decide
from lambda_actors.approvals.registration import (
    DID_PREFIX,
    IllegalRegistrationMove,
    RegStatus,
    Registration,
    RegistrationRequest,
    move,
    new_did,
    outcome,
    parse,
)
from lambda_actors.approvals.registration_store import RegistrationStore
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.config import check_agent_entry

ALICE = "@alice:example.org"
ENTRY = {"owner": ALICE, "label": "Research agent", "base_url": "http://agents.internal:7000/agent_9/",
         "workspace_path": "/agents/9"}


# -- the request ---------------------------------------------------------------------


def test_a_minimal_registration_gets_the_defaults_and_its_agent_entry():
    request = parse(ENTRY)
    assert isinstance(request, RegistrationRequest)
    assert (request.owner, request.timeout_s, request.callback_url, request.request_id) == (ALICE, 600, None, None)
    assert (request.agent.label, request.agent.base_url, str(request.agent.workspace_path)) == (
        "Research agent", "http://agents.internal:7000/agent_9/", "/agents/9"
    )


def test_every_problem_is_named_with_its_field():
    problems = parse({"owner": "alice", "label": " ", "base_url": "ftp://x", "workspace_path": "agents/9",
                      "timeout_s": 5, "callback_url": "file:///x", "colour": "red"})
    assert isinstance(problems, list)
    assert {p.field for p in problems} == {
        "colour", "owner", "label", "base_url", "workspace_path", "timeout_s", "callback_url"
    }
    assert {p.field for p in parse({})} == {"owner", "label", "base_url", "workspace_path"}


def test_the_agent_fields_are_checked_by_the_agents_yaml_validator():
    # The same words as agents.yaml's loader gives, for the same mistakes.
    body = {**ENTRY, "base_url": "ws://", "workspace_path": "~/agents"}
    problems = {p.field: p.message for p in parse(body)}
    entry = check_agent_entry({"id": "agent-9", "label": "x", "base_url": body["base_url"], "workspace_path": "~/agents"})
    assert isinstance(entry, list)
    expected = dict(entry)
    assert (problems["base_url"], problems["workspace_path"]) == (expected["base_url"], expected["workspace_path"])


def test_the_same_content_has_the_same_fingerprint_and_any_change_another():
    first, again = parse({**ENTRY, "request_id": "r1"}), parse({**ENTRY, "request_id": "r1"})
    other = parse({**ENTRY, "request_id": "r1", "label": "Other"})
    assert isinstance(first, RegistrationRequest) and isinstance(again, RegistrationRequest)
    assert isinstance(other, RegistrationRequest)
    assert first.fingerprint == again.fingerprint != other.fingerprint


@given(st.dictionaries(st.sampled_from(["owner", "label", "base_url", "workspace_path", "timeout_s", "x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=30), st.lists(st.integers(), max_size=2))))
def test_any_body_gives_a_request_or_problems_never_an_exception(body):
    assert isinstance(parse(body), (RegistrationRequest, list))


# -- the record's moves ------------------------------------------------------------------


def _registration(**changes) -> Registration:
    base = Registration(
        id="reg_1", client="gateway", request_id=None, fingerprint="f", owner=ALICE, label="Research agent",
        base_url="http://agents.internal:7000/agent_9/", workspace_path="/agents/9", approval_id="apr_1",
        created_at=1000.0, expires_at=1600.0, callback_url="https://gw/cb",
    )
    return replace(base, **changes)


def test_a_pending_registration_ends_once_and_only_an_approved_one_is_deregistered():
    pending = _registration()
    approved = move(pending, RegStatus.APPROVED, agent_did=new_did(), room_id="!r:x")
    assert move(approved, RegStatus.DEREGISTERED, deregistered_at=2000.0).status is RegStatus.DEREGISTERED
    for final in (RegStatus.DENIED, RegStatus.EXPIRED, RegStatus.CANCELLED):
        ended = move(pending, final)
        for later in RegStatus:
            with pytest.raises(IllegalRegistrationMove):
                move(ended, later)
    with pytest.raises(IllegalRegistrationMove):
        move(pending, RegStatus.DEREGISTERED)


def test_the_approval_decides_what_the_registration_becomes():
    approval = Approval(id="apr_1", source=Source.REGISTRATION, client="gateway", request_id=None, fingerprint="f",
                        approver=ALICE, agent_id="reg_1", action="Register", details=None, created_at=1000.0,
                        expires_at=1600.0)
    assert outcome(decide(approval, Status.APPROVED, Via.REACTION, at=1100.0, by=ALICE)) is RegStatus.APPROVED
    assert outcome(decide(approval, Status.DENIED, Via.COMMAND, at=1100.0, by=ALICE)) is RegStatus.DENIED
    assert outcome(decide(approval, Status.EXPIRED, Via.TIMEOUT, at=1600.0)) is RegStatus.EXPIRED


def test_a_did_is_a_valid_agent_id_and_an_approved_registration_is_an_agent():
    did = new_did()
    assert did.startswith(DID_PREFIX) and did != new_did()
    agent = _registration(status=RegStatus.APPROVED, agent_did=did).agent()
    assert (agent.id, agent.label, str(agent.workspace_path)) == (did, "Research agent", "/agents/9")


# -- the store --------------------------------------------------------------------------------


@pytest.fixture
def stores():
    approvals = ApprovalStore(sqlite3.connect(":memory:"))
    return RegistrationStore(approvals.connection), approvals


def test_registrations_round_trip_and_are_found_by_request_and_did(stores):
    registrations, _ = stores
    registration = _registration(request_id="r1")
    registrations.create(registration)
    assert registrations.get("reg_1") == registration
    assert registrations.by_request("gateway", "r1") == registration and registrations.pending() == [registration]
    with_did = registrations.set_did("reg_1", "did:lambda:agent:a")
    # A set-up done again after a crash keeps the first DID.
    assert registrations.set_did("reg_1", "did:lambda:agent:b").agent_did == with_did.agent_did == "did:lambda:agent:a"
    assert registrations.by_did("did:lambda:agent:a") == with_did


def test_only_the_first_move_is_written_and_the_callback_is_due_with_the_final_record(stores):
    registrations, approvals = stores
    registration = _registration()
    registrations.create(registration, signing_key="la_token")
    assert approvals.due_callbacks(now=10**10) == []  # held until final
    approved = move(registration, RegStatus.APPROVED, agent_did="did:lambda:agent:a", room_id="!r:x", decided_by=ALICE)
    assert registrations.settle(approved, now=1100.0)
    assert not registrations.settle(move(registration, RegStatus.EXPIRED), now=1600.0)
    (callback,) = approvals.due_callbacks(now=1100.0)
    body = json.loads(callback.body)
    assert callback.signing_key == "la_token" and callback.approval_id == "reg_1"
    assert (body["status"], body["agent_did"], body["room_id"]) == ("approved", "did:lambda:agent:a", "!r:x")
    assert registrations.agents() == [approved] and registrations.pending() == []


def test_a_deregistered_agent_keeps_its_record_and_owes_no_second_callback(stores):
    registrations, approvals = stores
    registration = _registration(callback_url=None)
    registrations.create(registration)
    approved = move(registration, RegStatus.APPROVED, agent_did="did:lambda:agent:a")
    registrations.settle(approved, now=1100.0)
    gone = move(approved, RegStatus.DEREGISTERED, deregistered_at=2000.0)
    assert registrations.settle(gone, now=2000.0)
    assert not registrations.settle(gone, now=2001.0)
    assert registrations.get("reg_1") == gone and registrations.agents() == [gone]
    assert approvals.due_callbacks(now=10**10) == []
