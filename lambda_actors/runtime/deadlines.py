"""Call timeouts watched by one task per tree, instead of a cancel scope per call.

A Trio cancel scope with a deadline costs about as much as the rest of a
``call`` round trip. Since nearly every call has a timeout, the tree keeps one
heap of call deadlines and one task that wakes at the earliest, failing the
calls still unanswered with ``CallTimeout``. Answered calls are not removed
from the heap one by one (that would cost what we are saving); the heap is
pruned when it has grown to twice its live size, so it stays bounded by the
number of calls actually waiting.
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Any

import trio

from .errors import CallTimeout
from .request import _PENDING, Request

__all__ = ["CallDeadlines"]

_MIN_PRUNE = 1024


class CallDeadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Request[Any], str, float]] = []
        self._seq = count()
        self._lot = trio.lowlevel.ParkingLot()
        self._wake_at = math.inf
        self._prune_at = _MIN_PRUNE
        self._scope: trio.CancelScope | None = None
        #: Whether the watching task runs; if not, calls use their own cancel scope.
        self.running = False

    def add(self, req: Request[Any], timeout: float, path: str) -> None:
        """Fail ``req`` with ``CallTimeout`` if it is still unanswered ``timeout`` seconds from now."""
        deadline = trio.current_time() + timeout
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._seq), req, path, timeout))
        if len(heap) > self._prune_at:
            self._prune()
        if deadline < self._wake_at:
            self._lot.unpark_all()

    def _prune(self) -> None:
        live = [entry for entry in self._heap if entry[2]._state == _PENDING]
        heapq.heapify(live)
        self._heap = live
        self._prune_at = max(_MIN_PRUNE, 2 * len(live))

    async def run(self) -> None:
        """Watch deadlines until ``stop``; started by the root supervisor."""
        with trio.CancelScope() as self._scope:
            self.running = True
            try:
                while True:
                    now = trio.current_time()
                    heap = self._heap
                    while heap and heap[0][0] <= now:
                        _, _, req, path, timeout = heapq.heappop(heap)
                        if req._state == _PENDING:
                            req._expire(CallTimeout(path, timeout))
                    self._wake_at = heap[0][0] if heap else math.inf
                    with trio.move_on_at(self._wake_at):
                        await self._lot.park()
            finally:
                self.running = False

    def stop(self) -> None:
        self.running = False
        if self._scope is not None:
            self._scope.cancel()

    def __len__(self) -> int:
        return len(self._heap)
