"""Supervision events: what happened in the tree, for tests, metrics and logs.

Every event is a small frozen dataclass carrying the actor's ``path`` and
the Trio clock ``time`` it happened at. Subscribe with
``Supervisor.subscribe()``; a subscriber that falls behind by more than its
buffer loses the oldest events and sees the count in ``EventStream.lost``,
so a slow dashboard can never stall supervision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

__all__ = [
    "SupervisionEvent",
    "Started",
    "Exited",
    "Restarted",
    "BackingOff",
    "Parked",
    "Unparked",
    "Escalated",
    "MessageDropped",
    "EventStream",
    "EventBus",
]


@dataclass(frozen=True, slots=True)
class SupervisionEvent:
    path: str
    time: float


@dataclass(frozen=True, slots=True)
class Started(SupervisionEvent):
    """A child's first incarnation was started."""


@dataclass(frozen=True, slots=True)
class Exited(SupervisionEvent):
    """An incarnation ended. ``reason`` is its exception, or None for a normal exit.

    ``shutdown`` is True when its supervisor stopped it (a restart of its
    group, ``terminate_child`` or a shutdown) rather than it ending by itself.
    """

    reason: BaseException | None
    shutdown: bool = False

    @property
    def normal(self) -> bool:
        return self.reason is None


@dataclass(frozen=True, slots=True)
class Restarted(SupervisionEvent):
    """A new incarnation was started; ``attempt`` counts restarts in a row (1 = first)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class BackingOff(SupervisionEvent):
    """The child waits ``delay`` seconds (until ``retry_at``) before restarting."""

    delay: float
    retry_at: float


@dataclass(frozen=True, slots=True)
class Parked(SupervisionEvent):
    """Intensity exhausted under ``park``: the child is stopped until ``retry_at``."""

    retry_at: float
    reason: BaseException | None


@dataclass(frozen=True, slots=True)
class Unparked(SupervisionEvent):
    """The cool-down ended; the child is being started again."""


@dataclass(frozen=True, slots=True)
class Escalated(SupervisionEvent):
    """Intensity exhausted under ``escalate``: the supervisor at ``path`` is failing to its parent."""

    child: str
    reason: BaseException | None


@dataclass(frozen=True, slots=True)
class MessageDropped(SupervisionEvent):
    """A message to ``path`` was discarded: ``reason`` is the overflow policy or ``stopped``."""

    reason: str
    message: Any


class EventStream:
    """An async iterator of events under one path prefix."""

    def __init__(self, bus: EventBus, prefix: str, buffer: int) -> None:
        self._bus = bus
        self._prefix = prefix
        self._buffer = buffer
        self._queue: deque[SupervisionEvent] = deque()
        self._waiter: trio.Event | None = None
        self._closed = False
        #: Events discarded because this subscriber fell behind.
        self.lost = 0

    def _push(self, event: SupervisionEvent) -> None:
        path = event.path
        prefix = self._prefix
        if prefix and path != prefix and not path.startswith(prefix + "/"):
            return
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self.lost += 1
        self._queue.append(event)
        if self._waiter is not None:
            self._waiter.set()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SupervisionEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = trio.Event()
            await self._waiter.wait()
            self._waiter = None
        await trio.lowlevel.checkpoint()
        return self._queue.popleft()

    def receive_nowait(self) -> SupervisionEvent:
        """The next queued event, or ``trio.WouldBlock``."""
        if not self._queue:
            raise trio.WouldBlock
        return self._queue.popleft()

    def pending(self) -> list[SupervisionEvent]:
        """Take every queued event at once."""
        out = list(self._queue)
        self._queue.clear()
        return out

    async def wait_for(self, kind: type, path: str | None = None, **fields: Any) -> SupervisionEvent:
        """Skip events until one of type ``kind`` (at ``path``, with these field values) arrives."""
        async for event in self:
            if not isinstance(event, kind):
                continue
            if path is not None and event.path != path:
                continue
            if all(getattr(event, k) == v for k, v in fields.items()):
                return event
        raise trio.EndOfChannel(f"event stream closed before a {kind.__name__} event")

    def close(self) -> None:
        self._closed = True
        self._bus._subscribers.discard(self)
        if self._waiter is not None:
            self._waiter.set()


class EventBus:
    """Fans events out to subscribers; one per tree."""

    def __init__(self) -> None:
        self._subscribers: set[EventStream] = set()

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def emit(self, event: SupervisionEvent) -> None:
        for sub in tuple(self._subscribers):
            sub._push(event)

    def subscribe(self, prefix: str = "", buffer: int = 10_000) -> EventStream:
        stream = EventStream(self, prefix, buffer)
        self._subscribers.add(stream)
        return stream
