"""Stable addresses: how one actor reaches another.

An ``Address`` is created by the supervisor when a child is added and stays
valid across every restart of that child: it owns the child's mailbox, so
messages sent while the child is restarting, backing off or parked are held
(up to the mailbox capacity, then the overflow policy decides) and handed to
the next incarnation in order. Only when the child is stopped for good does
the address refuse messages, with ``ActorStopped``.

Internal interface: ``Address._handle`` is the supervisor's record of the
child, seen through ``ChildHandle`` (its state, and monitors). It is read by
``context.py`` for ``ctx.monitor``; nothing else reaches into the supervisor.
``Mailbox.offer`` is the mailbox's internal interface used by ``call``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .deadlines import CallDeadlines
from .errors import CallTimeout
from .mailbox import Mailbox, MailboxStatistics
from .request import Request

if TYPE_CHECKING:
    from .state import ChildState

__all__ = ["Address", "ChildHandle"]


class ChildHandle(Protocol):
    """What an address needs from its supervisor's record of the child (internal)."""

    def state(self, now: float) -> ChildState:
        """A snapshot of the child at Trio time ``now``."""
        ...

    def watch(self, watcher: Mailbox) -> bool:
        """Post ``Down`` to ``watcher`` when the watched incarnation ends.

        False if the child is stopped: ``Down(path, "noproc")`` was posted at once.
        """
        ...

    def unwatch(self, watcher: Mailbox) -> None:
        """Remove ``watcher``'s monitor, if any."""
        ...


class Address:
    """Send to (``send``), or ask (``call``), the actor at ``path``."""

    __slots__ = ("path", "_mailbox", "_call_timeout", "_deadlines", "_handle")

    def __init__(
        self, path: str, mailbox: Mailbox, call_timeout: float, deadlines: CallDeadlines,
        handle: ChildHandle,
    ) -> None:
        self.path = path
        self._mailbox = mailbox
        self._call_timeout = call_timeout
        self._deadlines = deadlines
        # The supervisor's record of this child, for ``state`` and monitors.
        self._handle = handle

    def __repr__(self) -> str:
        return f"<Address {self.path}>"

    async def send(self, msg: Any) -> None:
        """Deliver ``msg`` (fire-and-forget).

        When the mailbox is full the overflow policy decides: ``block`` waits,
        ``drop_newest``/``drop_oldest`` discard (counted, and a
        ``MessageDropped`` event is emitted), ``fail`` raises ``MailboxFull``.
        Raises ``ActorStopped`` if the actor has stopped for good.
        """
        await self._mailbox.put(msg)

    def send_nowait(self, msg: Any) -> None:
        """Deliver ``msg`` without waiting; raises ``MailboxFull`` instead of blocking."""
        self._mailbox.put_nowait(msg)

    async def call(self, msg: Any, *, timeout: float | None = None) -> Any:
        """Send ``msg`` as a ``Request`` and return the callee's reply.

        ``timeout`` defaults to the actor's ``call_timeout`` policy;
        ``math.inf`` waits for ever. Raises ``CallTimeout`` when it runs out,
        ``CallAborted`` at once if the callee crashes, restarts or stops
        while holding the request, whatever the callee passed to
        ``request.fail``, and ``ActorStopped`` / ``MailboxFull`` as ``send``.
        """
        if timeout is None:
            timeout = self._call_timeout
        req: Request[Any] = Request(msg)
        mailbox = self._mailbox
        if timeout == math.inf:
            await mailbox.put_request(req)
            return await req._wait()
        deadlines = self._deadlines
        if deadlines.running:
            # Fast path: the request fits, so only the wait for the reply
            # needs a deadline, and the tree's deadline task keeps it.
            await trio.lowlevel.checkpoint_if_cancelled()
            if mailbox.offer(req):
                deadlines.add(req, timeout, self.path)
                return await req._wait()
        # The sender may have to wait for room too: one cancel scope covers both.
        with trio.move_on_after(timeout):
            await mailbox.put_request(req)
            return await req._wait()
        raise CallTimeout(self.path, timeout)

    @property
    def state(self) -> ChildState:
        """Where the actor is now: running, backing off, parked (with ``retry_at``) or stopped."""
        return self._handle.state(trio.current_time())

    @property
    def stopped(self) -> bool:
        """True once the actor has stopped for good (sends raise ``ActorStopped``)."""
        return self._mailbox.closed

    def statistics(self) -> MailboxStatistics:
        """The mailbox's depth, peak, drops and so on."""
        return self._mailbox.statistics()
