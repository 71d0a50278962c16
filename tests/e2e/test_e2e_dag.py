"""End to end: a DAG run on the node as a real ``lambda-actors run`` process
(execution_mode local: the run itself needs no Matrix; the bot still logs in
to a real Synapse), driven by the CLI and the HTTP API, against the stack's
fake agents. The node is SIGKILLed mid-run and started again."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import httpx
import trio

from harness.chat import onboard
from harness.node import NodeProcess
from lambda_actors.approvals.prompt import APPROVAL_KEY
from lambda_actors.dag.actors.task import chat_id_for
from lambda_actors.node.config import new_token

class DagNode(NodeProcess):
    def __init__(self, stack, tmp_path) -> None:
        self.token, digest = new_token()
        super().__init__(
            stack, tmp_path,
            f'[[api.clients]]\nname = "ci"\ntoken_sha256 = "{digest}"\nscopes = ["dag"]\n'
            '[dag]\nexecution_mode = "local"\n',
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"{self.url}/api/v1/dag", headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAMBDA_API_TOKEN": self.token}
        # In a thread: the fake agents in this process must keep answering.
        return await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "lambda_actors.cli", "dag", *args, "--api", self.url],
                env=env, capture_output=True, text=True, timeout=60,
            )
        )

    async def until_final(self, run_id: str) -> dict:
        """The run once final, read from its event stream (which ends with the run)."""
        async with self.client() as client:
            with trio.fail_after(60):
                async with client.stream("GET", f"/runs/{run_id}/events", timeout=None) as response:
                    async for _ in response.aiter_lines():
                        pass
            return (await client.get(f"/runs/{run_id}")).json()


def _prompts(user) -> list:
    return [s for s in user.seen if APPROVAL_KEY in s.content and "m.relates_to" not in s.content]


async def test_a_dag_runs_through_the_cli_and_resumes_after_a_sigkill(bot_stack, tmp_path):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await bot_stack.stop_bot()
    node = DagNode(bot_stack, tmp_path)
    await node.start(healthy=False)
    try:
        # -- blocked tasks: the owner is asked in her room with the agent (local
        # mode: no status room), approves the first and denies the second.
        async with node.client() as client:
            published = (await client.post("/publish", content=(
                f'dag_id = "asks"\nowner = "{alice.user_id}"\n'
                '[[tasks]]\nid = "first"\nagent = "agent-0"\nprompt = "clean [[confirm]]"\n'
                '[[tasks]]\nid = "second"\ndeps = ["first"]\nagent = "agent-0"\nprompt = "deploy [[confirm]]"\n'
            ), headers={"Content-Type": "application/toml"})).json()
            asks = (await client.post(f"/{published['dag_id']}/confirm")).json()["run_id"]
            for count, answer in ((1, "!yes"), (2, "!no")):
                prompt = await alice.wait_until(lambda: len(_prompts(alice)) >= count and _prompts(alice)[count - 1])
                assert prompt.room_id == chat1 and "delete_file" in prompt.content["body"]
                assert (await client.get(f"/runs/{asks}")).json()["tasks"][count - 1]["status"] == "blocked"
                await alice.say(chat1, answer)
        run = await node.until_final(asks)
        assert run["status"] == "completed"
        agent = bot_stack.agents[0]
        async with node.client() as client:
            first = (await client.get(f"/runs/{asks}/tasks/first/output")).json()["output"]
            second = (await client.get(f"/runs/{asks}/tasks/second/output")).json()["output"]
        assert "approved" in first and "denied" in second
        assert agent.received_messages(chat_id_for(asks, "first", 1)) == ["clean [[confirm]]"]

        # A run cancelled while its task asks: the question is withdrawn (its prompt is edited to say so).
        async with node.client() as client:
            again = (await client.post("/asks/confirm")).json()["run_id"]
            prompt = await alice.wait_until(lambda: len(_prompts(alice)) >= 3 and _prompts(alice)[2])
            assert (await client.post(f"/runs/{again}/cancel")).json()["status"] == "cancelled"
        await alice.wait_until(lambda: any(
            (s.content.get("m.relates_to") or {}).get("event_id") == prompt.event_id
            and (s.content.get("m.relates_to") or {}).get("rel_type") == "m.replace" for s in alice.seen
        ))

        # -- dag run FILE --follow: published, confirmed, followed to the end.
        diamond = tmp_path / "diamond.toml"
        diamond.write_text(
            'dag_id = "diamond"\n'
            '[[tasks]]\nid = "a"\nagent = "agent-0"\nprompt = "start"\n'
            '[[tasks]]\nid = "b"\ndeps = ["a"]\nagent = "agent-0"\nprompt = "left of {{ a.output }}"\n'
            '[[tasks]]\nid = "c"\ndeps = ["a"]\nagent = "agent-1"\nprompt = "right"\n'
            '[[tasks]]\nid = "d"\ndeps = ["b", "c"]\nagent = "agent-0"\nprompt = "join"\n'
        )
        followed = await node.cli("run", str(diamond), "--follow")
        assert followed.returncode == 0, followed.stderr
        run_id = followed.stdout.split()[1].rstrip(":")
        assert "task d completed" in followed.stdout and "run completed 4/4" in followed.stdout
        assert bot_stack.agents[0].received_messages(chat_id_for(run_id, "b", 1)) == ["left of echo: start"]
        listed = await node.cli("list")
        assert listed.returncode == 0 and run_id in listed.stdout
        refused = await node.cli("cancel", run_id)
        assert refused.returncode == 1 and "terminal state" in refused.stderr

        # -- SIGKILL mid-run: the run resumes on start, the cut task as a new attempt.
        slow_agent = bot_stack.agents[1]
        slow_agent.misbehave("stall", times=1)
        async with node.client() as client:
            published = (await client.post("/publish", content=(
                'dag_id = "chain"\n'
                '[[tasks]]\nid = "first"\nagent = "agent-0"\nprompt = "one"\n'
                '[[tasks]]\nid = "cut"\ndeps = ["first"]\nagent = "agent-1"\nprompt = "two"\n'
                '[[tasks]]\nid = "last"\ndeps = ["cut"]\nagent = "agent-0"\nprompt = "three"\n'
            ), headers={"Content-Type": "application/toml"})).json()
            chain = (await client.post(f"/{published['dag_id']}/confirm")).json()["run_id"]
        with trio.fail_after(30):
            await slow_agent.wait_for_message(chat_id=chat_id_for(chain, "cut", 1))
        bot_stack.kill_bot_process()
        await node.start(healthy=False)
        run = await node.until_final(chain)
        assert run["status"] == "completed"
        tasks = {t["task_id"]: t for t in run["tasks"]}
        assert [a["status"] for a in tasks["first"]["history"]] == ["completed"]
        assert [a["status"] for a in tasks["cut"]["history"]] == ["interrupted", "completed"]
        assert [a["status"] for a in tasks["last"]["history"]] == ["completed"]
        # The agent saw the re-run as a new attempt: a chat of its own, the same prompt.
        assert slow_agent.received_messages(chat_id_for(chain, "cut", 2)) == ["two"]
        assert bot_stack.agents[0].connections[chat_id_for(chain, "first", 2)] == 0
    finally:
        await bot_stack.terminate_bot_process()
    # Every task ended once (one completed attempt each, above), and a node in
    # local mode, which has nobody to send status events to, kept none.
    db = sqlite3.connect(bot_stack.data_dir / "bot.sqlite3")
    try:
        (kept,) = db.execute("SELECT COUNT(*) FROM dag_status_events").fetchone()
    finally:
        db.close()
    assert kept == 0
