"""The runtime's exceptions, one per thing a caller can do something about.

Senders never see trio's channel errors: a stopped actor is ``ActorStopped``,
a full mailbox under the ``fail`` policy is ``MailboxFull``, a call that can no
longer be answered is ``CallAborted``. Each message says what to do next.
"""

from __future__ import annotations

import trio

__all__ = [
    "ActorError",
    "ActorStopped",
    "MailboxFull",
    "CallError",
    "CallAborted",
    "CallTimeout",
    "ActorKilled",
    "IntensityExceeded",
    "ChildSpecError",
    "NoSuchActor",
]


class ActorError(Exception):
    """Base class of every runtime error."""


class ActorStopped(ActorError):
    """The actor behind this address has stopped for good.

    Its supervisor will not restart it (it was temporary, a transient that
    finished normally, terminated, or its supervisor shut down). Look the
    address up again (``Registry.get_or_start``) if a fresh actor is wanted.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"actor {path!r} has stopped for good; look it up again or start a new one"
        )
        self.path = path


class MailboxFull(ActorError):
    """The mailbox is at capacity and its overflow policy refused the message.

    Raised by ``send`` under the ``fail`` policy, by ``send_nowait`` under
    ``block``, and to the caller of a request dropped under ``drop_newest`` /
    ``drop_oldest``. Retry later, or raise the capacity in supervision.toml.
    """

    def __init__(self, path: str, capacity: int, policy: str) -> None:
        super().__init__(
            f"mailbox of {path!r} is full ({capacity} messages, overflow={policy}); "
            "retry later or raise mailbox_capacity in supervision.toml"
        )
        self.path = path
        self.capacity = capacity
        self.policy = policy


class CallError(ActorError):
    """Base class of the ways a ``call`` can fail without a reply."""


class CallAborted(CallError):
    """The callee stopped (crashed, was restarted or stopped) while holding the request.

    ``reason`` is the exception that ended the callee's incarnation, or
    ``None`` if it returned or was shut down. The request may or may not have
    had effects; only retry calls that are safe to repeat.
    """

    def __init__(self, path: str, reason: BaseException | None) -> None:
        why = "it stopped" if reason is None else f"it exited with {reason!r}"
        super().__init__(f"call to {path!r} aborted: {why} before replying")
        self.path = path
        self.reason = reason


class CallTimeout(CallError, trio.TooSlowError):
    """No reply within the call's timeout.

    A subclass of ``trio.TooSlowError`` so code written against
    ``trio.fail_after`` keeps working. The callee may still be working on it.
    """

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(
            f"call to {path!r} got no reply within {timeout:g}s; pass a larger "
            "timeout= or raise call_timeout in supervision.toml"
        )
        self.path = path
        self.timeout = timeout


class ActorKilled(ActorError):
    """The reason recorded for an actor crashed on purpose with ``kill(path)``."""

    def __init__(self, path: str, note: str = "") -> None:
        super().__init__(f"actor {path!r} was killed" + (f": {note}" if note else ""))
        self.path = path


class IntensityExceeded(ActorError):
    """A supervisor gave up: more restarts than its intensity allows within its period.

    With ``on_exhausted = "escalate"`` the supervisor stops all its children
    and fails with this error, so its own supervisor handles it as a crash; at
    the root it leaves ``open_supervisor``. ``child`` names the child whose
    exit went over the limit and ``reason`` what that exit was.
    """

    def __init__(
        self, path: str, child: str, reason: BaseException | None, intensity: int, period: float
    ) -> None:
        #: One line for logs, without the advice (which only applies where the
        #: escalation is not handled: a parent that parks it needs none).
        self.summary = (
            f"gave up: more than {intensity} restarts in {period:g}s, the last of child {child!r}"
        )
        super().__init__(
            f"supervisor {path!r} exceeded {intensity} restarts in {period:g}s "
            f"(last: child {child!r} exited with {reason!r}); fix the failing child, "
            f"raise intensity/period of [{path}], or set on_exhausted = \"park\" there "
            "(or on its parent) in supervision.toml"
        )
        self.path = path
        self.child = child
        self.reason = reason
        self.intensity = intensity
        self.period = period


class ChildSpecError(ActorError, ValueError):
    """A child or supervisor spec cannot be run as written (the message says why)."""


class NoSuchActor(ActorError, LookupError):
    """No actor or supervisor at that name or path."""
