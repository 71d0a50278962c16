"""One Trio connection to one (agent, chat) WebSocket (SPEC section 4).

::

    async with open_agent_connection(base_url, chat_id) as agent:
        await agent.send_user_message("hello", ["incoming/a.txt"])
        while True:
            frame = await agent.receive()
            ...                       # TextChunk, ToolCallChunk, ..., End

Entering the block connects and waits for the agent's STATUS; leaving it
closes the socket, always, whatever happened inside (the reader task lives in
a nursery of the block, so nothing outlives it): with a closing handshake
normally, by closing the TCP connection at once when the block is cancelled.

The connection keeps the books a caller would otherwise get wrong:

- **Answers outstanding.** Each ``USER_MESSAGE`` opens an answer; ``END`` (or
  ``ERROR``) closes the oldest. A frame that arrives while no answer is open
  (a second ``END``, text after ``END``) is handed back wrapped in
  :class:`Late`, so it is never mistaken for the start of the next answer.
- **Stalls.** While an answer is open, ``receive()`` waits at most
  ``idle_timeout`` seconds for the next frame, then raises
  :class:`AgentStalled`. The clock is paused while the agent waits for a
  confirmation from the user (a ``CustomUpdate`` with ``confirm`` set, until
  :meth:`AgentConnection.send_confirm_response`), since then it is the user,
  not the agent, who is slow. With no answer open, ``receive()`` waits as
  long as it takes.

Whatever a broken or hostile agent does, the only exceptions that come out are
the subclasses of :class:`AgentConnectionError` below (and Trio's own
cancellation); after one of them the connection is finished and the caller
opens a new one, with backoff. Frames that cannot be read come back as
:class:`~.protocol.MalformedFrame` / :class:`~.protocol.UnknownFrame` values:
they are the caller's to log and skip.
"""

from __future__ import annotations

import math
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import structlog
import trio
import trio_websocket

from ..runtime.groups import leaves
from . import protocol
from .protocol import AgentError, AgentFrame, CustomUpdate, End, Status

__all__ = [
    "AgentBusy",
    "AgentClosed",
    "AgentConnection",
    "AgentConnectionError",
    "AgentDropped",
    "AgentStalled",
    "AgentUnreachable",
    "FrameTooLarge",
    "Late",
    "NoStatus",
    "TooManyFrames",
    "open_agent_connection",
]

log = structlog.get_logger(__name__)

_MESSAGE_TOO_BIG = 1009


# --- errors ------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class AgentConnectionError(Exception):
    """This connection to an agent failed and is finished; open a new one.

    ``url`` is the socket's URL with any credentials removed.
    """

    def __init__(self, url: str, message: str) -> None:
        self.url = _redact(url)
        super().__init__(f"{message} [{self.url}]")


