"""End to end: the approval gate (SPEC 7.1) with a real Synapse, the node as
a real ``lambda-actors run`` process, and a callback receiver of our own."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from harness.chat import onboard
from harness.node import NodeProcess
from lambda_actors.approvals.prompt import APPROVAL_KEY
from lambda_actors.loopback.homeserver import free_port
from lambda_actors.node.config import new_token


class Node(NodeProcess):
    """The bot as a process with its HTTP API, and a client of that API."""

    def __init__(self, stack, tmp_path) -> None:
        self.token, digest = new_token()
        self.reader_token, reader_digest = new_token()
        super().__init__(
            stack, tmp_path,
            f'[[api.clients]]\nname = "gateway"\ntoken_sha256 = "{digest}"\nscopes = ["approvals"]\n'
            f'[[api.clients]]\nname = "reader"\ntoken_sha256 = "{reader_digest}"\nscopes = ["dag"]\n',
        )

    async def request(self, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=90) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    async def ask(self, **body) -> dict:
        response = await self.request("POST", "/api/v1/delivery/approval-request", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def read(self, approval_id: str, wait: int = 0) -> dict:
        response = await self.request("GET", f"/api/v1/delivery/approval-request/{approval_id}?wait={wait}")
        return response.json()


@pytest.fixture
async def node(bot_stack, tmp_path):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await bot_stack.stop_bot()
    node = Node(bot_stack, tmp_path)
    await node.start()
    yield node, alice, chat1
    await bot_stack.terminate_bot_process()


def _prompt(alice, approval_id: str):
    return next(
        (s for s in alice.seen if (s.content.get(APPROVAL_KEY) or {}).get("id") == approval_id and "m.relates_to" not in s.content),
        None,
    )


def _final_text(alice, prompt_event_id: str) -> str | None:
    for seen in alice.seen:
        relates = seen.content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace" and relates.get("event_id") == prompt_event_id:
            return str((seen.content.get("m.new_content") or {}).get("body"))
    return None


async def _serve_receiver(nursery, failures: int):
    """A callback receiver that fails ``failures`` times, then accepts."""
    received: list[tuple[dict, bytes]] = []
    accepted = trio.Event()

    async def callback(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        if len(received) <= failures:
            return Response(status_code=503)
        accepted.set()
        return Response(status_code=204)

    config = Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.accesslog = config.errorlog = None
    binds = await nursery.start(lambda task_status: serve(Starlette(routes=[Route("/cb", callback, methods=["POST"])]), config, task_status=task_status))
    return f"{binds[0]}/cb", received, accepted


@pytest.fixture
async def receiver(nursery):
    """A callback receiver that fails three times (retried 1 s, 2 s, 4 s apart), then accepts."""
    return await _serve_receiver(nursery, failures=3)


@pytest.fixture
async def receiver_failing_once(nursery):
    """A callback receiver that fails once (one retry, 1 s later), then accepts: for a
    test whose subject is not the retry schedule (``receiver`` tests that)."""
    return await _serve_receiver(nursery, failures=1)


async def test_the_approver_decides_by_reaction_reply_and_command_and_is_never_guessed_for(node, receiver):
    node, alice, chat1 = node
    callback_url, received, accepted = receiver
    first = await node.ask(approver=alice.user_id, agent_id="agent-0", action="Delete the build folder",
                           details="rm -rf build/", callback_url=callback_url)
    assert first["status"] == "pending" and first["room_id"] == chat1
    prompt = await alice.wait_until(lambda: _prompt(alice, first["id"]))
    assert "Delete the build folder" in prompt.content["body"] and "rm -rf build/" in prompt.content["body"]
    second = await node.ask(approver=alice.user_id, agent_id="agent-0", action="Deploy to production")
    second_prompt = await alice.wait_until(lambda: _prompt(alice, second["id"]))

    # Two pending and a bare !yes: the bot asks which, and decides nothing.
    await alice.say(chat1, "!yes")
    await alice.notice(chat1, "Several requests are waiting for your answer here")
    assert [(await node.read(r["id"]))["status"] for r in (first, second)] == ["pending", "pending"]

    # A reaction on the first prompt approves it; the prompt says so.
    await alice.react(chat1, prompt.event_id, "✅")
    decided = await node.read(first["id"], wait=30)
    assert (decided["status"], decided["decided_by"], decided["decided_via"]) == ("approved", alice.user_id, "reaction")
    final = await alice.wait_until(lambda: _final_text(alice, prompt.event_id))
    assert f"✅ Approved by {alice.user_id}" in final

    # A !no in reply to the second prompt denies that one.
    await alice.say(chat1, "!no", reply_to=second_prompt.event_id)
    assert (await node.read(second["id"], wait=30))["status"] == "denied"

    # The callback: retried through three failures, delivered once, signed.
    with trio.fail_after(60):
        await accepted.wait()
    assert len(received) == 4
    assert len({headers["x-lambda-delivery"] for headers, _ in received}) == 1
    headers, body = received[-1]
    assert headers["x-lambda-signature"] == "sha256=" + hmac.new(node.token.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(body)["status"] == "approved"

    # The audit trail lists both, newest first.
    listed = (await node.request("GET", "/api/v1/delivery/approval-requests")).json()["approvals"]
    assert [r["id"] for r in listed[:2]] == [second["id"], first["id"]]

    # Someone else in the room answers a third request: nothing changes.
    # Then alice's bare !yes, with exactly one pending, decides it: the
    # room handles events in order, so had bob's ✅ or !yes counted, the
    # record would say so.
    third = await node.ask(approver=alice.user_id, agent_id="agent-0", action="Rotate the keys")
    third_prompt = await alice.wait_until(lambda: _prompt(alice, third["id"]))
    bob = await node.stack.scripted_user("bob")
    await alice.client.invite(chat1, bob.user_id)
    await bob.accept_invite("Chat 1")
    await bob.react(chat1, third_prompt.event_id, "✅")
    await bob.say(chat1, "!yes")
    await alice.say(chat1, "!yes")
    decided = await node.read(third["id"], wait=30)
    assert (decided["status"], decided["decided_by"], decided["decided_via"]) == ("approved", alice.user_id, "command")


async def test_idempotency_tokens_and_default_deny(node):
    node, alice, chat1 = node
    body = {"request_id": "gw-1", "approver": alice.user_id, "agent_id": "agent-0", "action": "Rotate keys", "timeout_s": 10}
    created = await node.request("POST", "/api/v1/delivery/approval-request", json=body)
    again = await node.request("POST", "/api/v1/delivery/approval-request", json=body)
    assert (created.status_code, again.status_code) == (201, 200) and again.json()["id"] == created.json()["id"]
    conflict = await node.request("POST", "/api/v1/delivery/approval-request", json={**body, "action": "Other"})
    assert conflict.status_code == 409
    assert (await node.request("POST", "/api/v1/delivery/approval-request", token="nope", json=body)).status_code == 401
    assert (await node.request("POST", "/api/v1/delivery/approval-request", token=node.reader_token, json=body)).status_code == 403
    prompt = await alice.wait_until(lambda: _prompt(alice, created.json()["id"]))
    prompts = [s for s in alice.seen if (s.content.get(APPROVAL_KEY) or {}).get("id") == created.json()["id"] and "m.relates_to" not in s.content]
    assert len(prompts) == 1  # the repeat posted nothing

    # Nobody answers: at the deadline it is expired, which means no.
    expired = await node.read(created.json()["id"], wait=30)
    assert (expired["status"], expired["decided_via"]) == ("expired", "timeout")
    final = await alice.wait_until(lambda: _final_text(alice, prompt.event_id))
    assert "Expired" in final and "no answer means no" in final

    # An agent's confirmation is the same kind of record, listed by the same API.
    asked = await alice.say(chat1, "may I [[confirm]]")
    await alice.wait_until(lambda: any("delete_file" in str(s.content.get("body", "")) for s in alice.seen))
    await alice.say(chat1, "!yes")
    assert "approved" in (await alice.answer(asked)).text
    listed = (await node.request("GET", "/api/v1/delivery/approval-requests")).json()["approvals"]
    assert [(r["source"], r["status"], r["approver"]) for r in listed] == [
        ("agent", "approved", alice.user_id), ("api", "expired", alice.user_id)
    ]

    # /metrics counted what passed (SPEC 7.3), with no user or room id in a label.
    metrics = (await node.request("GET", "/metrics")).text
    for line in ('lambda_approvals{status="approved"} 1.0', 'lambda_approvals{status="expired"} 1.0',
                 "lambda_turn_seconds_count 1.0", "lambda_turn_first_token_seconds_count 1.0"):
        assert line in metrics, line
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(samples['lambda_messages_received_total{kind="text"}']) >= 2  # the message and the !yes
    assert float(samples['lambda_matrix_sends_total{result="sent"}']) >= 4  # two prompts, two edits, the answer
    assert float(samples["lambda_answers_total"]) >= 1
    assert alice.user_id not in metrics and chat1 not in metrics


async def test_an_answer_given_while_the_node_is_down_counts_when_it_is_back(node, receiver_failing_once):
    node, alice, chat1 = node
    callback_url, received, accepted = receiver_failing_once
    created = await node.ask(approver=alice.user_id, agent_id="agent-0", action="Restart the cluster",
                             timeout_s=120, callback_url=callback_url)
    prompt = await alice.wait_until(lambda: _prompt(alice, created["id"]))
    node.stack.kill_bot_process()
    await alice.react(chat1, prompt.event_id, "❌")  # before the deadline, while the node is down
    await node.start()
    decided = await node.read(created["id"], wait=30)
    assert (decided["status"], decided["decided_via"]) == ("denied", "reaction")
    with trio.fail_after(60):
        await accepted.wait()
    assert len({headers["x-lambda-delivery"] for headers, _ in received}) == 1
    assert sum(1 for _, body in received if json.loads(body)["status"] == "denied") == len(received)
