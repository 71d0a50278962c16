"""The one place that decides whether, and when, a failed request is tried again.

Three kinds of failure, three answers:

- **Rate limited** (429 / ``M_LIMIT_EXCEEDED``): the homeserver refused the
  request before doing anything, so trying again is always safe. Wait exactly
  what it asked, then try again, as often as it takes, unless it asks for a
  wait longer than :attr:`RetryPolicy.max_rate_limit_wait_s` (then
  :class:`~lambda_actors.matrix.errors.RateLimited` is raised and the caller,
  e.g. the outbox, decides).
- **Transient** (5xx, timeouts, dropped connections): back off exponentially
  with jitter, at most :attr:`RetryPolicy.attempts` tries in all, then raise
  :class:`~lambda_actors.matrix.errors.HomeserverUnavailable`. Only requests
  that are safe to repeat are retried: reads, PUTs (a message send is a PUT
  whose path holds its transaction id, so the homeserver answers a repeat with
  the first event id instead of posting twice), joins, leaves. A request that
  may have been applied and would not be idempotent (creating a room,
  uploading a file) is retried only when the connection was never made.
- **Anything else** (4xx, an invalid token): raised at once; no retry can fix it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import structlog
import trio

from .errors import HomeserverUnavailable, InvalidToken, MatrixError, RateLimited

__all__ = ["RetryPolicy", "call_with_retries"]

log = structlog.get_logger("lambda_actors.matrix")

T = TypeVar("T")

# The request never reached the homeserver: safe to repeat whatever it was.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. The defaults suit a bot that must not give up on a blip.

    ``attempts`` counts every try of one request on transient failures (the
    first included). Delays grow from ``backoff_initial_s`` by doubling up to
    ``backoff_max_s``; ``jitter`` is the random fraction taken off each delay,
    so that many clients failing together do not retry together.
    """

    attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.5
    max_rate_limit_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1 (the first try)")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be between 0 and 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("RetryPolicy needs 0 <= backoff_initial_s <= backoff_max_s")

    def backoff_s(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after the *failures*-th consecutive transient failure (1, 2, ...)."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1))
        return ceiling * (1 - self.jitter * rand())


NO_RETRY = RetryPolicy(attempts=1, max_rate_limit_wait_s=0.0)


async def call_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    what: str,
) -> T:
    """Run *attempt* until it succeeds or *policy* says stop.

    *attempt* raises :class:`MatrixError` (or a subclass) for a refusal and
    ``httpx.TransportError`` when no answer came. *what* names the request in
    logs (``"PUT send"``): it never holds a token.
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except InvalidToken:
            raise
        except RateLimited as exc:
            if exc.retry_after_s > policy.max_rate_limit_wait_s:
                raise
            log.info("matrix.rate_limited", request=what, retry_after_s=round(exc.retry_after_s, 3))
            await trio.sleep(exc.retry_after_s)
            continue
        except MatrixError as exc:
            if exc.status < 500 or not idempotent:
                raise
            failure: BaseException = exc
        except httpx.TransportError as exc:
            if not (idempotent or isinstance(exc, _NOT_SENT)):
                raise HomeserverUnavailable(
                    f"{what}: the connection failed after the request was sent ({type(exc).__name__}); "
                    "it was not retried because it may have been applied and is not safe to repeat"
                ) from exc
            failure = exc
        failures += 1
        if failures >= policy.attempts:
            raise HomeserverUnavailable(
                f"{what}: no usable answer from the homeserver after {failures} tries "
                f"(last: {_describe(failure)})"
            ) from failure
        delay = policy.backoff_s(failures)
        log.warning("matrix.retrying", request=what, failure=_describe(failure), attempt=failures, delay_s=round(delay, 3))
        await trio.sleep(delay)


def _describe(failure: BaseException) -> str:
    if isinstance(failure, MatrixError):
        return str(failure)
    return type(failure).__name__
