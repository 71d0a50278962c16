"""pytest fixtures: the whole bot on loopback, and scripted users to talk to it.

``bot_stack`` is a :class:`~lambda_actors.loopback.stack.LoopbackStack` on the
session's Synapse: two fake agents, users ``alice`` and ``carol`` served by
``agent-0`` and ``bob`` by ``agent-1``, and the bot running in the test's
process with short timeouts and a supervision policy that parks an agent
quickly. ``await bot_stack.scripted_user("alice")`` gives a syncing user.
"""

from __future__ import annotations

import pytest

from lambda_actors.bot.actors.services import Timing
from lambda_actors.loopback.stack import open_loopback_stack
from lambda_actors.runtime.supervision_config import parse_supervision_config

#: Timeouts short enough for tests, long enough never to fire by accident.
TEST_TIMING = Timing(
    agent_connect_timeout=5.0,
    agent_status_timeout=2.0,
    agent_idle_timeout=3.0,
    confirmation_timeout=30.0,
    edit_interval=0.2,
    sync_timeout_ms=5_000,
)

#: An agent whose connections crash twice within a minute is parked for 30 s.
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

[node.agents."*"."*".backoff]
min = 0.05
max = 0.2
"""


@pytest.fixture
async def bot_stack(synapse, tmp_path):
    supervision = parse_supervision_config(TEST_SUPERVISION, "test supervision.toml")
    async with open_loopback_stack(
        tmp_path, users=("alice", "bob", "carol"), homeserver=synapse, timing=TEST_TIMING, supervision=supervision
    ) as stack:
        await stack.start_bot()
        yield stack
