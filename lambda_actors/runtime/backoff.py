"""Restart delays: exponential backoff with jitter and a reset after quiet time.

Pure: ``delay`` takes the attempt number and a random source, so schedules
are testable without a clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a child waits before its n-th consecutive restart.

    The n-th restart in a row waits ``min * multiplier ** (n - 1)``, capped at
    ``max``, then spread by ``±jitter`` (a fraction: 0.1 is ±10%) so that many
    children failing together do not retry in lockstep. A child that ran for
    ``reset_after`` seconds before failing starts again from ``min``.
    ``min = 0`` restarts at once, as OTP does.
    """

    min: float = 0.0
    max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.0
    reset_after: float = 30.0

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is wrong and how to fix it) for each invalid field."""
        out: list[tuple[str, str]] = []
        numbers = {k: getattr(self, k) for k in ("min", "max", "multiplier", "jitter", "reset_after")}
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                out.append((key, f"must be a number, got {value!r}"))
        if out:
            return out  # the comparisons below need numbers
        for key in ("min", "max", "reset_after"):
            value = numbers[key]
            if not (value >= 0 and math.isfinite(value)):
                out.append((key, f"must be a finite number of seconds >= 0, got {value!r}"))
        if self.min > self.max:
            out.append(("min", f"min ({self.min:g}) is greater than max ({self.max:g}); "
                               "lower min or raise max"))
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            out.append(("multiplier", f"must be a finite number >= 1 (1 means a constant delay), got {self.multiplier!r}"))
        if not 0 <= self.jitter < 1:
            out.append(("jitter", f"must be a fraction in [0, 1), got {self.jitter!r}"))
        return out

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based) of a run of failures."""
        if self.min <= 0 or attempt < 1:
            return 0.0
        # Cap the exponent's growth before it overflows a float.
        exponent = min(attempt - 1, 1024)
        try:
            base = self.min * self.multiplier**exponent
        except OverflowError:
            base = self.max
        base = min(base, self.max)
        if self.jitter and rng is not None:
            base *= 1 + self.jitter * (2 * rng.random() - 1)
        return base
