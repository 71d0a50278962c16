"""pytest fixtures: the whole bot on loopback, and scripted users to talk to it.

``bot_stack`` is a :class:`~lambda_actors.loopback.stack.LoopbackStack` on the
session's Synapse: two fake agents, users ``alice`` and ``carol`` served by
``agent-0`` and ``bob`` by ``agent-1``, and the bot running in the test's
process with the loopback profile (``lambda_actors/loopback/profiles.py``:
short timeouts, and a policy that parks an agent at the second connection
crash within a minute). ``await bot_stack.scripted_user("alice")`` gives a
syncing user.
"""

from __future__ import annotations

import pytest

from lambda_actors.loopback.profiles import LOOPBACK, LOOPBACK_TIMING
from lambda_actors.loopback.stack import open_loopback_stack

#: The loopback profile's timing and policy, under the names tests import.
TEST_TIMING = LOOPBACK_TIMING
#: As TOML, for tests that start the bot as a process (``start_bot_process``).
TEST_SUPERVISION = LOOPBACK.toml()


@pytest.fixture
async def bot_stack(synapse, tmp_path):
    async with open_loopback_stack(
        tmp_path, users=("alice", "bob", "carol"), homeserver=synapse, timing=TEST_TIMING, supervision=LOOPBACK.config()
    ) as stack:
        await stack.start_bot()
        yield stack
