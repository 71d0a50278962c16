"""The envelope of a ``call``: what the callee's mailbox yields for a request.

A callee handles it with ``request.reply(value)`` or ``request.fail(exc)``;
both are synchronous and may be called from any task of the callee. The
caller is woken directly (no reply channel is allocated), so a round trip
costs one small object and two task switches.

If the callee's incarnation ends while it holds an unanswered request, the
supervisor fails the request with ``CallAborted`` at once, so callers never
wait out their timeout on a dead actor.

Internal interface (the runtime's other modules only; callers and callees
use ``reply``, ``fail``, ``answered``, ``abandoned``): ``Address.call``
waits with ``_wait``; the callee's ``MailboxReader`` records which
incarnation holds a request in ``_owner`` and fails it with ``_abort``;
``CallDeadlines`` reads ``_state`` and times a call out with ``_expire``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import outcome
import trio

from .errors import CallAborted

__all__ = ["Request"]

T = TypeVar("T")

# Request states. Kept as small ints: a request is on the hot path.
_PENDING, _DONE, _ABANDONED = 0, 1, 2


class Request(Generic[T]):
    """A message that expects an answer. ``msg`` is what the caller sent."""

    __slots__ = ("msg", "_caller", "_result", "_state", "_owner")
    __match_args__ = ("msg",)

    def __init__(self, msg: T) -> None:
        self.msg = msg
        self._caller: trio.lowlevel.Task | None = None
        self._result: outcome.Outcome[T] | None = None
        self._state = _PENDING
        # The in-flight set of the incarnation that took this request, so an
        # answered request leaves it and a crash can fail what is left.
        self._owner: set[Request[Any]] | None = None

    def __repr__(self) -> str:
        state = ("pending", "answered", "abandoned")[self._state]
        return f"Request({self.msg!r}, {state})"

    @property
    def answered(self) -> bool:
        """True once ``reply`` or ``fail`` has been called (or the supervisor failed it)."""
        return self._state == _DONE

    @property
    def abandoned(self) -> bool:
        """True if the caller gave up (timeout or cancellation); a reply is then ignored."""
        return self._state == _ABANDONED

    def reply(self, value: Any = None) -> None:
        """Answer the call with ``value``. A second answer is an error."""
        self._settle(outcome.Value(value))

    def fail(self, exc: BaseException) -> None:
        """Make the caller's ``call`` raise ``exc``."""
        self._settle(outcome.Error(exc))

    def _settle(self, result: outcome.Outcome[T]) -> None:
        state = self._state
        if state != _PENDING:
            if state == _ABANDONED:
                # The caller left; answering late is not a bug.
                if self._owner is not None:
                    self._owner.discard(self)
                    self._owner = None
                return
            raise RuntimeError(f"{self!r} was already answered")
        self._state = _DONE
        owner = self._owner
        if owner is not None:
            owner.discard(self)
        caller = self._caller
        if caller is not None:
            self._caller = None
            trio.lowlevel.reschedule(caller, result)
        else:
            self._result = result

    def _expire(self, exc: BaseException) -> None:
        """The call timed out: the waiting caller gets ``exc``; a later answer is ignored."""
        caller = self._caller
        if self._state != _PENDING or caller is None:
            return
        self._caller = None
        self._state = _ABANDONED
        owner = self._owner
        if owner is not None:
            owner.discard(self)
        trio.lowlevel.reschedule(caller, outcome.Error(exc))

    def _abort(self, path: str, reason: BaseException | None) -> None:
        """Fail the request because its callee stopped while holding it."""
        if self._state == _PENDING:
            self._owner = None
            self._settle(outcome.Error(CallAborted(path, reason)))

    async def _wait(self) -> Any:
        """Wait for the answer (the caller's side). Cancellation abandons the request."""
        result = self._result
        if result is not None:
            # Answered before we got to wait (the callee ran during our send).
            self._result = None
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result.unwrap()
        self._caller = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._caller = None
            self._state = _ABANDONED
            owner = self._owner
            if owner is not None:
                owner.discard(self)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)
