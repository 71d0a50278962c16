"""The agent routes of the HTTP API (SPEC 7.2, scope ``agents``).

Reads go to the store and the agents directory; registering and
deregistering are calls to ``node/registry``, their one owner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..bot.agents_directory import AgentDirectory
from ..node.api import ApiError, read_json, require
from ..node.health import AgentHealth
from ..runtime.address import Address
from ..runtime.errors import ActorError, CallError
from .messages import Conflict, NotFound, Unservable
from .registration import RegStatus, parse
from .registration_store import RegistrationStore
from .registry_messages import Deregister, Register, Unavailable

__all__ = ["registration_routes"]

SCOPE = "agents"
BASE = "/api/v1/agents"


def registration_routes(
    registry: Address, registrations: RegistrationStore, directory: AgentDirectory,
    states: Callable[[], dict[str, AgentHealth]],
) -> list[Route]:
    async def register(request: Request) -> JSONResponse:
        client = require(request, SCOPE)
        parsed = parse(await read_json(request))
        if isinstance(parsed, list):
            raise ApiError(400, "; ".join(f"{p.field}: {p.message}" for p in parsed), field=parsed[0].field)
        token = request.headers["authorization"].partition(" ")[2].strip()
        registration, created = await call(registry, Register(client.name, token, parsed))
        return JSONResponse(registration.to_json(), status_code=202 if created else 200)

    async def read(request: Request) -> JSONResponse:
        require(request, SCOPE)
        registration = registrations.get(request.path_params["id"])
        if registration is None:
            raise ApiError(404, "no registration has this id")
        return JSONResponse(registration.to_json())

    async def listing(request: Request) -> JSONResponse:
        require(request, SCOPE)
        running = states()
        agents: list[dict[str, Any]] = []
        for agent in directory.config.agents:
            agents.append({"id": agent.id, "kind": "configured", "label": agent.label, **_state(running, agent.id)})
        for registration in registrations.agents():
            did = registration.agent_did
            assert did is not None
            state = (
                {"state": "deregistered"} if registration.status is RegStatus.DEREGISTERED else _state(running, did)
            )
            agents.append({
                "id": did, "kind": "registered", "label": registration.label, "owner": registration.owner,
                "registration_id": registration.id, "room_id": registration.room_id, **state,
            })
        return JSONResponse({"agents": agents})

    async def deregister(request: Request) -> JSONResponse:
        require(request, SCOPE)
        registration = await call(registry, Deregister(request.path_params["did"]))
        return JSONResponse(registration.to_json())

    return [
        Route(f"{BASE}/register", register, methods=["POST"]),
        Route(f"{BASE}/register/{{id}}", read, methods=["GET"]),
        Route(BASE, listing, methods=["GET"]),
        Route(f"{BASE}/{{did}}", deregister, methods=["DELETE"]),
    ]


def _state(running: dict[str, AgentHealth], agent_id: str) -> dict[str, Any]:
    health = running.get(agent_id)
    if health is None:
        return {"state": "not_started"}
    return {"state": health.state, **({"retry_at": health.retry_at} if health.retry_at else {})}


async def call(registry: Address, msg: Any, timeout: float = 60.0) -> Any:
    """Ask ``node/registry``; its refusals as the API's errors. Generous
    timeout: making a room is a few homeserver calls."""
    try:
        return await registry.call(msg, timeout=timeout)
    except Conflict:
        raise ApiError(409, "this request_id was used before with a different body; use a new request_id") from None
    except Unservable as exc:
        raise ApiError(422, str(exc), field=exc.field) from None
    except NotFound:
        raise ApiError(404, "no registered agent has this DID; GET /api/v1/agents lists them") from None
    except Unavailable:
        raise ApiError(503, "the homeserver did not answer; retry in a few seconds") from None
    except (CallError, ActorError):
        raise ApiError(503, "the agent registry is restarting; retry in a few seconds") from None
