"""A bare homeserver probe: how fast the homeserver itself relays a message.

The chaos run charges to the homeserver what is the homeserver's: while it
is away, and while it is slow after coming back (a restarted Synapse starts
with cold caches and a queue of clients syncing again), every room waits
on it, the bot or no bot. To tell that apart from the bot's own doing, a
user with no bot in the path sends a message to a room of its own every
``interval`` and times how long its own sync takes to show it: the same
relay every answer goes through, measured alone.

:func:`recovered_at` reads the samples: the homeserver is back to normal
at the first of ``run`` samples in a row that relay as fast as in the calm
phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..matrix import content as contents
from ..matrix.errors import HomeserverUnavailable, MatrixError
from .user import ScriptedUser

__all__ = ["HomeserverProbe", "ProbeSample", "recovered_at"]

#: How often the probe sends, and how long it waits to see its message.
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 30.0
#: Samples in a row that must be calm-fast for the homeserver to count as recovered.
RECOVERY_RUN = 3


@dataclass(frozen=True)
class ProbeSample:
    """One probe message: when it was sent (Trio clock) and how long the
    homeserver took to relay it back, in seconds (None: it failed, or was
    not seen within :data:`PROBE_TIMEOUT`)."""

    sent_at: float
    latency: float | None


class HomeserverProbe:
    """Sends to a room of its own and times its own sync (start :meth:`run` in a nursery)."""

    def __init__(self, user: ScriptedUser, interval: float = PROBE_INTERVAL) -> None:
        self.user = user
        self.interval = interval
        self.samples: list[ProbeSample] = []

    async def run(self) -> None:
        room_id = await self.user.client.create_room(name="homeserver probe")
        for n in range(1, 2**62):
            sent_at = trio.current_time()
            latency: float | None = None
            with trio.move_on_after(PROBE_TIMEOUT):
                try:
                    # Straight to the client, not through ScriptedUser.say's
                    # retries: while the homeserver is away each sample fails
                    # on its own, and the next one tries again a second later.
                    event_id = await self.user.client.send(room_id, "m.room.message", contents.text(f"probe {n}"), f"probe-{n}")
                    await self.user.wait_until(
                        lambda: any(s.event_id == event_id for s in self.user.seen[-50:]), timeout=math.inf
                    )
                    latency = trio.current_time() - sent_at
                except (HomeserverUnavailable, MatrixError):
                    pass  # the homeserver is away: this sample failed, the next one tries again
            self.samples.append(ProbeSample(sent_at, latency))
            await trio.sleep_until(max(trio.current_time(), sent_at + self.interval))


def recovered_at(samples: Sequence[ProbeSample], back: float, normal: float, run: int = RECOVERY_RUN) -> float | None:
    """When the homeserver relayed normally again after coming back at ``back``:
    the send time of the first of ``run`` samples in a row, all sent after
    ``back`` and each relayed within ``normal`` seconds. None if that never
    happened."""
    streak: list[ProbeSample] = []
    for sample in samples:
        if sample.sent_at < back:
            continue
        if sample.latency is not None and sample.latency <= normal:
            streak.append(sample)
            if len(streak) == run:
                return streak[0].sent_at
        else:
            streak = []
    return None
