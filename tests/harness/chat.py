"""Helpers for end-to-end tests: onboarding a scripted user (plain functions, not fixtures)."""

from __future__ import annotations

from lambda_actors.loopback.user import ScriptedUser


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
