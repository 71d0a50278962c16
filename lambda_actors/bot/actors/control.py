"""The control socket: look at a running bot's tree and crash actors on purpose.

``lambda-actors run --control-socket PATH`` listens on a Unix socket (mode
0600: only the bot's own user can connect). One command per line, one JSON
answer per line:

``actors [PREFIX]``
    every actor and supervisor under PREFIX (default: the whole tree), as
    ``{"actors": [{"path", "status", "restarts", "supervisor"}, ...]}``.
``kill PATH``
    crash the actor at PATH as if it raised (``Supervisor.kill``); its
    supervisor's policy decides what happens next. ``{"killed": true}``, or
    false when it was not running.
``stats``
    the root supervisor's statistics.

The chaos run uses it to kill agent connections inside a bot that it also
SIGKILLs; operators use it to see what is parked.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import structlog
import trio

from ...runtime.errors import NoSuchActor
from ...runtime.supervisor import Supervisor

log = structlog.get_logger("lambda_actors.control")

_MAX_LINE = 4096


def walk(root: Supervisor) -> Iterator[dict[str, Any]]:
    """Every child of ``root``'s subtree, depth first, as plain values."""
    for state in root.which_children():
        yield {"path": state.path, "status": str(state.status), "restarts": state.restarts, "supervisor": state.supervisor}
        if state.supervisor:
            try:
                yield from walk(root.child_supervisor(state.name))
            except NoSuchActor:
                continue


def answer(root: Supervisor, line: str) -> dict[str, Any]:
    """The reply to one command line (pure: no I/O, easy to test)."""
    command, _, argument = line.strip().partition(" ")
    argument = argument.strip()
    if command == "actors":
        return {"actors": [a for a in walk(root) if a["path"].startswith(argument)]}
    if command == "kill":
        if not argument:
            return {"error": "kill needs a path, e.g. kill node/agents/agent-0/chat-1"}
        try:
            return {"killed": root.kill(argument, note="killed through the control socket")}
        except NoSuchActor as exc:
            return {"error": str(exc)}
    if command == "stats":
        return {"stats": _plain(asdict(root.statistics()))}
    return {"error": f"unknown command {command!r}; commands: actors [PREFIX], kill PATH, stats"}


async def serve_control(path: Path, root: Supervisor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket at ``path`` until cancelled."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    log.info("control.listening", path=str(path))
    task_status.started()
    try:
        await trio.serve_listeners(lambda stream: _session(stream, root), [listener])
    finally:
        with trio.CancelScope(shield=True):
            path.unlink(missing_ok=True)


async def _session(stream: trio.SocketStream, root: Supervisor) -> None:
    buffer = b""
    async with stream:
        async for data in stream:
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                reply = answer(root, line.decode("utf-8", "replace"))
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
