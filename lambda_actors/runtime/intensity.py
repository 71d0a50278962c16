"""Restart intensity: at most ``intensity`` restarts within any ``period`` seconds.

The accounting is OTP's: a restart at time ``now`` forgets every earlier
restart at or before ``now - period``, records itself, and is refused when
more than ``intensity`` remain. ``intensity = 0`` refuses the first restart.
Pure, so the property tests can drive it with made-up clocks.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RestartWindow"]


class RestartWindow:
    __slots__ = ("intensity", "period", "_times")

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Count a restart at ``now``; False if it exceeds the intensity."""
        times = self._times
        threshold = now - self.period
        while times and times[0] <= threshold:
            times.popleft()
        times.append(now)
        return len(times) <= self.intensity

    def count(self, now: float) -> int:
        """Restarts still inside the window at ``now``."""
        threshold = now - self.period
        return sum(1 for t in self._times if t > threshold)

    def clear(self) -> None:
        self._times.clear()
