"""``node/http``: the HTTP API's listener, an actor like any other.

It runs hypercorn's Trio worker on the node's ASGI app. Supervised: an
exception escaping the server (the port taken, a bug in hypercorn) crashes
this actor alone, and its supervisor restarts the listener by policy; the
rest of the node never notices.

A clean stop is graceful: when the supervisor stops the actor (its mailbox
ends), the API first answers new requests with 503, then hypercorn's
shutdown trigger fires, which stops accepting connections and lets the
requests in flight finish, for up to ``graceful_timeout`` seconds.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.types import ASGIApp

from ..runtime.context import ActorContext
from .api import NodeApi
from .config import Listen

__all__ = ["http_actor"]


async def http_actor(
    ctx: ActorContext, app: ASGIApp, api: NodeApi, listen: Listen, graceful_timeout: float = 10.0
) -> None:
    config = Config()
    config.bind = [str(listen)]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None  # requests are counted in /metrics; tokens never reach a log
    config.errorlog = None  # our own log says what failed (the supervisor logs a crash)
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:

        async def until_stopped() -> None:
            # Nothing is sent to this actor: its mailbox ending is the stop.
            try:
                while True:
                    await ctx.mailbox.receive()
            except trio.EndOfChannel:
                api.draining.set()
                stopping.set()

        nursery.start_soon(until_stopped)
        # hypercorn types its app parameter with its own ASGI TypedDicts,
        # starlette with plain mappings: the same protocol, spelt twice.
        framework = cast(Any, app)
        binds = await nursery.start(partial(serve, framework, config, shutdown_trigger=stopping.wait))
        api.urls = list(binds)
        api.listening.set()
        ctx.log.info("http.listening", on=binds)
        await stopping.wait()
    ctx.log.info("http.stopped")
