"""Helpers for end-to-end tests: a bot in this process, onboarding a scripted user (plain functions, not fixtures)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Iterable

from lambda_actors.loopback.homeserver import Homeserver
from lambda_actors.loopback.profiles import LOOPBACK, LOOPBACK_TIMING, SupervisionProfile
from lambda_actors.loopback.stack import LoopbackStack, open_loopback_stack
from lambda_actors.loopback.user import ScriptedUser


@asynccontextmanager
async def running_bot(
    tmp_path: Path,
    homeserver: Homeserver | None,
    *,
    users: Iterable[str] = ("alice", "bob"),
    faults: Iterable[str] = (),
    profile: SupervisionProfile = LOOPBACK,
) -> AsyncIterator[LoopbackStack]:
    """The loopback stack (on ``homeserver``, or a Synapse of its own) with the bot running in this process."""
    async with open_loopback_stack(
        tmp_path, users=tuple(users), homeserver=homeserver, timing=LOOPBACK_TIMING, supervision=profile.config()
    ) as stack:
        await stack.start_bot(faults=faults)
        yield stack



async def onboard(stack, user: ScriptedUser) -> tuple[str, str]:
    """Invite the bot to a direct chat; return (dm_room, chat1_room) once both are greeted."""
    dm = await user.start_dm(stack.bot_id)
    await user.notice(dm, "Hello! I connect you to")
    chat1 = await user.accept_invite("Chat 1")
    await user.notice(chat1, 'This is "Chat 1"')
    return dm, chat1


def chat_ids(agent) -> list[str]:
    """The chat ids an agent received messages on, in order of first message."""
    seen: list[str] = []
    for received in agent.received:
        if received.chat_id not in seen and type(received.frame).__name__ == "UserMessage":
            seen.append(received.chat_id)
    return seen
