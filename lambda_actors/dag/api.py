"""The DAG routes of the HTTP API (SPEC 8 "API", scope ``dag``).

As with approvals: reads go straight to the store (the record is the truth
and reading it changes nothing); everything that changes a run, or follows
one live, goes through :class:`DagControl`, which the run actors implement.
The routes know nothing else of them, so they are tested against a fake.

Routes (all under ``/api/v1/dag``):

- ``POST /publish``: the DAG file as TOML (``Content-Type: application/toml``
  or ``text/plain``), or the same document as JSON -> ``{dag_id, version}``;
  a spec with problems is 422 with every problem in ``problems``.
- ``POST /{dag_id}/confirm`` (optional JSON ``{"version", "workers"}``;
  default: the latest published; ``workers``, a list of node ids, only in
  mode ``federation``, where it is required) -> 201 ``{run_id}``.
- ``GET /runs[?status=&limit=&before=]``, newest first.
- ``GET /runs/{run_id}``: the run, its progress, every task with its status,
  attempts and timings.
- ``POST /runs/{run_id}/cancel|pause|resume`` -> the run after the move; 409
  when the run cannot make it (it has ended, say).
- ``GET /runs/{run_id}/tasks/{task_id}/output``: the whole output, however
  long (the status room only gets a summary of a long one).
- ``GET /runs/{run_id}/events``: server-sent events. First a ``snapshot``
  (the run as the store has it), then every transition as it happens (SSE
  ``event`` = the SPEC 8.1 type, ``data`` = its content); the stream ends
  after the run's final event. Watched before the snapshot is read, so no
  transition falls between the two (one may be seen in both: statuses are
  idempotent to a watcher). If the run actors cannot be watched (they are
  restarting), one ``unavailable`` event ends the stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..node.api import ApiError, read_json, require
from ..runtime.errors import ActorError, CallError
from .spec import DagSpecError
from .status import LogicalEvent, rfc3339
from .store import DagStore, IllegalMove, NotFound, RunRecord, StoredSpec, TerminalState
from .scheduler import RunStatus

__all__ = ["BASE", "SCOPE", "DagControl", "dag_routes", "run_json"]

SCOPE = "dag"
BASE = "/api/v1/dag"
#: TOML bodies: what curl, editors and the CLI send for a .toml file.
TOML_TYPES = frozenset({"application/toml", "text/toml", "text/x-toml", "text/plain", "application/x-toml"})
#: A comment line on an idle event stream, so a watcher (and any proxy)
#: knows the node is there, and a gone watcher is noticed by the write.
KEEPALIVE_S = 15.0


class DagControl(Protocol):
    """What the DAG routes ask of the node's run actors.

    Every method answers once its change is in the store (the routes read
    the store right after). Errors: :class:`~.store.NotFound` for an unknown
    DAG or run; :class:`~.store.IllegalMove` (:class:`~.store.TerminalState`)
    for a move the run cannot make; :class:`~.spec.DagSpecError` for a spec
    with problems; ``CallError`` / ``ActorError`` while the actors restart.
    """

    async def publish(self, document: str | Mapping[str, Any], client: str) -> StoredSpec:
        """Check the document (against the node's agents and ``[dag]
        allow_commands``) and keep it under its content version."""
        ...

    async def confirm(self, dag_id: str, version: str | None, client: str, workers: Sequence[str] = ()) -> str:
        """Start a run of that version (None: the latest published); its run id.
        ``workers``: the nodes a run of mode ``federation`` is assigned to."""
        ...

    async def cancel(self, run_id: str) -> None: ...

    async def pause(self, run_id: str) -> None: ...

    async def resume(self, run_id: str) -> None: ...

    def watch(self, run_id: str) -> AbstractAsyncContextManager[AsyncIterator[LogicalEvent]]:
        """The run's transitions from now on, as SPEC 8.1 events; the iterator
        ends after the run's final event. The run actors feed it without
        waiting (``send_nowait``): a watcher that falls too far behind is
        ended rather than slowing the run (it reconnects and gets a fresh
        snapshot)."""
        ...


def dag_routes(control: DagControl, store: DagStore, *, keepalive_s: float = KEEPALIVE_S) -> list[Route]:
    async def publish(request: Request) -> JSONResponse:
        client = require(request, SCOPE)
        document = await _document(request)
        try:
            stored = await control.publish(document, client.name)
        except DagSpecError as exc:
            raise _SpecProblems(exc) from None
        except (CallError, ActorError):
            raise _restarting() from None
        return JSONResponse({"dag_id": stored.dag_id, "version": stored.version})

    async def confirm(request: Request) -> JSONResponse:
        client = require(request, SCOPE)
        version = None
        workers: list[str] = []
        if await request.body():
            body = await read_json(request)
            _unknown_fields(body, {"version", "workers"})
            version = body.get("version")
            if version is not None and not isinstance(version, str):
                raise ApiError(400, "version must be the string /publish answered", field="version")
            workers = body.get("workers") or []
            if not isinstance(workers, list) or not all(isinstance(w, str) and w for w in workers):
                raise ApiError(400, "workers must be a list of node ids, e.g. [\"node-a\", \"node-b\"]", field="workers")
        if workers:
            run_id = await _ask(control.confirm(request.path_params["dag_id"], version, client.name, workers))
        else:
            run_id = await _ask(control.confirm(request.path_params["dag_id"], version, client.name))
        return JSONResponse({"run_id": run_id}, status_code=201)

    async def listing(request: Request) -> JSONResponse:
        require(request, SCOPE)
        query = request.query_params
        status = query.get("status")
        if status is not None and status not in set(RunStatus):
            raise ApiError(400, f"status must be one of {', '.join(RunStatus)}", field="status")
        limit = _whole(query.get("limit", "50"), "limit", 1, 500)
        runs = store.runs(status=status, limit=limit, before=query.get("before"))
        return JSONResponse({"runs": [run_json(run, store.progress(run.run_id)) for run in runs]})

    async def read(request: Request) -> JSONResponse:
        require(request, SCOPE)
        return JSONResponse(_run_detail(store, request.path_params["run_id"]))

    def move(name: str) -> Any:
        async def handler(request: Request) -> JSONResponse:
            require(request, SCOPE)
            run_id = request.path_params["run_id"]
            _known_run(store, run_id)
            await _ask(getattr(control, name)(run_id))
            run = store.run(run_id)
            return JSONResponse(run_json(run, store.progress(run_id)))

        return handler

    async def output(request: Request) -> JSONResponse:
        require(request, SCOPE)
        run_id, task_id = request.path_params["run_id"], request.path_params["task_id"]
        _known_run(store, run_id)
        try:
            found = store.output(run_id, task_id)
        except NotFound:
            try:
                task = store.task(run_id, task_id)
            except NotFound:
                raise ApiError(404, f"run {run_id} has no task {task_id!r}") from None
            raise ApiError(404, f"task {task_id!r} has no output: it is {task.status}") from None
        return JSONResponse(
            {
                "run_id": found.run_id, "task_id": found.task_id, "attempt": found.attempt,
                "size": found.size, "artifacts": list(found.artifacts), "output": found.text,
            }
        )

    async def events(request: Request) -> Response:
        require(request, SCOPE)
        run_id = request.path_params["run_id"]
        _known_run(store, run_id)

        async def stream() -> AsyncIterator[str]:
            # The watch is opened inside the stream, so whatever ends the
            # stream (the run's end, the watcher leaving) closes it too.
            try:
                async with control.watch(run_id) as feed:
                    detail = _run_detail(store, run_id)
                    yield _sse("snapshot", detail)
                    if RunStatus(detail["status"]).final:
                        return
                    iterator = feed.__aiter__()
                    while True:
                        with trio.move_on_after(keepalive_s) as idle:
                            try:
                                event = await iterator.__anext__()
                            except StopAsyncIteration:
                                return
                        if idle.cancelled_caught:
                            yield ": keepalive\n\n"
                            continue
                        yield _sse(event.type, event.content)
            except (CallError, ActorError):
                # The headers are out: the watcher learns it in the stream
                # and reconnects (a fresh snapshot follows).
                yield _sse("unavailable", {"message": _restarting().message})

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    runs = f"{BASE}/runs/{{run_id}}"
    return [
        Route(f"{BASE}/publish", publish, methods=["POST"]),
        Route(f"{BASE}/{{dag_id}}/confirm", confirm, methods=["POST"]),
        Route(f"{BASE}/runs", listing, methods=["GET"]),
        Route(runs, read, methods=["GET"]),
        Route(f"{runs}/cancel", move("cancel"), methods=["POST"]),
        Route(f"{runs}/pause", move("pause"), methods=["POST"]),
        Route(f"{runs}/resume", move("resume"), methods=["POST"]),
        Route(f"{runs}/tasks/{{task_id}}/output", output, methods=["GET"]),
        Route(f"{runs}/events", events, methods=["GET"]),
    ]


# -- what the routes answer -------------------------------------------------------------


def run_json(run: RunRecord, progress: Mapping[str, int]) -> dict[str, Any]:
    """A run as the API shows it (times RFC 3339 UTC)."""
    return {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "version": run.version,
        "status": str(run.status),
        "owner": run.owner,
        "progress": dict(progress),
        "created_at": _time(run.created_at),
        "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
        "room_id": run.room_id,
    }


def _run_detail(store: DagStore, run_id: str) -> dict[str, Any]:
    run = _known_run(store, run_id)
    attempts: dict[str, list[dict[str, Any]]] = {}
    for attempt in store.attempts(run_id):
        attempts.setdefault(attempt.task_id, []).append(
            {
                "attempt": attempt.attempt,
                "status": str(attempt.status),
                "started_at": _time(attempt.started_at),
                "finished_at": _time(attempt.finished_at),
                "reason": attempt.reason,
                "session_id": attempt.session_id,
            }
        )
    tasks = []
    for task in store.tasks(run_id):
        history = attempts.get(task.task_id, [])
        tasks.append(
            {
                "task_id": task.task_id,
                "status": str(task.status),
                "attempts": task.attempts,
                "started_at": _time(task.started_at),
                "finished_at": _time(task.finished_at),
                "reason": task.reason,
                "history": sorted(history, key=lambda a: a["attempt"]),
            }
        )
    return {**run_json(run, store.progress(run_id)), "tasks": tasks}


def _known_run(store: DagStore, run_id: str) -> RunRecord:
    try:
        return store.run(run_id)
    except NotFound:
        raise ApiError(404, f"no run {run_id!r}; GET {BASE}/runs lists them") from None


async def _ask(call: Any) -> Any:
    try:
        return await call
    except TerminalState as exc:
        raise ApiError(409, f"{exc}; a run that ended stays as it ended", code="conflict") from None
    except IllegalMove as exc:
        raise ApiError(409, str(exc), code="conflict") from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except (CallError, ActorError):
        raise _restarting() from None


def _restarting() -> ApiError:
    return ApiError(503, "the DAG service is restarting; retry in a few seconds")


class _SpecProblems(ApiError):
    """422 with every problem of the spec, each where it is and the fix."""

    def __init__(self, exc: DagSpecError) -> None:
        first = exc.problems[0][0] if exc.problems else None
        count = len(exc.problems)
        summary = exc.lines()[0] if count == 1 else f"{count} problems; see problems"
        super().__init__(422, summary, field=first or None)
        self.problems = exc.problems

    def response(self) -> JSONResponse:
        response = super().response()
        body = json.loads(bytes(response.body))
        body["problems"] = [{"where": where, "what": what} for where, what in self.problems]
        return JSONResponse(body, status_code=self.status)


async def _document(request: Request) -> str | dict[str, Any]:
    """The DAG document of a publish: JSON as a mapping, TOML as its text."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await read_json(request)
    if content_type not in TOML_TYPES:
        raise ApiError(
            415, "send the DAG file as TOML ('Content-Type: application/toml') or the same document as JSON"
        )
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the TOML is not UTF-8 (byte {exc.start}); save the file as UTF-8") from None


def _unknown_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"unknown field; the fields here are {sorted(allowed)}", field=key)


def _whole(text: str, name: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", field=name)
    return int(text)


def _time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(datetime.fromtimestamp(ts, UTC))


def _sse(event_type: str, data: Mapping[str, Any]) -> str:
    # One line of JSON: an SSE data field ends at a newline.
    return f"event: {event_type}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
