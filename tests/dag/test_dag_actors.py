"""The DAG actors on one node, in-process: real fake agents, a real store, no
Matrix (execution_mode local). Waits are on the runs' own event streams."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from dag_node import HeldGate, dag_node
from lambda_actors.dag.actors.services import Watchers
from lambda_actors.dag.actors.task import chat_id_for
from lambda_actors.dag.scheduler import RunStatus
from lambda_actors.dag.status import LogicalEvent
from lambda_actors.dag.store import AttemptStatus, TerminalState

pytestmark = pytest.mark.filterwarnings("ignore::trio.TrioDeprecationWarning")


def dag(*tasks: str, head: str = "") -> str:
    return f'dag_id = "t"\n{head}\n' + "\n".join(tasks)


def task(task_id: str, prompt: str = "hi", deps: tuple[str, ...] = (), **extra: object) -> str:
    lines = ["[[tasks]]", f'id = "{task_id}"', 'agent = "agent-0"', f"prompt = {prompt!r}".replace("'", '"')]
    if deps:
        lines.append("deps = [" + ", ".join(f'"{d}"' for d in deps) + "]")
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def test_diamond_runs_in_dependency_order(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        run_id = await node.start(dag(task("a"), task("b", deps=("a",)), task("c", deps=("a",)), task("d", deps=("b", "c"))))
        run = await node.finished(run_id)
        assert run.status is RunStatus.COMPLETED
        assert node.statuses(run_id) == dict.fromkeys("abcd", "completed")
        seq = {(c["task_id"], c["status"]): i for i, (t, c) in enumerate(node.events(run_id)) if t == "cis.dag.task.status"}
        assert seq[("a", "completed")] < seq[("b", "running")] and seq[("a", "completed")] < seq[("c", "running")]
        assert seq[("b", "completed")] < seq[("d", "running")] and seq[("c", "completed")] < seq[("d", "running")]
        # Each task ran once, each on a chat of its own, with its session id kept.
        agent = node.agents["agent-0"]
        assert sorted(agent.connections) == sorted(chat_id_for(run_id, t, 1) for t in "abcd")
        assert {a.session_id for a in node.store.attempts(run_id)} == {f"{run_id}:{t}" for t in "abcd"}
        types = [t for t, _ in node.events(run_id)]
        assert types[0] == "cis.dag.run.created" and types[1] == "cis.dag.run.started"
        assert types[-1] == "cis.dag.run.completed"


async def test_a_node_that_does_not_broadcast_keeps_no_status_events(tmp_path: Path) -> None:
    # execution_mode local: nobody would ever send them, so none pile up.
    async with dag_node(tmp_path, status_outbox=False) as node:
        run_id = await node.start(dag(task("a"), task("b", deps=("a",))))
        assert (await node.finished(run_id)).status is RunStatus.COMPLETED
        assert node.store.status_backlog() == 0 and node.events(run_id) == []


async def test_upstream_output_is_in_the_prompt(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        run_id = await node.start(dag(task("a", "hello"), task("b", "Plan from: {{ a.output }}", deps=("a",))))
        await node.finished(run_id)
        agent = node.agents["agent-0"]
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == ["Plan from: echo: hello"]
        assert node.store.output(run_id, "b").text == "echo: Plan from: echo: hello"


async def test_a_failed_attempt_is_retried_then_succeeds(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        node.agents["agent-0"].misbehave("error", times=1)
        run_id = await node.start(dag(task("a", retries=2)))
        run = await node.finished(run_id)
        assert run.status is RunStatus.COMPLETED
        attempts = node.store.attempts(run_id, "a")
        assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.COMPLETED]
        assert "fake agent failed on purpose" in (attempts[0].reason or "")
        # The retry is a new chat: a fresh agent context.
        assert node.agents["agent-0"].connections[chat_id_for(run_id, "a", 2)] == 1
        statuses = [c["status"] for t, c in node.events(run_id) if t == "cis.dag.task.status"]
        assert statuses == ["running", "pending", "running", "completed"]


async def test_retries_exhausted_fail_the_run_and_skip_downstream(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        run_id = await node.start(
            dag(task("a", "[[error]]", retries=1), task("b", deps=("a",)), task("c", deps=("b",)), task("x"))
        )
        run = await node.finished(run_id)
        assert run.status is RunStatus.FAILED
        assert node.statuses(run_id) == {"a": "failed", "b": "skipped", "c": "skipped", "x": "completed"}
        assert node.store.task(run_id, "a").attempts == 2
        assert "upstream task 'a' failed" in (node.store.task(run_id, "b").reason or "")
        assert node.events(run_id)[-1][0] == "cis.dag.run.failed"


async def test_a_task_past_its_timeout_fails(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        run_id = await node.start(dag(task("a", "[[stall]]", timeout=1)))
        run = await node.finished(run_id)
        assert run.status is RunStatus.FAILED
        assert node.store.task(run_id, "a").reason == "timed out"
        # The stalled socket was closed with the attempt.
        await node.agents["agent-0"].wait_until(lambda: not node.agents["agent-0"].open_chats)


async def test_pause_stops_new_starts_and_resume_carries_on(tmp_path: Path) -> None:
    async with dag_node(tmp_path, slow_interval=0.05) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(dag(task("a", "[[slow]]"), task("b", deps=("a",))))
        await agent.wait_for_message(chat_id=chat_id_for(run_id, "a", 1))
        await node.control.pause(run_id)
        assert node.store.run(run_id).status is RunStatus.PAUSED
        # The running task finishes; nothing new starts.
        await node.until(run_id, lambda: node.statuses(run_id)["a"] == "completed")
        assert node.statuses(run_id)["b"] == "pending"
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == []
        await node.control.resume(run_id)
        run = await node.finished(run_id)
        assert run.status is RunStatus.COMPLETED
        types = [t for t, _ in node.events(run_id) if t.startswith("cis.dag.run.")]
        assert types == ["cis.dag.run.created", "cis.dag.run.started", "cis.dag.run.paused",
                         "cis.dag.run.started", "cis.dag.run.completed"]


async def test_cancel_mid_task_writes_terminal_states(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(dag(task("a", "[[stall]]"), task("b", deps=("a",))))
        await agent.wait_for_message(chat_id=chat_id_for(run_id, "a", 1))
        await node.control.cancel(run_id)
        run = node.store.run(run_id)
        assert run.status is RunStatus.CANCELLED and run.finished_at is not None
        assert node.statuses(run_id) == {"a": "cancelled", "b": "cancelled"}
        assert [a.status for a in node.store.attempts(run_id, "a")] == [AttemptStatus.CANCELLED]
        await agent.wait_until(lambda: not agent.open_chats)
        with pytest.raises(TerminalState):
            await node.control.cancel(run_id)
        assert node.events(run_id)[-1][0] == "cis.dag.run.cancelled"


@pytest.mark.parametrize("approved", [True, False])
async def test_a_blocked_task_waits_for_its_owner(tmp_path: Path, approved: bool) -> None:
    gate = HeldGate()
    async with dag_node(tmp_path, gate=gate) as node:
        run_id = await node.start(dag(task("a", "go [[confirm]]"), head='owner = "@alice:example.org"'))
        await gate.wait_asked()
        ask = gate.asks[0]
        assert (ask.session_id, ask.owner, ask.action) == (f"{run_id}:a", "@alice:example.org", "delete_file")
        await node.until(run_id, lambda: node.statuses(run_id)["a"] == "blocked")
        gate.answer(ask.session_id, approved)
        run = await node.finished(run_id)
        assert run.status is RunStatus.COMPLETED
        verdict = "approved" if approved else "denied"
        assert verdict in node.store.output(run_id, "a").text
        types = [t for t, _ in node.events(run_id)]
        assert types.index("cis.dag.session.blocked") < types.index("cis.dag.session.recovered")
        statuses = [c["status"] for t, c in node.events(run_id) if t == "cis.dag.task.status"]
        assert statuses == ["running", "blocked", "running", "completed"]


async def test_higher_priority_runs_get_free_slots_first(tmp_path: Path) -> None:
    async with dag_node(tmp_path, max_workers=1) as node:
        agent = node.agents["agent-0"]
        blocker = await node.start(dag(task("hold", "[[stall]]")).replace('dag_id = "t"', 'dag_id = "blocker"'))
        await agent.wait_for_message(chat_id=chat_id_for(blocker, "hold", 1))
        low = await node.start(dag(task("l1", "low 1"), task("l2", "low 2"), head='priority = "low"').replace('"t"', '"low"'))
        high = await node.start(dag(task("h1", "high 1"), task("h2", "high 2"), head='priority = "high"').replace('"t"', '"high"'))
        assert node.statuses(low) == {"l1": "pending", "l2": "pending"}
        await node.control.cancel(blocker)
        await node.finished(low)
        await node.finished(high)
        texts = [m for m in agent.received_messages() if m.startswith(("low", "high"))]
        assert texts == ["high 1", "high 2", "low 1", "low 2"]


async def test_a_command_task_runs_with_capped_output(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        node.parts.services.command_output_cap = 10
        toml = 'dag_id = "cmd"\n[[tasks]]\nid = "echo"\ncommand = ["sh", "-c", "printf 0123456789abcdef"]\n' \
               '[[tasks]]\nid = "bad"\ncommand = ["sh", "-c", "echo oops; exit 3"]\n'
        run_id = await node.start(toml)
        run = await node.finished(run_id)
        assert run.status is RunStatus.FAILED
        assert node.store.output(run_id, "echo").text == "0123456789\n[output cut: 6 more bytes]"
        assert node.store.task(run_id, "bad").reason == "exit status 3: oops"


async def test_a_stopped_node_resumes_its_run_with_new_attempts(tmp_path: Path) -> None:
    database = tmp_path / "bot.sqlite3"
    async with dag_node(tmp_path, database=database) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(dag(task("a"), task("b", "[[stall]]", deps=("a",)), task("c", deps=("b",))))
        await agent.wait_for_message(chat_id=chat_id_for(run_id, "b", 1))
        # The tree stops with the run mid-task (as a killed node leaves it).
    async with dag_node(tmp_path, database=database) as node:
        agent = node.agents["agent-0"]
        await agent.wait_for_message(chat_id=chat_id_for(run_id, "b", 2))
        assert node.statuses(run_id)["a"] == "completed"
        assert [a.status for a in node.store.attempts(run_id, "b")] == [AttemptStatus.INTERRUPTED, AttemptStatus.RUNNING]
        assert agent.connections[chat_id_for(run_id, "a", 2)] == 0  # completed stays completed
        await node.control.cancel(run_id)
        assert node.store.run(run_id).status is RunStatus.CANCELLED


@pytest.mark.parametrize("reuse", [False, True])
async def test_a_scope_worker_is_started_on_demand_and_kept_only_with_reuse_worker(tmp_path: Path, reuse: bool) -> None:
    from lambda_actors.runtime.events import Exited

    async with dag_node(tmp_path) as node:
        dag_sup = node.sup.registry.supervisor("node/dag")
        assert [c.name for c in dag_sup.which_children()] == ["runs"]
        head = f'scope = "project:abc"\nreuse_worker = {"true" if reuse else "false"}'
        with dag_sup.subscribe() as events:
            run_id = await node.start(dag(task("a"), head=head))
            assert "worker-project-abc" in [c.name for c in dag_sup.which_children()]
            await node.finished(run_id)
            if not reuse:
                async for event in events:
                    if isinstance(event, Exited) and event.path == "node/dag/worker-project-abc":
                        break
        names = [c.name for c in dag_sup.which_children()]
        assert ("worker-project-abc" in names) is reuse
        if reuse:
            # The next run of the scope runs in the same worker.
            second = await node.start(dag(task("b"), head=head))
            assert (await node.finished(second)).status is RunStatus.COMPLETED


async def test_the_next_tasks_socket_opens_while_its_upstream_works(tmp_path: Path) -> None:
    async with dag_node(tmp_path, slow_interval=0.2) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(dag(task("a", "[[slow]]"), task("b", "after {{ a.output }}", deps=("a",))))
        await agent.wait_for_connections(chat_id_for(run_id, "b", 1))
        # Open ahead, but nothing sent before its turn.
        assert node.statuses(run_id) == {"a": "running", "b": "pending"}
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == []
        await node.finished(run_id)
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == ["after echo: "]
        assert agent.connections[chat_id_for(run_id, "b", 1)] == 1


async def test_a_socket_opened_ahead_closes_when_its_task_is_skipped(tmp_path: Path) -> None:
    async with dag_node(tmp_path, slow_interval=0.2) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(dag(task("a", "[[slow]] [[error]]"), task("b", deps=("a",))))
        await agent.wait_for_connections(chat_id_for(run_id, "b", 1))
        run = await node.finished(run_id)
        assert run.status is RunStatus.FAILED and node.statuses(run_id)["b"] == "skipped"
        await agent.wait_until(lambda: not agent.open_chats)
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == []


async def test_a_crashed_run_actor_carries_on_from_the_store(tmp_path: Path) -> None:
    async with dag_node(tmp_path) as node:
        agent = node.agents["agent-0"]
        agent.misbehave("stall", times=1)
        run_id = await node.start(dag(task("a"), task("b", deps=("a",))))
        await agent.wait_for_message(chat_id=chat_id_for(run_id, "a", 1))
        assert node.sup.kill(f"node/dag/worker-global/{run_id}", "test")
        run = await node.finished(run_id)
        assert run.status is RunStatus.COMPLETED
        # The attempt cut by the crash is interrupted (no retry used up); a new one ran on a new chat.
        assert [a.status for a in node.store.attempts(run_id, "a")] == [AttemptStatus.INTERRUPTED, AttemptStatus.COMPLETED]
        assert agent.received_messages(chat_id_for(run_id, "a", 2)) == ["hi"]
        await agent.wait_until(lambda: chat_id_for(run_id, "a", 1) not in agent.open_chats)


async def test_sockets_open_two_steps_ahead_down_a_chain_and_nothing_is_sent_early(tmp_path: Path) -> None:
    async with dag_node(tmp_path, slow_interval=0.2) as node:
        agent = node.agents["agent-0"]
        run_id = await node.start(
            dag(task("a", "[[slow]]"), task("b", "b", deps=("a",)), task("c", "c", deps=("b",)), task("d", "d", deps=("c",)))
        )
        # While a works, b's and c's sockets are open (c waits on b, itself open ahead); not d's.
        await agent.wait_for_connections(chat_id_for(run_id, "c", 1))
        assert node.statuses(run_id) == {"a": "running", "b": "pending", "c": "pending", "d": "pending"}
        assert chat_id_for(run_id, "d", 1) not in agent.connections
        assert agent.received_messages(chat_id_for(run_id, "b", 1)) == []
        assert agent.received_messages(chat_id_for(run_id, "c", 1)) == []
        assert (await node.finished(run_id)).status is RunStatus.COMPLETED
        for t in "bcd":
            assert agent.received_messages(chat_id_for(run_id, t, 1)) == [t]
            assert agent.connections[chat_id_for(run_id, t, 1)] == 1


async def test_the_node_checkpoints_its_store_off_the_trio_thread(tmp_path: Path) -> None:
    database = tmp_path / "bot.sqlite3"
    async with dag_node(tmp_path, database=database) as node:
        send, checkpoints = trio.open_memory_channel[None](100)
        token = trio.lowlevel.current_trio_token()
        checkpoint = node.store.checkpoint

        def on_a_worker_thread() -> bool:
            assert threading.current_thread() is not threading.main_thread()
            done = checkpoint()
            trio.from_thread.run_sync(send.send_nowait, None, trio_token=token)
            return done

        node.store.checkpoint = on_a_worker_thread  # type: ignore[method-assign]  # observed, still the real one
        run_id = await node.start(dag(task("a"), task("b", deps=("a",))))
        assert (await node.finished(run_id)).status is RunStatus.COMPLETED
        # What the run wrote reaches the database file itself, not only its
        # WAL, by the checkpoint that follows its last commit.
        with trio.fail_after(10):
            while _run_status_in_file_alone(database, tmp_path / "copy.sqlite3", run_id) != "completed":
                await checkpoints.receive()


def _run_status_in_file_alone(database: Path, copy: Path, run_id: str) -> str | None:
    copy.write_bytes(database.read_bytes())
    db = sqlite3.connect(copy)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'dag_runs'").fetchone():
            return None
        row = db.execute("SELECT status FROM dag_runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


async def test_a_watcher_gets_a_step_larger_than_its_buffer_whole_and_one_behind_by_more_steps_is_dropped() -> None:
    watchers = Watchers(buffer=2)
    events = [LogicalEvent("cis.dag.task.status", {"task_id": f"t{i}"}) for i in range(10)]
    async with watchers.watch("r") as feed:
        watchers.publish("r", events)  # one step of 10 events: more than the buffer, kept whole
        watchers.publish("r", events[:1])
        got = [await feed.__anext__() for _ in range(11)]
        assert got == events + events[:1]
        for _ in range(3):  # three steps unread: one more than it may fall behind by
            watchers.publish("r", events[:1])
        assert watchers.count("r") == 0
        assert [e async for e in feed] == events[:1] * 2  # what it held, then its stream ends
