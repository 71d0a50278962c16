"""A bounded, single-reader memory channel that outlives the task reading it.

Why not ``trio.open_memory_channel``: a mailbox belongs to an actor's *address*,
not to one incarnation of the actor. While the actor is down (restarting,
backing off, parked) its mailbox keeps holding messages for the next
incarnation; it needs overflow policies other than blocking; and its senders
must see ``ActorStopped`` rather than trio's ``BrokenResourceError``. The
semantics are otherwise those of a trio memory channel: the same checkpoints,
direct hand-off to a waiting reader, FIFO wake-up of blocked senders.

There is one reader at a time (the current incarnation). ``halt`` ends the
current reader's iteration but keeps the buffer (a restart); ``close`` refuses
new messages and lets the reader drain what is held (a stop for good).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import outcome
import trio
from trio.lowlevel import (
    Abort,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from .errors import ActorStopped, MailboxFull
from .request import Request

__all__ = ["Overflow", "Mailbox", "MailboxStatistics"]


class Overflow(enum.StrEnum):
    """What a send does when the mailbox is at capacity."""

    BLOCK = "block"  #: wait for room (back-pressure); the default
    DROP_NEWEST = "drop_newest"  #: discard the message being sent
    DROP_OLDEST = "drop_oldest"  #: discard the oldest held message to make room
    FAIL = "fail"  #: raise ``MailboxFull`` to the sender


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot, in the style of ``trio.MemoryChannelStatistics``."""

    depth: int  #: messages held now
    peak: int  #: most messages ever held at once
    capacity: int
    overflow: str
    sent: int  #: messages accepted
    dropped: int  #: messages discarded (by overflow policy or a stop for good)
    blocked_senders: int  #: tasks waiting for room under ``block``
    reader_waiting: bool  #: the actor is idle, waiting for a message
    closed: bool  #: stopped for good: sends raise ``ActorStopped``


# Called with (path, reason, message) for every message the mailbox discards.
DropHook = Callable[[str, str, Any], None]


def _ignore_drop(path: str, reason: str, msg: Any) -> None:
    pass


