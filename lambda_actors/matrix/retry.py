"""The one place that decides whether, and when, a failed request is tried again.

Three kinds of failure, three answers:

- **Rate limited** (429 / ``M_LIMIT_EXCEEDED``): the homeserver refused the
  request before doing anything, so trying again is always safe. Wait exactly
  what it asked, then try again, as often as it takes, unless it asks for a
  wait longer than :attr:`RetryPolicy.max_rate_limit_wait_s` (then
  :class:`~lambda_actors.matrix.errors.RateLimited` is raised and the caller,
  e.g. the outbox, decides).
- **Transient** (5xx, timeouts, dropped connections): back off exponentially
  with jitter (the runtime's one :class:`~lambda_actors.runtime.backoff.Backoff`
  formula), at most :attr:`RetryPolicy.attempts` tries in all, logging a
  ``matrix.retrying`` warning that names the homeserver each time, then raise
  :class:`~lambda_actors.matrix.errors.HomeserverUnavailable`. Only requests
  that are safe to repeat are retried: reads, PUTs (a message send is a PUT
  whose path holds its transaction id, so the homeserver answers a repeat with
  the first event id instead of posting twice), joins, leaves. A request that
  may have been applied and would not be idempotent (creating a room,
  inviting) is retried only when the connection was never made.
- **Anything else** (4xx, an invalid token, a remote file the homeserver
  could not fetch): raised at once; no retry of ours can fix it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import structlog
import trio

from ..runtime.backoff import Backoff
from .errors import HomeserverUnavailable, InvalidToken, MatrixError, RateLimited, RemoteMediaUnavailable

__all__ = ["DEFAULT_BACKOFF", "NO_RETRY", "RetryPolicy", "call_with_retries"]

log = structlog.get_logger("lambda_actors.matrix")

T = TypeVar("T")

# The request never reached the homeserver: safe to repeat whatever it was.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

#: Waits between tries of one request: 0.5 s doubling to 30 s, spread by ±25%
#: so that many clients failing together do not retry together.
DEFAULT_BACKOFF = Backoff(min=0.5, max=30.0, multiplier=2.0, jitter=0.25)

# Jitter only spreads retries out; it needs no cryptographic randomness.
_RNG = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. The defaults suit a bot that must not give up on a blip.

    ``attempts`` counts every try of one request on transient failures (the
    first included). The wait after the n-th failure in a row is
    ``backoff.delay(n)``: the same :class:`~lambda_actors.runtime.backoff.Backoff`
    formula the supervisor uses for restarts (``min`` doubling by
    ``multiplier`` up to ``max``, spread by ``±jitter``). Its ``reset_after``
    does not apply here: every request starts again from ``min``. A 429 is
    not a failure: its wait is the server's, up to ``max_rate_limit_wait_s``.
    """

    attempts: int = 6
    backoff: Backoff = field(default=DEFAULT_BACKOFF)
    max_rate_limit_wait_s: float = 300.0
    #: Told of every 429, waited out or not (a client counts them for
    #: ``/metrics``); it must return at once.
    on_rate_limited: Callable[[], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = [f"attempts must be at least 1 (the first try), got {self.attempts!r}"] if self.attempts < 1 else []
        problems += [f"backoff.{key} {why}" for key, why in self.backoff.problems()]
        if not self.max_rate_limit_wait_s >= 0:
            problems.append(f"max_rate_limit_wait_s must be >= 0 seconds, got {self.max_rate_limit_wait_s!r}")
        if problems:
            raise ValueError("invalid RetryPolicy: " + "; ".join(problems))

    def delay_s(self, failures: int, rng: random.Random | None = _RNG) -> float:
        """The wait after the *failures*-th consecutive transient failure (1, 2, ...)."""
        return self.backoff.delay(failures, rng)


#: Try once; never wait for a rate limit.
NO_RETRY = RetryPolicy(attempts=1, max_rate_limit_wait_s=0.0)


async def call_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    what: str,
    homeserver: str,
) -> T:
    """Run *attempt* until it succeeds or *policy* says stop.

    *attempt* raises :class:`MatrixError` (or a subclass) for a refusal and
    ``httpx.TransportError`` when no answer came. *what* names the request in
    logs (``"PUT send"``) and *homeserver* the server it goes to (its URL
    without credentials or query, as :func:`~lambda_actors.matrix.transport.public_url`
    gives it), so an operator reading a warning knows which homeserver is
    failing. Neither ever holds a token.
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except (InvalidToken, RemoteMediaUnavailable):
            raise
        except RateLimited as exc:
            if policy.on_rate_limited is not None:
                policy.on_rate_limited()
            if exc.retry_after_s > policy.max_rate_limit_wait_s:
                raise
            log.info("matrix.rate_limited", homeserver=homeserver, request=what, retry_after_s=round(exc.retry_after_s, 3))
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
                    "it was not retried because it may have been applied and is not safe to repeat",
                    homeserver=homeserver,
                ) from exc
            failure = exc
        failures += 1
        if failures >= policy.attempts:
            raise HomeserverUnavailable(
                f"{what}: no usable answer from the homeserver after {failures} tries "
                f"(last: {_describe(failure)})",
                homeserver=homeserver,
            ) from failure
        delay = policy.delay_s(failures)
        log.warning(
            "matrix.retrying",
            homeserver=homeserver,
            request=what,
            failure=_describe(failure),
            attempt=failures,
            delay_s=round(delay, 3),
        )
        await trio.sleep(delay)


def _describe(failure: BaseException) -> str:
    if isinstance(failure, MatrixError):
        return str(failure)
    return type(failure).__name__
