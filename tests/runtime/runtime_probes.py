"""Actors and messages the runtime tests run under supervisors.

One ``worker`` with a small message vocabulary covers most tests: it
journals what happens to it, so tests assert on behaviour rather than on
internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

import lambda_actors as la


class Boom(Exception):
    """The crash the probes raise on purpose."""


@dataclass(frozen=True)
class Crash:
    note: str = ""


@dataclass(frozen=True)
class Finish:
    """Return normally (a clean exit)."""


@dataclass(frozen=True)
class Hang:
    """Hold the request without answering, for ever."""


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass
class Journal:
    """What happened, in order: (event, name, detail)."""

    entries: list[tuple[str, str, Any]] = field(default_factory=list)

    def add(self, event: str, name: str, detail: Any = None) -> None:
        self.entries.append((event, name, detail))

    def of(self, event: str) -> list[tuple[str, Any]]:
        return [(n, d) for e, n, d in self.entries if e == event]

    def names(self, event: str) -> list[str]:
        return [n for e, n, _ in self.entries if e == event]

    def count(self, event: str, name: str) -> int:
        return sum(1 for e, n, _ in self.entries if e == event and n == name)


async def worker(ctx: la.ActorContext, journal: Journal, ignore_stop: bool = False) -> None:
    """Echoes calls, journals sends; ``Crash`` raises, ``Finish`` returns, ``Hang`` never answers."""
    journal.add("start", ctx.name, ctx.attempt)
    try:
        async for msg in ctx.mailbox:
            body = msg.msg if isinstance(msg, la.Request) else msg
            if isinstance(body, Crash):
                raise Boom(body.note or ctx.name)
            if isinstance(body, Finish):
                if isinstance(msg, la.Request):
                    msg.reply("finishing")
                return
            if isinstance(body, Hang):
                await trio.sleep_forever()
            if isinstance(body, Sleep):
                await trio.sleep(body.seconds)
            journal.add("msg", ctx.name, body)
            if isinstance(msg, la.Request):
                msg.reply(body)
        if ignore_stop:
            await trio.sleep_forever()
    finally:
        journal.add("stop", ctx.name, trio.current_time())


def spec(name: str, journal: Journal, **policy: Any) -> la.ChildSpec:
    ignore_stop = policy.pop("ignore_stop", False)
    return la.ChildSpec(name, worker, (journal, ignore_stop), **policy)


async def crash(address: la.Address, note: str = "") -> None:
    await address.send(Crash(note))
