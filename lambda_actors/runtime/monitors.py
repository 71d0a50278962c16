"""Monitors: be told when another actor's incarnation ends (OTP's ``monitor``).

``ctx.monitor(address)`` asks the runtime to post ``Down(path, reason)`` to
the calling actor's mailbox when the watched actor's incarnation ends: it
returned, crashed, was killed, or its supervisor stopped it. A monitor fires
once; to keep watching a restarted actor, monitor it again.

What is watched is the incarnation that handles messages sent *now*: the
running one, or, while the actor waits for a restart (not started yet,
backing off, parked, waiting for its group), the next one. Watching an
address that is stopped (terminated, or removed) posts ``Down`` at once with
reason ``"noproc"``, as OTP does for a dead process.

Delivery never blocks the supervisor and is never lost to a full mailbox:
``Down`` goes past the capacity and the overflow policy (``Mailbox.post``).
A monitor belongs to the watcher's incarnation: when the watcher's
incarnation ends its monitors are removed, so a restarted watcher is not
told about actors it never asked about (a ``Down`` already posted before the
restart is still delivered; ignore the ones you do not expect).

One watcher holds at most one monitor per address; monitoring twice is the
same as once, and ``ctx.demonitor(address)`` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mailbox import Mailbox

__all__ = ["Down", "NORMAL", "SHUTDOWN", "NOPROC", "down_reason", "Watchers"]

#: The incarnation returned by itself.
NORMAL = "normal"
#: Its supervisor stopped it (terminate_child, a group restart, a shutdown).
SHUTDOWN = "shutdown"
#: It was already stopped when the monitor was set, or was removed before it ran again.
NOPROC = "noproc"


@dataclass(frozen=True, slots=True)
class Down:
    """The watched actor at ``path`` ended its incarnation.

    ``reason`` is ``"normal"``, ``"shutdown"``, ``"noproc"``, or the
    ``repr`` of the exception it crashed with (``ActorKilled(...)`` when it
    was killed).
    """

    path: str
    reason: str

    @property
    def crashed(self) -> bool:
        return self.reason not in (NORMAL, SHUTDOWN, NOPROC)


def down_reason(reason: BaseException | None, shutdown: bool) -> str:
    """The ``Down.reason`` for an incarnation that ended with ``reason``."""
    if shutdown:
        return SHUTDOWN
    if reason is None:
        return NORMAL
    return repr(reason)


class Watchers:
    """The mailboxes watching one child, in the order they asked; fired once."""

    __slots__ = ("_boxes",)

    def __init__(self) -> None:
        # A dict as an ordered set: Down goes out in the order monitors were set.
        self._boxes: dict[Mailbox, None] = {}

    def add(self, watcher: Mailbox) -> None:
        self._boxes[watcher] = None

    def discard(self, watcher: Mailbox) -> None:
        self._boxes.pop(watcher, None)

    def __len__(self) -> int:
        return len(self._boxes)

    def fire(self, path: str, reason: str) -> None:
        """Post ``Down`` to every watcher and forget them (a monitor fires once)."""
        boxes, self._boxes = self._boxes, {}
        down = Down(path, reason)
        for box in boxes:
            # post() never waits and ignores a closed mailbox: a watcher that
            # stopped for good has nobody to tell.
            box.post(down)