class AgentUnreachable(AgentConnectionError):
    """No WebSocket could be opened: refused, unresolvable, timed out, or the
    HTTP upgrade was rejected (``status_code`` is set then)."""

    def __init__(self, url: str, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(url, message)


class AgentBusy(AgentUnreachable):
    """The agent refused the socket because another client holds this chat."""


class NoStatus(AgentConnectionError):
    """The socket opened but the agent sent no STATUS in time."""


class AgentStalled(AgentConnectionError):
    """No frame for ``idle_timeout`` seconds while an answer was open."""


class AgentClosed(AgentConnectionError):
    """The agent closed the socket (``code``/``reason`` of its close frame;
    1006 when the connection was simply cut)."""

    def __init__(self, url: str, message: str, code: int | None = None, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(url, message)


class AgentDropped(AgentClosed):
    """The agent closed the socket in the middle of an answer."""


class FrameTooLarge(AgentConnectionError):
    """A frame over ``max_frame_size``; the socket was closed with code 1009."""


class TooManyFrames(AgentConnectionError):
    """The agent sent more frames while no answer was open than its budget
    allows; the caller failed the socket with :meth:`AgentConnection.abort`."""


# --- the connection ----------------------------------------------------------


@dataclass(frozen=True)
class Late:
    """A frame that arrived while no answer was open: after ``END``, a second
    ``END``, or anything an agent says unprompted. It belongs to no answer;
    log it and drop it (or, for a ``SendFile``, decide deliberately)."""

    frame: AgentFrame


class AgentConnection:
    """An open socket to one chat of one agent; made by :func:`open_agent_connection`.

    One task may :meth:`receive` while others send.
    """

    def __init__(
        self,
        url: str,
        chat_id: str,
        ws: trio_websocket.WebSocketConnection,
        status: Status,
        *,
        idle_timeout: float,
        max_frame_size: int,
        stream: trio.abc.AsyncResource | None = None,
    ) -> None:
        self.url = url
        self._stream = stream
        self.chat_id = chat_id
        #: The STATUS frame the agent opened with.
        self.status = status
        self.idle_timeout = idle_timeout
        self.max_frame_size = max_frame_size
        self._ws = ws
        self._open_answers = 0
        self._confirms: set[str] = set()
        self._last_activity = trio.current_time()
        self._watch: trio.CancelScope | None = None
        self._receiving = False
        self._failure: AgentConnectionError | None = None
        self._closed_by_us = False

    @property
    def answers_pending(self) -> int:
        """Messages sent whose answer has not ended yet."""
        return self._open_answers

    @property
    def confirmations_pending(self) -> frozenset[str]:
        """``request_id`` of confirmations the agent is waiting for."""
        return frozenset(self._confirms)

    async def send_user_message(self, text: str, attachments: Iterable[str] = ()) -> None:
        """Send ``USER_MESSAGE``; its answer starts arriving through :meth:`receive`."""
        frame = protocol.user_message(text, attachments)
        self._check_usable()
        self._open_answers += 1
        self._touch()
        try:
            await self._send(frame)
        except AgentConnectionError:
            # Not sent, so no answer is coming for it.
            self._open_answers -= 1
            raise

    async def send_confirm_response(self, request_id: str, approved: bool) -> None:
        """Answer a confirmation request; the idle clock restarts."""
        frame = protocol.confirm_response(request_id, approved)
        self._check_usable()
        self._confirms.discard(request_id)
        self._touch()
        await self._send(frame)

    async def receive(self) -> AgentFrame | Late:
        """The next frame from the agent (see the module docstring for the rules).

        Cancel-safe: cancelling a ``receive()`` loses no frame, and the stall
        clock runs from the last frame or send, not from this call, so it
        can be called in a loop under short timeouts.
        """
        self._check_usable()
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this agent connection")
        self._receiving = True
        try:
            with trio.CancelScope() as watch:
                self._watch = watch
                self._arm()
                try:
                    data = await self._ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    raise self._fail(self._closed_error(exc.reason)) from None
                finally:
                    self._watch = None
            if watch.cancelled_caught:
                raise self._fail(
                    AgentStalled(
                        self.url,
                        f"the agent sent nothing for {self.idle_timeout:g} s in the middle of an answer; "
                        "the answer is abandoned, reconnect to go on",
                    )
                )
        finally:
            self._receiving = False
        frame = protocol.parse_frame(data, max_size=self.max_frame_size)
        self._touch()
        if self._open_answers == 0:
            return Late(frame)
        if isinstance(frame, (End, AgentError)):
            self._open_answers -= 1
        elif isinstance(frame, CustomUpdate) and frame.confirm is not None:
            self._confirms.add(frame.confirm.request_id)
        self._arm()
        return frame

    def __aiter__(self) -> AgentConnection:
        return self

    async def __anext__(self) -> AgentFrame | Late:
        return await self.receive()

    async def abort(self, error: AgentConnectionError) -> None:
        """Fail the connection with ``error`` and cut the TCP connection now,
        with no closing handshake (an agent that floods would not read it).

        Every later call raises ``error``; the agent sees its socket closed.
        """
        if self._failure is None:
            self._failure = error
            log.info("agent.connection_aborted", url=error.url, chat_id=self.chat_id, error=type(error).__name__)
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    # --- internals -----------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = trio.current_time()
        self._arm()

    def _arm(self) -> None:
        """Set the stall deadline of a receive() in progress, if any."""
        if self._watch is None:
            return
        if self._open_answers and not self._confirms:
            self._watch.deadline = self._last_activity + self.idle_timeout
        else:
            self._watch.deadline = math.inf

    def _check_usable(self) -> None:
        if self._closed_by_us:
            raise trio.ClosedResourceError("this agent connection was closed; open a new one")
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: AgentConnectionError) -> AgentConnectionError:
        if self._closed_by_us:
            raise trio.ClosedResourceError("this agent connection was closed while in use")
        self._failure = error
        log.info("agent.connection_failed", url=error.url, chat_id=self.chat_id, error=type(error).__name__)
        return error

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise self._fail(self._closed_error(exc.reason)) from None

    def _closed_error(self, reason: trio_websocket.CloseReason | None) -> AgentConnectionError:
        return _closed_error(self.url, reason, self.max_frame_size, mid_answer=self._open_answers > 0)

    async def _shut(self) -> None:
        """Close gracefully if the agent cooperates within ``close_timeout``."""
        self._closed_by_us = True
        await self._ws.aclose()


def _closed_error(
    url: str,
    reason: trio_websocket.CloseReason | None,
    max_frame_size: int,
    *,
    mid_answer: bool,
) -> AgentConnectionError:
    code = reason.code if reason is not None else None
    text = reason.reason if reason is not None else None
    if code == _MESSAGE_TOO_BIG:
        return FrameTooLarge(
            url,
            f"a frame was over the {max_frame_size}-character limit, so the socket was closed (code 1009); "
            "raise max_frame_size if the agent legitimately sends frames that large",
        )
    said = f"code {code}" + (f", {text!r}" if text else "")
    if mid_answer:
        return AgentDropped(
            url,
            f"the agent closed the socket in the middle of an answer ({said}); "
            "the answer is incomplete, reconnect and send the message again",
            code,
            text,
        )
    return AgentClosed(url, f"the agent closed the socket ({said}); reconnect before the next message", code, text)


# --- opening -----------------------------------------------------------------


@asynccontextmanager
async def open_agent_connection(
    base_url: str,
    chat_id: str | int,
    *,
    connect_timeout: float = 10.0,
    status_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    close_timeout: float = 2.0,
    max_frame_size: int = protocol.MAX_FRAME_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[AgentConnection]:
    """Connect to ``<base_url>/v1/agent_ws/<chat_id>/`` and wait for STATUS.

    ``connect_timeout`` bounds the TCP connection and the WebSocket upgrade;
    ``status_timeout`` the wait for STATUS after it; ``idle_timeout`` a
    silence in the middle of an answer; ``close_timeout`` the closing
    handshake when the block ends (the socket is closed regardless).

    Raises :class:`AgentUnreachable` (:class:`AgentBusy`), :class:`NoStatus`
    or :class:`FrameTooLarge` on entry; a ``base_url`` that cannot make a URL
    raises :class:`ValueError` (a configuration error, see
    :func:`.protocol.socket_url`).
    """
    url = protocol.socket_url(base_url, chat_id)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host_header = parts.netloc.rpartition("@")[2]
    deadline = trio.current_time() + connect_timeout

    try:
        with trio.fail_at(deadline):
            if parts.scheme == "wss":
                stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl_context or ssl.create_default_context(), https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise AgentUnreachable(url, f"no TCP connection within {connect_timeout:g} s; is the agent up?") from None
    except OSError as exc:
        raise AgentUnreachable(url, f"cannot connect to the agent ({exc}); is it running at that address?") from None

    body_error: BaseException | None = None
    opened = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws = await _upgrade(nursery, stream, url, host_header, parts.path, deadline, max_frame_size)
                status = await _await_status(ws, url, status_timeout, max_frame_size)
                connection = AgentConnection(
                    url, str(chat_id), ws, status, idle_timeout=idle_timeout, max_frame_size=max_frame_size, stream=stream
                )
                log.info("agent.connected", url=_redact(url), chat_id=str(chat_id), status=status.state)
                opened = True
                try:
                    yield connection
                finally:
                    if trio.current_effective_deadline() == -math.inf:
                        # Cancelled: trio-websocket's reader task, which would
                        # read the agent's half of the closing handshake, is
                        # being cancelled too; the TCP close below has to do.
                        connection._closed_by_us = True
                    else:
                        with trio.move_on_after(close_timeout, shield=True):
                            await connection._shut()
                    nursery.cancel_scope.cancel()
            except BaseException as exc:
                body_error = exc
                raise
    except BaseExceptionGroup as group:
        _reraise_from_group(group, body_error, url, opened)
    finally:
        await trio.aclose_forcefully(stream)


async def _upgrade(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    url: str,
    host_header: str,
    resource: str,
    deadline: float,
    max_frame_size: int,
) -> trio_websocket.WebSocketConnection:
    try:
        with trio.fail_at(deadline):
            return await trio_websocket.wrap_client_stream(
                nursery, stream, host_header, resource, max_message_size=max_frame_size  # type: ignore[arg-type]  # trio-websocket types stream as SocketStream; SSLStream works too
            )
    except trio.TooSlowError:
        # trio-websocket also ends up here when the TCP connection dies
        # during the upgrade: its reader stops without waking the waiter.
        raise AgentUnreachable(url, "the WebSocket upgrade did not complete in time; is this an agent socket?") from None


async def _await_status(
    ws: trio_websocket.WebSocketConnection, url: str, status_timeout: float, max_frame_size: int
) -> Status:
    with trio.move_on_after(status_timeout):
        while True:
            try:
                data = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                error = _closed_error(url, exc.reason, max_frame_size, mid_answer=False)
                if isinstance(error, FrameTooLarge):
                    raise error from None
                code = error.code if isinstance(error, AgentClosed) else None
                raise NoStatus(url, f"the agent closed the socket before sending STATUS (close code {code})") from None
            frame = protocol.parse_frame(data, max_size=max_frame_size)
            if isinstance(frame, Status):
                return frame
            if isinstance(frame, AgentError):
                raise AgentUnreachable(url, f"the agent refused the chat: {frame.message}")
            log.warning("agent.frame_before_status", url=_redact(url), frame=type(frame).__name__)
    raise NoStatus(
        url,
        f"the agent accepted the socket but sent no STATUS within {status_timeout:g} s; "
        "it may be starting or wedged, retry later",
    )


def _reraise_from_group(
    group: BaseExceptionGroup, body_error: BaseException | None, url: str, opened: bool
) -> NoReturn:
    """Turn what the connection's nursery raised into one plain exception.

    The caller's own exception comes out as it was raised, not wrapped; an
    exception of trio-websocket's reader task (which runs in the nursery)
    becomes one of ours.
    """
    found: list[BaseException] = leaves(group)
    if body_error is not None and any(exc is body_error for exc in found):
        context = body_error.__context__
        try:
            raise body_error
        finally:
            body_error.__context__ = context
    for exc in found:
        if isinstance(exc, trio_websocket.ConnectionRejected):
            status = exc.status_code
            body = (exc.body or b"").decode("utf-8", "replace").strip()[:200]
            said = f"HTTP {status}" + (f": {body}" if body else "")
            if status == 409:
                raise AgentBusy(
                    url, f"the agent refused the socket ({said}); another client holds this chat, retry later", status
                ) from None
            raise AgentUnreachable(
                url, f"the agent refused the WebSocket upgrade ({said}); check the agent's base_url", status
            ) from None
    if all(isinstance(exc, trio.Cancelled) for exc in found):
        raise group
    if opened:
        raise AgentDropped(url, f"the WebSocket failed: {group!r}") from group
    raise AgentUnreachable(url, f"the WebSocket upgrade failed: {group!r}") from group