class Mailbox:
    """See the module docstring. Built by the supervisor; actors use ``Address``."""

    __slots__ = (
        "path",
        "capacity",
        "overflow",
        "_buf",
        "_reader",
        "_blocked",
        "_closed",
        "_halted",
        "_peak",
        "_sent",
        "_dropped",
        "_on_drop",
    )

    def __init__(
        self, path: str, capacity: int, overflow: Overflow = Overflow.BLOCK,
        on_drop: DropHook = _ignore_drop,
    ) -> None:
        if capacity < 1:
            raise ValueError("a mailbox needs room for at least one held message")
        self.path = path
        self.capacity = capacity
        self.overflow = Overflow(overflow)
        self._buf: deque[Any] = deque()
        self._reader: trio.lowlevel.Task | None = None
        # Blocked senders in arrival order: task -> the message it is sending.
        # Made on first use: most mailboxes never block anyone, and an idle
        # actor should cost as little memory as possible.
        self._blocked: dict[trio.lowlevel.Task, Any] | None = None
        self._closed = False
        self._halted = False
        self._peak = 0
        self._sent = 0
        self._dropped = 0
        self._on_drop = on_drop

    # --- sending -----------------------------------------------------------

    def offer(self, msg: Any) -> bool:
        """Deliver or hold ``msg`` if there is room; False if the mailbox is full.

        Internal: ``Address.call``'s fast path, which must not schedule.
        """
        if self._closed:
            raise ActorStopped(self.path)
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._sent += 1
            reschedule(reader, outcome.Value(msg))
            return True
        buf = self._buf
        if len(buf) < self.capacity:
            buf.append(msg)
            self._sent += 1
            if len(buf) > self._peak:
                self._peak = len(buf)
            return True
        return False

    def post(self, msg: Any) -> bool:
        """Hand over or hold ``msg`` whatever the capacity; False (and nothing held) if closed.

        For the runtime's own notices (``Down``): the supervisor posts them
        from its exit path, which must never wait for a reader, and a notice
        must not be lost to a full mailbox or an overflow policy. The buffer
        may then hold a few more than ``capacity`` messages for a moment.
        """
        if self._closed:
            return False
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._sent += 1
            reschedule(reader, outcome.Value(msg))
            return True
        buf = self._buf
        buf.append(msg)
        self._sent += 1
        if len(buf) > self._peak:
            self._peak = len(buf)
        return True

    async def put(self, msg: Any) -> None:
        """Send ``msg`` under the overflow policy (see ``Overflow``)."""
        await checkpoint_if_cancelled()
        if self.offer(msg):
            await cancel_shielded_checkpoint()
            return
        await self._overflowed(msg)

    def put_nowait(self, msg: Any) -> None:
        """Send without waiting; under ``block`` a full mailbox raises ``MailboxFull``."""
        if not self.offer(msg):
            if self.overflow is Overflow.BLOCK:
                raise MailboxFull(self.path, self.capacity, self.overflow)
            self._overflow_nowait(msg)

    async def put_request(self, req: Request[Any]) -> None:
        """Like ``put`` but without the trailing schedule point: the caller waits next."""
        await checkpoint_if_cancelled()
        if not self.offer(req):
            await self._overflowed(req)

    async def _overflowed(self, msg: Any) -> None:
        if self.overflow is Overflow.BLOCK:
            await self._wait_for_room(msg)
        else:
            self._overflow_nowait(msg)
            await cancel_shielded_checkpoint()

    def _overflow_nowait(self, msg: Any) -> None:
        policy = self.overflow
        if policy is Overflow.DROP_OLDEST:
            old = self._buf.popleft()
            self._buf.append(msg)
            self._sent += 1
            self._drop("drop_oldest", old)
        elif policy is Overflow.DROP_NEWEST and type(msg) is not Request:
            self._drop("drop_newest", msg)
        else:
            # ``fail``, or a request under ``drop_newest``: the sender is right
            # here, so tell it rather than failing its request behind its back.
            raise MailboxFull(self.path, self.capacity, policy)

    async def _wait_for_room(self, msg: Any) -> None:
        task = current_task()
        if self._blocked is None:
            self._blocked = {}
        blocked = self._blocked
        blocked[task] = msg

        def abort(_: Any) -> Abort:
            del blocked[task]
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _drop(self, reason: str, msg: Any) -> None:
        self._dropped += 1
        if type(msg) is Request:
            msg.fail(MailboxFull(self.path, self.capacity, reason))
        self._on_drop(self.path, reason, msg)

    # --- receiving (the current incarnation only) ---------------------------

    async def get(self) -> Any:
        """The next message; ``trio.EndOfChannel`` once halted, or closed and drained."""
        await checkpoint_if_cancelled()
        if self._buf and not self._halted:
            msg = self._take_held()
            await cancel_shielded_checkpoint()
            return msg
        if self._halted or self._closed:
            await cancel_shielded_checkpoint()
            raise trio.EndOfChannel
        if self._reader is not None:
            raise trio.BusyResourceError(
                f"another task is already reading the mailbox of {self.path!r}; "
                "read it from one task and hand work to others"
            )
        self._reader = current_task()

        def abort(_: Any) -> Abort:
            self._reader = None
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)

    def get_nowait(self) -> Any:
        """The next held message, or ``trio.WouldBlock``; ``trio.EndOfChannel`` as ``get``."""
        if self._buf and not self._halted:
            return self._take_held()
        if self._halted or self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _take_held(self) -> Any:
        """The oldest held message; the first blocked sender's message takes its place."""
        buf = self._buf
        msg = buf.popleft()
        blocked = self._blocked
        if blocked:
            task = next(iter(blocked))
            buf.append(blocked.pop(task))
            self._sent += 1
            reschedule(task, outcome.Value(None))
        return msg

    # --- lifecycle (the supervisor) -----------------------------------------

    def halt(self) -> None:
        """End the current reader's iteration; keep every held message."""
        self._halted = True
        self._wake_reader_with_end()

    def reopen(self) -> None:
        """Open the buffer to a new incarnation (after ``halt``, or ``close`` for a restarted child)."""
        self._halted = False
        self._closed = False

    def close(self) -> None:
        """Refuse new messages (``ActorStopped``); the reader may drain what is held."""
        if self._closed:
            return
        self._closed = True
        blocked, self._blocked = self._blocked or {}, None
        for task in blocked:
            reschedule(task, outcome.Error(ActorStopped(self.path)))
        if not self._buf:
            self._wake_reader_with_end()

    def discard_held(self, reason: str) -> int:
        """Drop everything still held (after a stop for good); requests fail. Returns the count."""
        buf, self._buf = self._buf, deque()
        for msg in buf:
            if type(msg) is Request:
                self._dropped += 1
                msg.fail(ActorStopped(self.path))
                self._on_drop(self.path, reason, msg)
            else:
                self._drop(reason, msg)
        return len(buf)

    def _wake_reader_with_end(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            reschedule(reader, outcome.Error(trio.EndOfChannel()))

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._buf)

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self._buf),
            peak=self._peak,
            capacity=self.capacity,
            overflow=str(self.overflow),
            sent=self._sent,
            dropped=self._dropped,
            blocked_senders=len(self._blocked or ()),
            reader_waiting=self._reader is not None,
            closed=self._closed,
        )
