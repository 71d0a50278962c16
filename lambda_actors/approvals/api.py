"""The approval routes of the HTTP API (SPEC 7.1, scope ``approvals``).

Reads go straight to the store (the record is the truth and reading it
changes nothing); everything that may move a record, or waits for one to
move, is a call to ``node/approvals``, its one owner.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..node.api import ApiError, read_json, require
from ..runtime.address import Address
from ..runtime.errors import ActorError, CallError
from .messages import Cancel, Conflict, NoRoom, NotFound, Read, Submit, Unservable
from .registration_api import call as call_registry
from .registry_messages import MakeRoom
from .record import Status
from .request import parse
from .store import ApprovalStore

__all__ = ["approval_routes"]

SCOPE = "approvals"
BASE = "/api/v1/delivery"


def approval_routes(approvals: Address, store: ApprovalStore, registry: Address | None = None) -> list[Route]:
    async def create(request: Request) -> JSONResponse:
        client = require(request, SCOPE)
        parsed = parse(await read_json(request))
        if isinstance(parsed, list):
            raise ApiError(400, "; ".join(f"{p.field}: {p.message}" for p in parsed), field=parsed[0].field)
        token = request.headers["authorization"].partition(" ")[2].strip()
        submit = Submit(client.name, token, parsed)
        try:
            record, created = await _ask(approvals, submit, no_room=registry is not None)
        except NoRoom:
            # SPEC 7.1: the approver has no room with that agent; the registry
            # makes one (a Space first if they have none), then it is asked there.
            assert registry is not None
            await call_registry(registry, MakeRoom(parsed.approver, parsed.agent_id))
            record, created = await _ask(approvals, submit)
        return JSONResponse(record.to_json(), status_code=201 if created else 200)

    async def read(request: Request) -> JSONResponse:
        require(request, SCOPE)
        wait = _number(request.query_params.get("wait", "0"), "wait", 0, 60)
        record = store.get(request.path_params["id"])
        if record is None:
            raise ApiError(404, "no approval request has this id")
        if not record.final and wait > 0:
            # Only a wait needs the actor (it answers when the record moves);
            # a plain read is the store's, like the audit list.
            record = await _ask(approvals, Read(record.id, wait), timeout=wait + 10)
        return JSONResponse(record.to_json())

    async def cancel(request: Request) -> JSONResponse:
        require(request, SCOPE)
        return JSONResponse((await _ask(approvals, Cancel(request.path_params["id"]))).to_json())

    async def listing(request: Request) -> JSONResponse:
        require(request, SCOPE)
        query = request.query_params
        status = query.get("status")
        if status is not None and status not in set(Status):
            raise ApiError(400, f"status must be one of {', '.join(Status)}", field="status")
        limit = int(_number(query.get("limit", "50"), "limit", 1, 500))
        records = store.listing(
            status=Status(status) if status else None, approver=query.get("approver"), limit=limit, before=query.get("before")
        )
        return JSONResponse({"approvals": [r.to_json() for r in records]})

    return [
        Route(f"{BASE}/approval-request", create, methods=["POST"]),
        Route(f"{BASE}/approval-request/{{id}}", read, methods=["GET"]),
        Route(f"{BASE}/approval-request/{{id}}/cancel", cancel, methods=["POST"]),
        Route(f"{BASE}/approval-requests", listing, methods=["GET"]),
    ]


async def _ask(approvals: Address, msg: Any, timeout: float = 10.0, no_room: bool = False) -> Any:
    try:
        return await approvals.call(msg, timeout=timeout)
    except NoRoom:
        if no_room:
            raise
        raise ApiError(422, "the approver has no room with this agent and none could be made here", field="approver") from None
    except Conflict:
        raise ApiError(409, "this request_id was used before with a different body; use a new request_id") from None
    except Unservable as exc:
        raise ApiError(422, str(exc), field=exc.field) from None
    except NotFound:
        raise ApiError(404, "no approval request has this id") from None
    except (CallError, ActorError):
        raise ApiError(503, "the approvals service is restarting; retry in a few seconds") from None


def _number(text: str, name: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number from {low:g} to {high:g}", field=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low:g} to {high:g}", field=name)
    return value

