"""pytest fixtures: fake agents (real WebSocket servers on loopback).

- ``fake_agent``: a factory. ``agent = await fake_agent(**options)`` starts a
  :class:`~lambda_actors.agent.fake.FakeAgent` in the test's nursery on a
  free 127.0.0.1 port with a fresh workspace under the test's ``tmp_path``,
  and returns it once it accepts connections (``agent.base_url``,
  ``agent.workspace``, ``agent.received_messages(chat_id)``,
  ``await agent.wait_for_message(...)``). Any keyword of ``FakeAgent``
  works (``prefix="/agent_3/"``, ``misbehave=["no-status"]``,
  ``stall_seconds=...``). Every agent stops when the test ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from lambda_actors.agent.fake import FakeAgent

FakeAgentFactory = Callable[..., Awaitable[FakeAgent]]


@pytest.fixture
def fake_agent(nursery: trio.Nursery, tmp_path: Path) -> FakeAgentFactory:
    numbers = itertools.count()

    async def start(*, workspace: str | Path | None = None, **options: object) -> FakeAgent:
        if workspace is None:
            workspace = tmp_path / f"fake-agent-{next(numbers)}"
        agent = FakeAgent(workspace, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        await nursery.start(agent.serve)
        return agent

    return start
