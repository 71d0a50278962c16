"""A node process (``lambda-actors run --node-config node.toml``) in mode
``matrix`` joins the cluster room and runs a DAG through it, leading and
working (it accepts remote tasks): the real node tree's wiring of
``node/dag-cluster`` (the several-process cases are tests/e2e/test_e2e_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import trio

from harness.node import NodeProcess
from harness.synapse import SyncCursor
from lambda_actors.dag import status as st
from lambda_actors.matrix.errors import MatrixError
from lambda_actors.matrix.events import OtherEvent, parse_events
from lambda_actors.node.config import new_token


def node_account(stack) -> str:
    return stack.bot_user.user_id


async def test_a_node_process_in_mode_matrix_runs_a_dag_through_the_cluster_room(bot_stack, tmp_path, matrix_user, matrix_client):
    await bot_stack.stop_bot()
    token, digest = new_token()
    room = f"#cluster-proc-{os.urandom(3).hex()}:{bot_stack.homeserver.server_name}"
    node = NodeProcess(
        bot_stack, tmp_path,
        f'node_id = "node-a"\n[[api.clients]]\nname = "ci"\ntoken_sha256 = "{digest}"\nscopes = ["dag"]\n'
        f'[dag]\nexecution_mode = "matrix"\naccept_remote_tasks = true\n[dag.cluster]\nroom = "{room}"\n',
    )
    await node.start(healthy=False)
    try:
        dag = tmp_path / "d.toml"
        dag.write_text(
            'dag_id = "proc"\n[[tasks]]\nid = "one"\nagent = "agent-0"\nprompt = "hello"\n'
            '[[tasks]]\nid = "two"\ndeps = ["one"]\nagent = "agent-0"\nprompt = "again {{ one.output }}"\n'
        )
        env = {**os.environ, "LAMBDA_API_TOKEN": token}
        reader = matrix_client(matrix_user("reader"))
        with trio.fail_after(30):
            while True:
                try:
                    room_id = await reader.join(room)  # the node makes the room as it starts
                    break
                except MatrixError:
                    await trio.sleep(0.2)  # not made yet: the node's start-up is its own pace
        cursor = await SyncCursor.start(reader)
        with trio.fail_after(90):
            while True:
                # In a thread: the fake agents in this process must keep answering.
                result = await trio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [sys.executable, "-m", "lambda_actors.cli", "dag", "run", str(dag), "--follow", "--api", node.url],
                        env=env, capture_output=True, text=True, timeout=80,
                    )
                )
                if result.returncode != 4 or "retry in a few seconds" not in result.stderr:
                    break
                await trio.sleep(0.5)  # the driver reads the room first, or is not up yet (503 meanwhile)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.split()[1].rstrip(":")
        async with httpx.AsyncClient(base_url=f"{node.url}/api/v1/dag", headers={"Authorization": f"Bearer {token}"}) as client:
            run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "completed" and [t["status"] for t in run["tasks"]] == ["completed", "completed"]
        # The room has the run: offered, claimed by node-a itself, ended by node-a.
        end = await cursor.wait_for(
            lambda e: isinstance(e, OtherEvent) and e.event_type == st.RUN_COMPLETED and e.content.get("run_id") == run_id,
            within=30,
        )
        assert end.sender == node_account(bot_stack)
        page = await reader.messages(room_id, direction="f", limit=200)
        events = [e for e in parse_events(room_id, page["chunk"]) if isinstance(e, OtherEvent)]
        claims = [e.content["claimed_by"] for e in events if e.event_type == st.TASK_CLAIMED and e.content["run_id"] == run_id]
        assert claims == ["node-a", "node-a"]
    finally:
        await bot_stack.stop_bot()
