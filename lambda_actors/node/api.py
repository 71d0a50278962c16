"""The node's HTTP API as an ASGI app (starlette, on anyio, so on Trio).

The contract is SPEC section 7. What holds for every route:

- **Errors** are JSON ``{"error": CODE, "message": ..., "field"?: ...}`` with
  the status of section 7 (400, 401, 403, 404, 405, 409, 413, 422, 503).
  Client input never causes a 500: a 500 is a bug, answered in the same
  shape without details (they go to the log).
- **Tokens**: ``Authorization: Bearer <token>``, compared in constant time
  against the SHA-256s of node.toml; never logged, never echoed.
- **Bodies** over 64 KiB are refused with 413 before they are read whole
  (the declared length is checked first, then the stream is cut off).
- **Stopping**: once the node is stopping, new requests get 503 while the
  server lets the ones in flight finish.
- **Metrics**: every answer counts in ``lambda_http_requests{route, code}``
  by route *template*, so ids in paths never become labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import ApiClient, NodeConfig
from .health import Facts, assess
from .metrics import NodeMetrics

__all__ = ["MAX_BODY", "ApiError", "NodeApi", "build_app", "read_json", "require"]

_log = structlog.get_logger("lambda_actors.http")

#: Largest request body accepted (SPEC 7: 413 above).
MAX_BODY = 64 * 1024

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success, with the message saying what to do."""

    def __init__(self, status: int, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


@dataclass
class NodeApi:
    """What the routes need from the running node."""

    config: NodeConfig
    metrics: NodeMetrics
    #: The facts /healthz judges, gathered now.
    facts: Callable[[], Facts]
    #: Extra routes (approvals, agents, DAG runs) added by their features.
    routes: list[Route] = field(default_factory=list)
    #: Where the listener is bound (``http://127.0.0.1:8470``), once it is.
    urls: list[str] = field(default_factory=list)
    #: Set once the listener first accepts connections.
    listening: trio.Event = field(default_factory=trio.Event)
    #: Set when the listener starts its graceful stop: new requests get 503.
    draining: trio.Event = field(default_factory=trio.Event)


def require(request: Request, scope: str) -> ApiClient:
    """The calling client, which must hold ``scope``; 401 / 403 otherwise."""
    api: NodeApi = request.app.state.node
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise ApiError(401, "send 'Authorization: Bearer <token>'; `lambda-actors token` makes one for node.toml")
    client = api.config.client_for(token.strip())
    if client is None:
        raise ApiError(401, "unknown token; check it, or add its SHA-256 to node.toml's [[api.clients]]")
    if scope not in client.scopes:
        raise ApiError(403, f"this token lacks the {scope!r} scope; add it to the client's scopes in node.toml")
    return client


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object body; 400 / 415 with the fix otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON; send one JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


async def healthz(request: Request) -> Response:
    api: NodeApi = request.app.state.node
    status, checks = assess(api.facts())
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    api: NodeApi = request.app.state.node
    body, content_type = api.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def build_app(api: NodeApi) -> ASGIApp:
    """The ASGI app: starlette routes inside our guard (limits, errors, metrics)."""
    routes = [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]), *api.routes]
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    app.state.node = api
    return _Guard(app, api, routes)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return ApiError(404, "no such route; the API is under /api/v1 (see docs/api.md)").response()
    if exc.status_code == 405:
        return ApiError(405, f"{request.method} is not allowed here").response()
    return ApiError(exc.status_code, str(exc.detail)).response()


class _Guard:
    """Around the app: 503 while stopping, the body limit, metrics by route
    template, and a JSON 500 for bugs (never a traceback to the caller)."""

    def __init__(self, app: ASGIApp, api: NodeApi, routes: list[Route]) -> None:
        self.app = app
        self.api = api
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        route = self._template(scope)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                # Counted before the caller can see the answer, so a client
                # that reads /metrics next always finds its request there.
                started = True
                self.api.metrics.http_requests.labels(route, str(message["status"])).inc()
            await send(message)

        try:
            if self.api.draining.is_set():
                raise ApiError(503, "the node is stopping; retry against it once it is back")
            declared = _content_length(scope)
            if declared is not None and declared > MAX_BODY:
                raise ApiError(413, f"the body is over {MAX_BODY // 1024} KiB; send less")
            await self.app(scope, _capped(receive), watched_send)
        except ApiError as exc:
            if started:
                raise
            await exc.response()(scope, receive, watched_send)
        except Exception:
            if started:
                raise
            # A bug: the caller gets the contract's shape, the log the details.
            _log.exception("http.bug", route=route)
            bug = ApiError(500, "internal error; the operator's log has the details", code="internal")
            await bug.response()(scope, receive, watched_send)

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return "unmatched"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
    return None


def _capped(receive: Receive) -> Receive:
    """A receive that refuses a body growing past MAX_BODY (chunked uploads
    declare no length)."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ApiError(413, f"the body is over {MAX_BODY // 1024} KiB; send less")
        return message

    return capped

