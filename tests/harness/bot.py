"""pytest fixtures: the whole bot on loopback, and scripted users to talk to it.

``bot_stack`` starts, inside the test's nursery: two fake agents, an
agents.yaml naming them, the bot (logged in as a fresh Matrix user on the
session Synapse) with short timeouts, and gives back a :class:`BotStack` to
make scripted users (``await stack.user("alice")``, already mapped to an
agent and syncing) and to restart the bot (``await stack.restart()``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from lambda_actors.actors.node import run_bot
from lambda_actors.actors.services import Timing
from lambda_actors.agent.fake import FakeAgent
from lambda_actors.bot.config import MatrixSettings, Secret, parse_agents_config
from lambda_actors.homeserver import Homeserver, RegisteredUser
from lambda_actors.loopback.user import ScriptedUser
from lambda_actors.matrix import MatrixClient
from lambda_actors.supervision_config import parse_supervision_config

#: Timeouts short enough for tests, long enough never to fire by accident.
TEST_TIMING = Timing(
    agent_connect_timeout=5.0,
    agent_status_timeout=2.0,
    agent_idle_timeout=3.0,
    confirmation_timeout=30.0,
    edit_interval=0.2,
    sync_timeout_ms=5_000,
)

#: Agents park quickly in tests: 2 crashes of an agent's connections → park.
TEST_SUPERVISION = """
[node.agents]
on_exhausted = "park"
intensity = 0
period = 60.0
cool_down = 30.0

[node.agents."*"]
on_exhausted = "escalate"
intensity = 1
period = 60.0

[node.agents."*"."*"]
restart = "transient"

[node.agents."*"."*".backoff]
min = 0.05
max = 0.2
"""


@dataclass
class BotStack:
    synapse: Homeserver
    bot_user: RegisteredUser
    agents: list[FakeAgent]
    config_text: str
    data_dir: Path
    nursery: trio.Nursery
    make_user: Any
    clients: list[MatrixClient] = field(default_factory=list)
    supervisor: Any = None
    _stop: trio.Event | None = None
    _stopped: trio.Event | None = None

    @property
    def bot_id(self) -> str:
        return self.bot_user.user_id

    async def start(self) -> None:
        settings = MatrixSettings(self.synapse.url, self.bot_user.user_id, password=Secret(self.bot_user.password))
        agents = parse_agents_config(self.config_text, source="test agents.yaml")
        supervision = parse_supervision_config(TEST_SUPERVISION, "test supervision.toml")
        self._stop, self._stopped = trio.Event(), trio.Event()
        stop, stopped = self._stop, self._stopped

        async def serve(task_status: trio.TaskStatus[Any]) -> None:
            try:
                await run_bot(settings, agents, supervision, self.data_dir, stop, timing=TEST_TIMING, task_status=task_status)
            finally:
                stopped.set()

        self.supervisor = await self.nursery.start(serve)

    async def stop(self) -> None:
        assert self._stop is not None and self._stopped is not None
        self._stop.set()
        await self._stopped.wait()

    async def user(self, name: str = "alice") -> ScriptedUser:
        """A scripted user (configured for agent ``users[name]``), syncing."""
        registered = self.make_user(name)
        client = MatrixClient(self.synapse.url, access_token=registered.access_token, user_id=registered.user_id)
        self.clients.append(client)
        user = ScriptedUser(client, sync_timeout_ms=2_000)
        await self.nursery.start(user.run)
        return user


_numbers = itertools.count()


def agents_yaml(agents: list[FakeAgent], users: dict[str, str]) -> str:
    lines = ["user_agents:"]
    lines += [f'  "{user}": {agent}' for user, agent in users.items()] or ["  {}"]
    lines.append("default_agent: null")
    lines.append("agents:")
    for n, agent in enumerate(agents):
        lines += [
            f"  - id: agent-{n}",
            f'    label: "Agent {n}"',
            f'    base_url: "{agent.base_url}"',
            f'    workspace_path: "{agent.workspace}"',
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def bot_stack(synapse, matrix_user, fake_agent, nursery, tmp_path):
    """The bot with two fake agents; users named alice* → agent-0, bob* → agent-1."""
    agents = [await fake_agent(chunks=3), await fake_agent(chunks=3)]
    bot_user = matrix_user("bot")
    registered: dict[str, RegisteredUser] = {}

    def make_user(name: str) -> RegisteredUser:
        user = matrix_user(name)
        registered[name] = user
        return user

    stack = BotStack(synapse, bot_user, agents, "", tmp_path / f"bot-data-{next(_numbers)}", nursery, make_user)
    # Users are registered before the bot starts, so their ids can be in agents.yaml.
    for name in ("alice", "bob", "carol"):
        make_user(name)
    mapping = {registered["alice"].user_id: "agent-0", registered["bob"].user_id: "agent-1", registered["carol"].user_id: "agent-0"}
    stack.config_text = agents_yaml(agents, mapping)
    names = iter(["alice", "bob", "carol"])

    def hand_out(name: str) -> RegisteredUser:
        if name in registered and name in ("alice", "bob", "carol"):
            return registered[name]
        return matrix_user(name)

    stack.make_user = hand_out
    await stack.start()
    yield stack
    if stack._stop is not None and not stack._stop.is_set():
        await stack.stop()
    for client in stack.clients:
        await client.aclose()
