"""A fake agent: a real WebSocket server speaking SPEC section 4, bugs on request.

It stands in for a Lambda agent in tests, in the demo and in operators' smoke
tests (``lambda-actors fake-agent --port 7000 --workspace /tmp/ws``). It
serves ``<prefix>/v1/agent_ws/<chat_id>/`` (any other path gets HTTP 404),
sends ``STATUS`` first, and answers each ``USER_MESSAGE``, in order, with
a streamed echo::

    AGENT_EVENT_TEXT_CHUNK  "echo: hel"
    AGENT_EVENT_TEXT_CHUNK  "lo"
    AGENT_EVENT_END         tokens_used

Attachments are looked up in its workspace and reported in the answer
(``attachment incoming/a.txt: 12 bytes`` or ``...: missing``), which proves a
file really arrived. Like the platform's SDK it holds one socket per chat: a
second socket for a chat that is still connected is refused with HTTP 409
"agent busy".

It records every frame it receives (:attr:`FakeAgent.received`, per chat with
:meth:`FakeAgent.received_messages`) and every connection
(:attr:`FakeAgent.connections`), and tests wait for them without sleeping
(:meth:`FakeAgent.wait_for_message`, :meth:`FakeAgent.wait_until`).

Misbehaviours (and a few plain features) are asked for in three ways: on the
object (``agent.misbehave("drop", chat_id=3, times=1)``), by a token in the
user's text (``"hello [[drop]]"``, so an end-to-end test drives them by what
the Matrix user types; tokens are removed from the echo), or for a whole
process with ``--misbehave MODE`` (repeatable). The modes:

==================  ===========================================================
``no-status``       accept the socket, never send STATUS, never answer
                    (not a token: the socket is silent before any message)
``drop``            close the TCP connection mid-answer, without a close frame
``crash``           close the socket at once with code 1011 (internal error)
``garbage``         an invalid JSON frame mid-answer, then carry on
``unknown``         a frame of an unknown type mid-answer, then carry on
``double-end``      send AGENT_EVENT_END twice
``after-end``       send a text chunk and a progress update after END
``stall``           no frame for ``stall_seconds`` mid-answer, then carry on
``escape``          AGENT_EVENT_SEND_FILE of a path outside the workspace
``big``             a text chunk of ``big_size`` characters (over 1 MiB)
``lost-chunk``      a tool step, then the answer without its first chunk
``confirm``         ask for confirmation (CUSTOM_UPDATE kind "confirm"), wait
                    for CONFIRM_RESPONSE, answer "approved" or "denied"
``file[:NAME]``     write ``outbox/NAME`` (default ``report.txt``) in the
                    workspace and send it with AGENT_EVENT_SEND_FILE
``slow``            space the chunks ``slow_interval`` seconds apart
``tool``            a tool call and its result before the answer
``progress``        a progress update (CUSTOM_UPDATE kind "progress")
``error``           answer with an ERROR frame instead of text
``flood``           after END, send text chunks without pause until the bot
                    closes the socket (counted in ``flooded``, per chat)
==================  ===========================================================

Tokens are written ``[[mode]]`` or ``[[mode:arg]]``, e.g. ``[[file:a.csv]]``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio
import trio_websocket

from . import protocol
from .protocol import (
    AgentError,
    ClientFrame,
    ConfirmResponse,
    CustomUpdate,
    ConfirmRequest,
    End,
    SendFile,
    Status,
    TextChunk,
    ToolCallChunk,
    ToolResult,
    UnknownFrame,
    UserMessage,
)

__all__ = ["MODES", "FakeAgent", "Received", "add_arguments", "run"]

log = structlog.get_logger(__name__)

MODES: dict[str, str] = {
    "no-status": "accept the socket but never send STATUS",
    "drop": "close the TCP connection mid-answer",
    "crash": "close the socket with code 1011 on the next message",
    "garbage": "send an invalid JSON frame mid-answer",
    "unknown": "send a frame of an unknown type mid-answer",
    "double-end": "send AGENT_EVENT_END twice",
    "after-end": "send frames after AGENT_EVENT_END",
    "stall": "send nothing for stall_seconds mid-answer",
    "escape": "send a file path outside the workspace",
    "big": "send an oversized text chunk",
    "lost-chunk": "a tool step, then lose the first chunk after it",
    "confirm": "ask for a confirmation and wait for the answer",
    "file": "write outbox/NAME and send it (file:NAME)",
    "slow": "space chunks slow_interval apart",
    "tool": "a tool call and result before the answer",
    "progress": "a progress update before the answer",
    "error": "answer with an ERROR frame",
    "flood": "after END, send frames without pause until the socket is closed",
}

#: USER_MESSAGEs one socket may have waiting for their answer.
_MAX_QUEUED = 16
_TOKEN = re.compile(r"\[\[([a-z][a-z-]*)(?::([^\[\]\s]*))?\]\]")
_SPACED_TOKEN = re.compile(r"[ \t]*" + _TOKEN.pattern)
_ESCAPING_PATH = "../../../../etc/passwd"
_UNKNOWN_TYPE = "AGENT_EVENT_FAKE_NOVELTY"
_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Received:
    """One frame the fake agent received: on which chat and which connection
    of that chat (1 for the first socket, 2 after a reconnect, ...)."""

    chat_id: str
    connection: int
    frame: ClientFrame


@dataclass
class _Rule:
    mode: str
    arg: str | None
    chat_id: str | None
    remaining: int | None


class _Hangup(Exception):
    """The answer closed the socket on purpose (drop, crash)."""


class _Session:
    """One accepted socket of one chat."""

    def __init__(self, chat_id: str, number: int, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream):
        self.chat_id = chat_id
        self.number = number
        self.ws = ws
        self.stream = stream
        self.done = trio.Event()
        self.decisions: dict[str, bool] = {}
        self.decided = trio.Event()
        self.answered = 0
        self.scope = trio.CancelScope()
        self.close_with: tuple[int, str | None] = (1000, None)

    def hang_up(self, code: int, reason: str) -> None:
        """End the conversation; the socket closes with ``code``.

        The close itself happens in the connection's own task, while
        trio-websocket's reader can still complete the closing handshake.
        """
        self.close_with = (code, reason)
        self.scope.cancel()

    async def send(self, frame: object) -> None:
        await self.ws.send_message(protocol.encode(frame))

    def decide(self, response: ConfirmResponse) -> None:
        self.decisions[response.request_id] = response.approved
        self.decided.set()
        self.decided = trio.Event()

    async def decision(self, request_id: str) -> bool:
        while request_id not in self.decisions:
            await self.decided.wait()
        return self.decisions[request_id]


def _normal_prefix(prefix: str) -> str:
    return "/" + "/".join(part for part in prefix.split("/") if part) + ("/" if prefix.strip("/") else "")


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, math.ceil(len(text) / max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class FakeAgent:
    """A fake agent server; start it with ``await nursery.start(agent.serve)``.

    ``workspace`` is its ``/workspace``: attachments are looked up there and
    files it sends are written there. ``port=0`` picks a free port (read
    :attr:`base_url` once started). The time parameters exist so tests can
    keep misbehaviours short: ``stall_seconds`` (how long ``stall`` is
    silent), ``slow_interval`` (gap between ``slow`` chunks); ``big_size`` is
    the length of the ``big`` chunk; ``chunks`` how many pieces an answer is
    cut into; ``busy_grace`` how long a new socket waits for the previous
    socket of its chat to finish closing before it is refused as busy.
    """

    def __init__(
        self,
        workspace: str | Path,
        *,
        prefix: str = "/",
        host: str = "127.0.0.1",
        port: int = 0,
        misbehave: Iterable[str] = (),
        chunks: int = 3,
        slow_interval: float = 0.2,
        stall_seconds: float = 3600.0,
        big_size: int = 2 * protocol.MAX_FRAME_SIZE,
        busy_grace: float = 1.0,
        max_frame_size: int = protocol.MAX_FRAME_SIZE,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.prefix = _normal_prefix(prefix)
        self.host = host
        self.chunks = chunks
        self.slow_interval = slow_interval
        self.stall_seconds = stall_seconds
        self.big_size = big_size
        self.busy_grace = busy_grace
        self.max_frame_size = max_frame_size
        #: Every frame received, in order, across all chats.
        self.received: list[Received] = []
        #: Accepted sockets per chat id (a reconnect counts again).
        self.connections: Counter[str] = Counter()
        #: Sockets refused as "agent busy", per chat id.
        self.refused: Counter[str] = Counter()
        #: Frames sent by ``flood`` after END, per chat id.
        self.flooded: Counter[str] = Counter()
        self._port = port
        self._rules: list[_Rule] = []
        self._sessions: dict[str, _Session] = {}
        self._changed = trio.Event()
        self._path = re.compile("^" + re.escape(self.prefix) + r"v1/agent_ws/([^/?#]+)/(?:\?.*)?$")
        for mode in misbehave:
            self.misbehave(mode)

    # --- addresses -----------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake agent has no port yet: start it with `await nursery.start(agent.serve)`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port<prefix>``, the form agents.yaml uses."""
        return f"http://{self.host}:{self.port}{self.prefix}"

    def socket_url(self, chat_id: str | int) -> str:
        return protocol.socket_url(self.base_url, chat_id)

    # --- misbehaviour --------------------------------------------------------

    def misbehave(self, mode: str, *, chat_id: str | int | None = None, times: int | None = None) -> None:
        """Misbehave with ``mode`` (``"drop"``, ``"file:a.txt"``, ...) from now on.

        Only on ``chat_id`` if given, else on every chat; only for the next
        ``times`` messages (connections, for ``no-status``) if given, else
        until :meth:`behave`.
        """
        name, _, arg = mode.partition(":")
        if name not in MODES:
            raise ValueError(f"unknown fake-agent mode {mode!r}; known modes: {', '.join(MODES)}")
        self._rules.append(_Rule(name, arg or None, None if chat_id is None else str(chat_id), times))

    def behave(self, chat_id: str | int | None = None) -> None:
        """Forget the misbehaviours asked for on ``chat_id`` (all, if ``None``)."""
        if chat_id is None:
            self._rules.clear()
        else:
            self._rules = [rule for rule in self._rules if rule.chat_id != str(chat_id)]

    def _take(self, chat_id: str, wanted: Callable[[str], bool]) -> dict[str, str | None]:
        taken: dict[str, str | None] = {}
        for rule in list(self._rules):
            if rule.chat_id not in (None, chat_id) or not wanted(rule.mode):
                continue
            taken[rule.mode] = rule.arg
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
        return taken

    # --- what happened -------------------------------------------------------

    def received_frames(self, chat_id: str | int) -> list[ClientFrame]:
        """Every frame received on one chat, in order."""
        return [r.frame for r in self.received if r.chat_id == str(chat_id)]

    def received_messages(self, chat_id: str | int | None = None) -> list[str]:
        """The texts of the USER_MESSAGEs received (on one chat, or on all)."""
        return [
            r.frame.text
            for r in self.received
            if isinstance(r.frame, UserMessage) and (chat_id is None or r.chat_id == str(chat_id))
        ]

    @property
    def open_chats(self) -> frozenset[str]:
        """Chats with a socket open right now."""
        return frozenset(self._sessions)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return as soon as ``condition()`` is true; it is re-checked after
        every frame received, every socket opened, refused or closed, and
        when a chat's flood starts."""
        while not condition():
            await self._changed.wait()

    async def wait_for_message(
        self,
        predicate: Callable[[UserMessage], bool] | None = None,
        *,
        chat_id: str | int | None = None,
    ) -> Received:
        """The first USER_MESSAGE received (already, or from now on) that
        matches ``predicate`` on ``chat_id`` (any chat if ``None``)."""
        found: list[Received] = []

        def match() -> bool:
            for r in self.received:
                if not isinstance(r.frame, UserMessage):
                    continue
                if chat_id is not None and r.chat_id != str(chat_id):
                    continue
                if predicate is None or predicate(r.frame):
                    found.append(r)
                    return True
            return False

        await self.wait_until(match)
        return found[0]

    async def wait_for_connections(self, chat_id: str | int, count: int = 1) -> None:
        """Wait until ``count`` sockets in all have been accepted for a chat."""
        await self.wait_until(lambda: self.connections[str(chat_id)] >= count)

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # --- faults injected from outside ----------------------------------------

    async def kill(self, chat_id: str | int | None = None, *, abrupt: bool = False) -> None:
        """Close the open socket of ``chat_id`` (all, if ``None``) now, as an
        agent container dying would: with code 1011, or by cutting the TCP
        connection if ``abrupt``. Returns when the sockets are gone."""
        sessions = [s for c, s in self._sessions.items() if chat_id is None or c == str(chat_id)]
        for session in sessions:
            if abrupt:
                await trio.aclose_forcefully(session.stream)
            else:
                session.hang_up(1011, "fake agent killed")
        for session in sessions:
            await session.done.wait()

    # --- serving -------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[FakeAgent] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``nursery.start`` returns once it accepts."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        listeners = await trio.open_tcp_listeners(self._port, host=self.host)
        self._port = listeners[0].socket.getsockname()[1]
        log.info("fake_agent.listening", url=self.base_url, workspace=str(self.workspace))
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._on_tcp, listeners)
            task_status.started(self)

    async def _on_tcp(self, stream: trio.SocketStream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, stream, max_message_size=self.max_frame_size
                    )
                if request is not None:
                    await self._on_request(request, stream)
                nursery.cancel_scope.cancel()
        except Exception:
            # One broken connection must never take the whole fake agent down
            # (chaos runs keep it up for thousands of sockets).
            log.exception("fake_agent.connection_failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _on_request(self, request: trio_websocket.WebSocketRequest, stream: trio.SocketStream) -> None:
        match = self._path.match(request.path)
        if match is None:
            log.info("fake_agent.not_found", path=request.path)
            await request.reject(404, body=f"no agent socket at {request.path}".encode())
            return
        chat_id = match[1]
        previous = self._sessions.get(chat_id)
        if previous is not None and previous.ws.closed is not None:
            # The previous socket is already closing: give it a moment, so a
            # client that closes and reconnects is not refused by a race.
            with trio.move_on_after(self.busy_grace):
                await previous.done.wait()
        if chat_id in self._sessions:
            self.refused[chat_id] += 1
            self._notify()
            log.info("fake_agent.busy", chat_id=chat_id)
            await request.reject(409, body=b"agent busy: another client holds this chat")
            return
        ws = await request.accept()
        self.connections[chat_id] += 1
        session = _Session(chat_id, self.connections[chat_id], ws, stream)
        self._sessions[chat_id] = session
        self._notify()
        log.info("fake_agent.connected", chat_id=chat_id, connection=session.number)
        try:
            with session.scope:
                await self._converse(session)
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await ws.aclose(*session.close_with)
            del self._sessions[chat_id]
            session.done.set()
            self._notify()
            log.info("fake_agent.disconnected", chat_id=chat_id, connection=session.number)

    async def _converse(self, session: _Session) -> None:
        silent = bool(self._take(session.chat_id, lambda mode: mode == "no-status"))
        # Bounded: the bot sends one message at a time per chat; a client
        # that queues more than this is hung up on, as a real agent would.
        send_message, messages = trio.open_memory_channel[UserMessage](_MAX_QUEUED)
        async with trio.open_nursery() as nursery:
            if not silent:
                await self._send_or_hang_up(session, Status(state="ready", chat_id=session.chat_id))
                nursery.start_soon(self._answer_all, session, messages, nursery.cancel_scope)
            try:
                while True:
                    data = await session.ws.get_message()
                    frame = protocol.parse_client_frame(data, max_size=self.max_frame_size)
                    self.received.append(Received(session.chat_id, session.number, frame))
                    self._notify()
                    if isinstance(frame, UserMessage):
                        try:
                            send_message.send_nowait(frame)
                        except trio.WouldBlock:
                            log.warning("fake_agent.too_many_queued", chat_id=session.chat_id, limit=_MAX_QUEUED)
                            break
                    elif isinstance(frame, ConfirmResponse):
                        session.decide(frame)
            except trio_websocket.ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def _send_or_hang_up(self, session: _Session, frame: object) -> None:
        try:
            await session.send(frame)
        except trio_websocket.ConnectionClosed:
            pass

    async def _answer_all(
        self,
        session: _Session,
        messages: trio.MemoryReceiveChannel[UserMessage],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for message in messages:
                await self._answer(session, message)
        except (_Hangup, trio_websocket.ConnectionClosed):
            scope.cancel()

    async def _answer(self, session: _Session, message: UserMessage) -> None:
        session.answered += 1
        modes = self._take(session.chat_id, lambda mode: mode != "no-status")
        for token in _TOKEN.finditer(message.text):
            if token[1] in MODES and token[1] != "no-status":
                modes[token[1]] = token[2]
        text = _SPACED_TOKEN.sub(lambda m: "" if m[1] in MODES else m[0], message.text).strip()
        if "crash" in modes:
            session.hang_up(1011, "fake agent crashed")
            await trio.sleep_forever()
        lines = [f"echo: {text}"]
        lines += [self._describe_attachment(path) for path in message.attachments]
        if "confirm" in modes:
            request_id = f"{session.chat_id}-{session.number}-{session.answered}"
            ask = ConfirmRequest(request_id=request_id, action="delete_file", details="delete outbox/old.txt")
            await session.send(CustomUpdate(payload={"title": "May I delete a file?"}, confirm=ask))
            approved = await session.decision(request_id)
            lines.append(f"confirmation {request_id}: {'approved' if approved else 'denied'}")
        if "progress" in modes:
            await session.send(CustomUpdate(payload={"kind": "progress", "message": "thinking", "done": 1, "total": 2}))
        if "tool" in modes or "lost-chunk" in modes:
            await session.send(ToolCallChunk(tool_name="list_workspace", args=json.dumps({"path": "."})))
            count = sum(1 for _ in self.workspace.iterdir())
            await session.send(ToolResult(tool_name="list_workspace", result=f"{count} entries"))
        if "file" in modes:
            await session.send(SendFile(path=self._write_outbox(modes["file"], session, text)))
        if "escape" in modes:
            await session.send(SendFile(path=_ESCAPING_PATH))
        if "error" in modes:
            await session.send(AgentError(message="the fake agent failed on purpose", code="fake_error"))
            return

        answer = "\n".join(lines)
        chunks = _split(answer, self.chunks)
        if "lost-chunk" in modes and len(chunks) > 1:
            chunks = chunks[1:]
        for index, chunk in enumerate(chunks):
            await session.send(TextChunk(text=chunk))
            if index == 0:
                await self._mid_answer(session, modes)
            if "slow" in modes and index < len(chunks) - 1:
                await trio.sleep(self.slow_interval)
        await session.send(End(tokens_used=len(answer)))
        if "double-end" in modes:
            await session.send(End(tokens_used=len(answer)))
        if "after-end" in modes:
            await session.send(TextChunk(text=" (late)"))
            await session.send(CustomUpdate(payload={"kind": "progress", "message": "late"}))
        if "flood" in modes:
            # Ends only when the socket does (ConnectionClosed ends the session).
            while True:
                await session.send(TextChunk(text=" (flood)"))
                self.flooded[session.chat_id] += 1
                if self.flooded[session.chat_id] == 1:
                    self._notify()

    async def _mid_answer(self, session: _Session, modes: dict[str, str | None]) -> None:
        if "garbage" in modes:
            await session.ws.send_message('{"type": "AGENT_EVENT_TEXT_CHUNK", "text": ')
        if "unknown" in modes:
            await session.send(UnknownFrame(type=_UNKNOWN_TYPE, raw={"note": "a frame type from the future"}))
        if "big" in modes:
            await session.send(TextChunk(text="x" * self.big_size))
        if "drop" in modes:
            await trio.aclose_forcefully(session.stream)
            raise _Hangup
        if "stall" in modes:
            await trio.sleep(self.stall_seconds)

    def _describe_attachment(self, path: str) -> str:
        candidate = (self.workspace / path).resolve()
        if not candidate.is_relative_to(self.workspace):
            return f"attachment {path}: outside the workspace"
        if not candidate.is_file():
            return f"attachment {path}: missing"
        return f"attachment {path}: {candidate.stat().st_size} bytes"

    def _write_outbox(self, name: str | None, session: _Session, text: str) -> str:
        safe = Path(name or "report.txt").name or "report.txt"
        if safe in {".", ".."}:
            safe = "report.txt"
        outbox = self.workspace / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        (outbox / safe).write_text(f"report for chat {session.chat_id}\n{text}\n", encoding="utf-8")
        return f"outbox/{safe}"


# --- command line ------------------------------------------------------------


def _mode(value: str) -> str:
    if value.partition(":")[0] not in MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {value!r}; choose from: {', '.join(MODES)}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--workspace", type=Path, required=True, help="the agent's /workspace (created if missing)")
    parser.add_argument("--prefix", default="/", help="path prefix, e.g. /agent_0/ (default: /)")
    parser.add_argument(
        "--misbehave",
        action="append",
        default=[],
        type=_mode,
        metavar="MODE",
        help="misbehave on every chat: " + ", ".join(MODES) + " (repeatable)",
    )
    parser.add_argument("--stall-seconds", type=float, default=3600.0, help="how long 'stall' stays silent")
    parser.add_argument("--slow-interval", type=float, default=0.2, help="gap between 'slow' chunks, in seconds")


async def _main(args: argparse.Namespace) -> None:
    # stdout carries the URL (scripts read its first line); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    agent = FakeAgent(
        args.workspace,
        prefix=args.prefix,
        host=args.host,
        port=args.port,
        misbehave=args.misbehave,
        stall_seconds=args.stall_seconds,
        slow_interval=args.slow_interval,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve)
            print(agent.base_url, flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def run(args: argparse.Namespace) -> int:
    """``lambda-actors fake-agent``: serve until SIGINT or SIGTERM, exit 0."""
    try:
        trio.run(_main, args)
    except OSError as exc:
        print(f"fake-agent: cannot listen on {args.host}:{args.port}: {exc}", flush=True)
        return 1
    return 0
