"""What an actor gets: ``ActorContext`` and its mailbox reader.

An actor is ``async def actor(ctx, *args)``. It reads ``ctx.mailbox``
(``async for msg in ctx.mailbox``); a ``call`` arrives as a ``Request``
whose ``.msg`` is what the caller sent, answered with ``.reply(value)`` or
``.fail(exc)``. The iteration ends when the supervisor stops the actor;
returning then is a clean stop. Raising is a crash, handled by the
supervisor's policy.

Internal interface (used by the supervisor only, named with a leading
underscore so actors leave it alone): ``MailboxReader._abort_inflight``
fails the requests an ended incarnation still held, and
``ActorContext._release_monitors`` drops an ended incarnation's monitors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .log import runtime_logger
from .request import Request

if TYPE_CHECKING:
    from .address import Address
    from .mailbox import Mailbox
    from .registry import Registry
    from .supervisor import Supervisor

__all__ = ["ActorContext", "MailboxReader"]


class MailboxReader:
    """The current incarnation's view of its mailbox.

    It remembers which requests this incarnation took and has not answered,
    so the supervisor can fail them with ``CallAborted`` the moment the
    incarnation ends.
    """

    __slots__ = ("_mailbox", "_inflight")

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox
        # Made on the first request: many actors are never called.
        self._inflight: set[Request[Any]] | None = None

    def __aiter__(self) -> MailboxReader:
        return self

    async def __anext__(self) -> Any:
        try:
            msg = await self._mailbox.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if type(msg) is Request:
            self._take(msg)
        return msg

    async def receive(self) -> Any:
        """The next message; ``trio.EndOfChannel`` when the actor is being stopped."""
        msg = await self._mailbox.get()
        if type(msg) is Request:
            self._take(msg)
        return msg

    def receive_nowait(self) -> Any:
        """The next held message, or ``trio.WouldBlock``."""
        msg = self._mailbox.get_nowait()
        if type(msg) is Request:
            self._take(msg)
        return msg

    def __len__(self) -> int:
        return len(self._mailbox)

    def _take(self, req: Request[Any]) -> None:
        if req.abandoned:
            return  # nobody waits for it: nothing to abort if we crash
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = set()
        req._owner = inflight
        inflight.add(req)

    def _abort_inflight(self, path: str, reason: BaseException | None) -> None:
        pending, self._inflight = self._inflight, None
        for req in pending or ():
            req._abort(path, reason)


class ActorContext:
    """Everything one incarnation of an actor may use."""

    __slots__ = ("address", "name", "path", "mailbox", "supervisor", "attempt", "_log", "_box", "_watching")

    def __init__(
        self, address: Address, name: str, mailbox: Mailbox, supervisor: Supervisor, attempt: int
    ) -> None:
        #: This actor's own stable address (hand it to others so they can reply).
        self.address = address
        self.name = name
        #: e.g. ``node/agents/agent-0/conn-17``.
        self.path = address.path
        self.mailbox = MailboxReader(mailbox)
        #: The supervisor this actor runs under.
        self.supervisor = supervisor
        #: Restarts in a row before this incarnation (0 on a fresh start).
        self.attempt = attempt
        self._log: Any = None
        self._box = mailbox
        # Addresses this incarnation monitors; made on first use (most never do).
        self._watching: dict[Address, None] | None = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to ``actor=<path>``."""
        if self._log is None:
            self._log = runtime_logger(self.path)
        return self._log

    @property
    def registry(self) -> Registry:
        """The tree's registry (names to addresses, get-or-start)."""
        return self.supervisor.registry

    def monitor(self, address: Address) -> None:
        """Get ``Down(path, reason)`` in this mailbox when ``address``'s incarnation ends.

        See ``lambda_actors.runtime.monitors`` for what is watched and the
        reasons. Monitoring a stopped address posts ``Down(path, "noproc")``
        at once. Synchronous and never blocks.
        """
        watching = self._watching
        if watching is None:
            watching = self._watching = {}
        if address._handle.watch(self._box):
            watching[address] = None

    def demonitor(self, address: Address) -> None:
        """Stop watching ``address`` (a ``Down`` already posted stays in the mailbox)."""
        watching = self._watching
        if watching is not None and address in watching:
            del watching[address]
            address._handle.unwatch(self._box)

    def _release_monitors(self) -> None:
        """The incarnation ended: its monitors go with it (called by the supervisor)."""
        watching = self._watching
        if watching is None:
            return
        self._watching = None
        for address in watching:
            address._handle.unwatch(self._box)

    def __repr__(self) -> str:
        return f"<ActorContext {self.path} attempt={self.attempt}>"
