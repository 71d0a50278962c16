"""The control socket: look at a running bot's tree and crash actors on purpose.

``lambda-actors run --control-socket PATH`` listens on a Unix socket (mode
0600: only the bot's own user can connect). One command per line, one JSON
answer per line:

``actors [PREFIX]``
    every actor and supervisor under PREFIX (default: the whole tree), as
    ``{"actors": [{"path", "status", "restarts", "supervisor", "retry_at"},
    ...]}``. ``retry_at`` is the wall-clock time (ISO 8601, UTC) at which a
    parked or backing-off actor is tried again, else null.
``kill PATH``
    crash the actor at PATH as if it raised (``Supervisor.kill``); its
    supervisor's policy decides what happens next. ``{"killed": true}``, or
    false when it was not running.
``stats``
    the whole tree: ``{"stats": {"restarts", "parks", "supervisors": [...]}}``
    with the totals and each supervisor's own figures (its path, children
    running / backing off / parked, restarts and parks since it started).
``deadletters [N]``
    the newest N (default 20, at most 100) events set aside because handling
    them crashed their room too often: event id, room, sender, error,
    failures, when (ISO 8601, UTC). The trace is left out (it is long and in
    the database); ``{"deadletters": [...]}``.

The chaos run uses it to kill agent connections inside a bot that it also
SIGKILLs; operators use it to see what is parked and what was set aside,
with ``lambda-actors control PATH COMMAND`` (:func:`run`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
import trio

from ...runtime.errors import NoSuchActor
from ...runtime.state import ChildState
from ...runtime.supervisor import Supervisor
from ..store import Store

log = structlog.get_logger("lambda_actors.control")

_MAX_LINE = 4096
_COMMANDS = "actors [PREFIX], kill PATH, stats, deadletters [N]"


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds")


def describe(path: str, state: ChildState, now_wall: float) -> dict[str, Any]:
    """One actor as plain values; ``retry_in`` (seconds from the snapshot) becomes a wall-clock time."""
    retry_at = None if state.retry_in is None else _iso(now_wall + state.retry_in)
    return {
        "path": path,
        "status": str(state.status),
        "restarts": state.restarts,
        "supervisor": state.supervisor,
        "retry_at": retry_at,
    }


def tree_stats(root: Supervisor) -> dict[str, Any]:
    supervisors = [_plain(asdict(s)) for s in root.tree_statistics()]
    return {
        "restarts": sum(s["restarts"] for s in supervisors),
        "parks": sum(s.get("parks", 0) for s in supervisors),
        "supervisors": supervisors,
    }


def answer(root: Supervisor, line: str, store: Store | None = None, *, now_wall: float | None = None) -> dict[str, Any]:
    """The reply to one command line (no I/O but the store's read: easy to test)."""
    command, _, argument = line.strip().partition(" ")
    argument = argument.strip()
    if command == "actors":
        wall = time.time() if now_wall is None else now_wall
        return {"actors": [describe(p, s, wall) for p, s in root.walk() if p.startswith(argument)]}
    if command == "kill":
        if not argument:
            return {"error": "kill needs a path, e.g. kill node/agents/agent-0/chat-1"}
        try:
            return {"killed": root.kill(argument, note="killed through the control socket")}
        except NoSuchActor as exc:
            return {"error": str(exc)}
    if command == "stats":
        return {"stats": tree_stats(root)}
    if command == "deadletters":
        if store is None:
            return {"error": "deadletters needs the bot's store; this control socket has none"}
        if argument and not (argument.isdigit() and 0 < int(argument) <= 100):
            return {"error": f"deadletters takes a count from 1 to 100, not {argument[:20]!r}"}
        letters = store.dead_letters(limit=int(argument) if argument else 20)
        return {
            "deadletters": [
                {
                    "event_id": d.event_id,
                    "room_id": d.room_id,
                    "sender": d.sender,
                    "error": d.error,
                    "failures": d.failures,
                    "set_aside_at": _iso(d.set_aside_at),
                }
                for d in letters
            ]
        }
    return {"error": f"unknown command {command[:40]!r}; commands: {_COMMANDS}"}


async def serve_control(
    path: Path,
    root: Supervisor,
    store: Store | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket at ``path`` until cancelled.

    A stale socket left at ``path`` by an earlier run is replaced; the
    caller checks first that nothing else is there (``check_control_socket``).
    """
    path = Path(path)
    if path.is_socket():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket 0600 from its first moment (a chmod after
    # bind would leave a window where anyone could connect).
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    listener = trio.SocketListener(sock)
    log.info("control.listening", path=str(path))
    task_status.started()

    async def session(stream: trio.SocketStream) -> None:
        await _session(stream, root, store)

    try:
        await trio.serve_listeners(session, [listener])
    finally:
        with trio.CancelScope(shield=True):
            path.unlink(missing_ok=True)


async def _session(stream: trio.SocketStream, root: Supervisor, store: Store | None) -> None:
    # A session's failure must never reach serve_listeners: it would end the
    # control socket's task and, with it, the bot. A client that hangs up is
    # normal; anything else is a bug of this module, logged and contained.
    try:
        await _converse(stream, root, store)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("control.session_failed")


async def _converse(stream: trio.SocketStream, root: Supervisor, store: Store | None) -> None:
    buffer = b""
    async with stream:
        async for data in stream:
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                reply = answer(root, line.decode("utf-8", "replace"), store)
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            if len(buffer) > _MAX_LINE:
                await stream.send_all(json.dumps({"error": "line too long"}).encode() + b"\n")
                return


async def control_request(path: Path, line: str) -> dict[str, Any]:
    """Send one command to a bot's control socket and return its answer."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(line.encode() + b"\n")
        buffer = b""
        async for data in stream:
            buffer += data
            if b"\n" in buffer:
                return json.loads(buffer.split(b"\n", 1)[0])
    raise ConnectionError(f"the control socket {path} closed without answering")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- lambda-actors control ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("socket", type=Path, metavar="SOCKET", help="the bot's --control-socket path")
    parser.add_argument("command", nargs="+", metavar="COMMAND", help=_COMMANDS)


def run(args: argparse.Namespace) -> int:
    """Send one command, print the answer as indented JSON; 1 if the bot answered an error."""
    try:
        reply = trio.run(control_request, args.socket, " ".join(args.command))
    except (OSError, ConnectionError) as exc:
        print(
            f"lambda-actors control: cannot talk to {args.socket} ({getattr(exc, 'strerror', None) or exc}); "
            f"is the bot running with --control-socket {args.socket}, as this user?",
            file=sys.stderr,
        )
        return 5
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 1 if "error" in reply else 0
