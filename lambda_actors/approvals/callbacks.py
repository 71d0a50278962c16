"""``node/approvals/callbacks``: tell the client the decision, until it listens.

SPEC 7.1: on a final status the node POSTs the record to the request's
``callback_url`` with ``X-Lambda-Delivery`` (the delivery id: the same on
every retry, so the client can drop repeats) and ``X-Lambda-Signature:
sha256=<HMAC-SHA256 of the body keyed with the client's token>``. Any 2xx
ends it; anything else (an error status, a refused connection, a timeout)
is retried 1 s, 2 s, 4 s ... up to 5 min apart, for 24 h. The schedule lives
in the store, so a restart resumes it where it was.

Deliveries run side by side (at most ``parallel`` at once), each with a
timeout, so one slow receiver never holds back another's callback.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable

import httpx
import trio

from ..runtime.backoff import Backoff
from ..runtime.context import ActorContext
from .store import ApprovalStore, Callback

__all__ = ["RETRY", "Poke", "callback_actor", "signature"]

#: 1 s doubling to 5 min (SPEC 7.1); no jitter: one receiver, one schedule.
RETRY = Backoff(min=1.0, max=300.0, multiplier=2.0)


class Poke:
    """A decision owes a callback now: look at the schedule again."""


def signature(body: bytes, token: str) -> str:
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


async def callback_actor(
    ctx: ActorContext, store: ApprovalStore, *, parallel: int = 8, timeout: float = 10.0,
    retry: Backoff = RETRY, clock: Callable[[], float] = time.time,
) -> None:
    limiter = trio.CapacityLimiter(parallel)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http, trio.open_nursery() as nursery:

        async def deliver(callback: Callback) -> None:
            async with limiter:
                outcome = await _post(http, callback)
            now = clock()
            if outcome is None:
                store.callback_done(callback.delivery_id)
                ctx.log.info("approvals.callback_delivered", approval_id=callback.approval_id, attempts=callback.attempts + 1)
            elif now + retry.delay(callback.attempts + 1) > callback.give_up_at:
                store.callback_done(callback.delivery_id)
                ctx.log.warning("approvals.callback_given_up", approval_id=callback.approval_id, error=outcome)
            else:
                store.callback_failed(callback.delivery_id, outcome, now + retry.delay(callback.attempts + 1))
                ctx.log.info("approvals.callback_failed", approval_id=callback.approval_id, error=outcome)
            ctx.address.send_nowait(Poke())  # look at the schedule again (a full mailbox has a poke already)

        while True:
            now = clock()
            for callback in store.due_callbacks(now):
                # Leased while it is tried: not due again unless the node dies
                # mid-delivery (then it is retried; the delivery id is the same).
                store.lease_callback(callback.delivery_id, until=now + timeout + 1)
                nursery.start_soon(deliver, callback)
            next_at = store.next_callback_at()
            wait = math.inf if next_at is None else max(0.0, next_at - clock())
            with trio.move_on_after(wait):
                try:
                    await ctx.mailbox.receive()
                except trio.EndOfChannel:
                    nursery.cancel_scope.cancel()  # undelivered callbacks stay in the store
                    return


async def _post(http: httpx.AsyncClient, callback: Callback) -> str | None:
    """None when delivered, else what went wrong (for the log and the store)."""
    headers = {
        "Content-Type": "application/json",
        "X-Lambda-Delivery": callback.delivery_id,
        "X-Lambda-Signature": signature(callback.body, callback.signing_key),
    }
    try:
        response = await http.post(callback.url, content=callback.body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
