"""The agent WebSocket protocol (SPEC section 4), without any I/O.

Everything that knows the shape of the wire lives here, in the style of h11:
building an agent's socket URL from its ``base_url``, turning one received
WebSocket message into one frozen dataclass, and turning a dataclass back into
the JSON text the other side expects. The client (:mod:`.client`) and the fake
agent (:mod:`.fake`) both go through this module, so when the platform renames
a field, this is the one file to edit.

Parsing never raises. Real agents send invalid JSON, frame types nobody has
heard of and oversized frames; each of those becomes a value
(:class:`MalformedFrame`, :class:`UnknownFrame`) that the caller can log and
skip, so a confused agent can never crash the code that reads from it.

Tolerance rules, where the platform's schema is loose:

- a *required* field of the wrong type (``text`` of a chunk, ``tool_name`` of
  a tool call, ``path`` of a file, ``request_id``/``action`` of a
  confirmation) makes the frame a :class:`MalformedFrame`;
- an *optional* field of the wrong type reads as absent (``tokens_used``,
  ``code``, ``status``);
- free-form values (tool ``args`` and ``result``, confirmation ``details``)
  that arrive as JSON objects are kept as their compact JSON text;
- unknown extra fields are ignored.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "MAX_FRAME_SIZE",
    "AgentError",
    "AgentFrame",
    "ClientFrame",
    "ConfirmRequest",
    "ConfirmResponse",
    "CustomUpdate",
    "End",
    "MalformedFrame",
    "SendFile",
    "Status",
    "TextChunk",
    "ToolCallChunk",
    "ToolResult",
    "UnknownFrame",
    "UserMessage",
    "confirm_response",
    "encode",
    "parse_client_frame",
    "parse_frame",
    "check_base_url",
    "reset_url",
    "socket_url",
    "user_message",
]

#: Default upper bound on one frame, in characters (text) or bytes (binary).
#: An answer is streamed in many small chunks, so a single frame above a
#: mebibyte is a broken agent, not a long answer.
MAX_FRAME_SIZE = 1 << 20

# The wire names. Only this block (and the field names in parse/encode
# below) changes when the platform changes its schema.
_STATUS = "STATUS"
_TEXT_CHUNK = "AGENT_EVENT_TEXT_CHUNK"
_TOOL_CALL_CHUNK = "AGENT_EVENT_TOOL_CALL_CHUNK"
_TOOL_RESULT = "AGENT_EVENT_TOOL_RESULT"
_CUSTOM_UPDATE = "AGENT_EVENT_CUSTOM_UPDATE"
_SEND_FILE = "AGENT_EVENT_SEND_FILE"
_END = "AGENT_EVENT_END"
_ERROR = "ERROR"
_USER_MESSAGE = "USER_MESSAGE"
_CONFIRM_RESPONSE = "CONFIRM_RESPONSE"
_CONFIRM_KIND = "confirm"


# --- agent -> client ---------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """The first frame of every connection: the agent is ready for messages."""

    state: str | None = None
    chat_id: str | None = None


@dataclass(frozen=True)
class TextChunk:
    """The next piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class ToolCallChunk:
    """The agent calls (part of) a tool; ``args`` may arrive in pieces."""

    tool_name: str
    args: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What a tool returned."""

    result: str
    tool_name: str | None = None


@dataclass(frozen=True)
class ConfirmRequest:
    """The agent asks its user to approve ``action`` before doing it.

    It waits for a :class:`ConfirmResponse` carrying the same ``request_id``.
    """

    request_id: str
    action: str
    details: str = ""


@dataclass(frozen=True)
class CustomUpdate:
    """Progress of any kind; ``confirm`` is set when it asks for approval."""

    payload: Mapping[str, Any] = field(default_factory=dict)
    confirm: ConfirmRequest | None = None


@dataclass(frozen=True)
class SendFile:
    """A file for the user, as the agent names it (not yet checked: see SPEC 6)."""

    path: str


@dataclass(frozen=True)
class End:
    """The answer is complete."""

    tokens_used: int | None = None


@dataclass(frozen=True)
class AgentError:
    """The agent reports that it failed (the answer ends here)."""

    message: str
    code: str | None = None


@dataclass(frozen=True)
class UnknownFrame:
    """Well-formed JSON with a ``type`` this module does not know: log, skip."""

    type: str
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class MalformedFrame:
    """Anything that is not a readable frame; ``reason`` says what is wrong."""

    reason: str


AgentFrame = Union[
    Status,
    TextChunk,
    ToolCallChunk,
    ToolResult,
    CustomUpdate,
    SendFile,
    End,
    AgentError,
    UnknownFrame,
    MalformedFrame,
]


# --- client -> agent ---------------------------------------------------------


@dataclass(frozen=True)
class UserMessage:
    """What the user said, with workspace-relative paths of attached files."""

    text: str
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfirmResponse:
    """The user's decision on a :class:`ConfirmRequest`."""

    request_id: str
    approved: bool


ClientFrame = Union[UserMessage, ConfirmResponse, UnknownFrame, MalformedFrame]


# --- parsing -----------------------------------------------------------------


class _Malformed(Exception):
    """Internal: unwinds a parse to turn it into a MalformedFrame."""


def _decode(data: object, max_size: int) -> dict[str, Any]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > max_size:
            raise _Malformed(f"frame of {len(raw)} bytes is over the {max_size}-byte limit")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(f"frame is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    elif isinstance(data, str):
        if len(data) > max_size:
            raise _Malformed(f"frame of {len(data)} characters is over the {max_size}-character limit")
        text = data
    else:
        raise _Malformed(f"frame is a {type(data).__name__}, not text or bytes")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert;
        # RecursionError covers absurdly deep nesting.
        detail = str(exc) or type(exc).__name__
        raise _Malformed(f"frame is not valid JSON: {detail[:200]}") from None
    if not isinstance(value, dict):
        raise _Malformed(f"frame is a JSON {_json_kind(value)}, not an object")
    kind = value.get("type")
    if not isinstance(kind, str):
        raise _Malformed("frame has no string 'type'")
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _required_str(frame: Mapping[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str):
        raise _Malformed(f"{frame['type']} has no string {key!r}")
    return value


def _optional_str(frame: Mapping[str, Any], key: str) -> str | None:
    value = frame.get(key)
    return value if isinstance(value, str) else None


def _free_text(value: object) -> str:
    """Free-form fields: keep strings, show anything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return repr(value)


def _status(frame: Mapping[str, Any]) -> Status:
    chat_id = frame.get("chat_id")
    if isinstance(chat_id, int) and not isinstance(chat_id, bool):
        chat_id = str(chat_id)
    return Status(state=_optional_str(frame, "status"), chat_id=chat_id if isinstance(chat_id, str) else None)


def _tool_call(frame: Mapping[str, Any]) -> ToolCallChunk:
    args = frame.get("args")
    return ToolCallChunk(
        tool_name=_required_str(frame, "tool_name"),
        args=None if args is None else _free_text(args),
    )


def _tool_result(frame: Mapping[str, Any]) -> ToolResult:
    if "result" not in frame:
        raise _Malformed(f"{frame['type']} has no 'result'")
    return ToolResult(result=_free_text(frame["result"]), tool_name=_optional_str(frame, "tool_name"))


def _custom_update(frame: Mapping[str, Any]) -> CustomUpdate:
    payload = frame.get("payload")
    if not isinstance(payload, dict):
        raise _Malformed(f"{frame['type']} has no object 'payload'")
    if payload.get("kind") != _CONFIRM_KIND:
        return CustomUpdate(payload=payload)
    # A confirmation the user cannot answer would leave the agent waiting
    # forever, so an unanswerable one is malformed rather than mere progress.
    request_id = payload.get("request_id")
    action = payload.get("action")
    if not isinstance(request_id, str) or not request_id:
        raise _Malformed("confirmation request has no string 'request_id'")
    if not isinstance(action, str):
        raise _Malformed("confirmation request has no string 'action'")
    details = payload.get("details")
    confirm = ConfirmRequest(
        request_id=request_id,
        action=action,
        details="" if details is None else _free_text(details),
    )
    return CustomUpdate(payload=payload, confirm=confirm)


def _end(frame: Mapping[str, Any]) -> End:
    tokens = frame.get("tokens_used")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        tokens = None
    return End(tokens_used=tokens)


def _error(frame: Mapping[str, Any]) -> AgentError:
    # An ERROR is always worth showing, so a missing message is filled in
    # rather than making the whole frame unreadable.
    message = frame.get("message")
    code = frame.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    return AgentError(
        message=message if isinstance(message, str) else "the agent reported an error without a message",
        code=code if isinstance(code, str) else None,
    )


_AGENT_PARSERS: dict[str, Callable[[dict[str, Any]], AgentFrame]] = {
    _STATUS: _status,
    _TEXT_CHUNK: lambda f: TextChunk(text=_required_str(f, "text")),
    _TOOL_CALL_CHUNK: _tool_call,
    _TOOL_RESULT: _tool_result,
    _CUSTOM_UPDATE: _custom_update,
    _SEND_FILE: lambda f: SendFile(path=_required_str(f, "path")),
    _END: _end,
    _ERROR: _error,
}


def parse_frame(data: object, *, max_size: int = MAX_FRAME_SIZE) -> AgentFrame:
    """Read one message an agent sent; never raises.

    ``data`` is what the WebSocket delivered (``str`` for text frames,
    ``bytes`` for binary ones; binary frames are read as UTF-8 JSON too, since
    some servers send them). Anything else, anything over ``max_size``, and
    anything that is not a JSON object with a string ``type`` is a
    :class:`MalformedFrame`.
    """
    try:
        frame = _decode(data, max_size)
        parser = _AGENT_PARSERS.get(frame["type"])
        if parser is None:
            return UnknownFrame(type=frame["type"], raw=frame)
        return parser(frame)
    except _Malformed as exc:
        return MalformedFrame(reason=str(exc))


def _user_message(frame: Mapping[str, Any]) -> UserMessage:
    attachments = frame.get("attachments", [])
    if attachments is None:
        attachments = []
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise _Malformed(f"{_USER_MESSAGE} 'attachments' is not a list of strings")
    return UserMessage(text=_required_str(frame, "text"), attachments=tuple(attachments))


def _confirm_response(frame: Mapping[str, Any]) -> ConfirmResponse:
    approved = frame.get("approved")
    if not isinstance(approved, bool):
        raise _Malformed(f"{_CONFIRM_RESPONSE} has no boolean 'approved'")
    return ConfirmResponse(request_id=_required_str(frame, "request_id"), approved=approved)


_CLIENT_PARSERS: dict[str, Callable[[dict[str, Any]], ClientFrame]] = {_USER_MESSAGE: _user_message, _CONFIRM_RESPONSE: _confirm_response}


def parse_client_frame(data: object, *, max_size: int = MAX_FRAME_SIZE) -> ClientFrame:
    """Read one message a client sent to an agent (the fake agent's side); never raises."""
    try:
        frame = _decode(data, max_size)
        parser = _CLIENT_PARSERS.get(frame["type"])
        if parser is None:
            return UnknownFrame(type=frame["type"], raw=frame)
        return parser(frame)
    except _Malformed as exc:
        return MalformedFrame(reason=str(exc))


# --- building ----------------------------------------------------------------


def _wire(frame: object) -> dict[str, Any]:
    if isinstance(frame, UserMessage):
        return {"type": _USER_MESSAGE, "text": frame.text, "attachments": list(frame.attachments)}
    if isinstance(frame, ConfirmResponse):
        return {"type": _CONFIRM_RESPONSE, "request_id": frame.request_id, "approved": frame.approved}
    if isinstance(frame, Status):
        wire: dict[str, Any] = {"type": _STATUS}
        if frame.state is not None:
            wire["status"] = frame.state
        if frame.chat_id is not None:
            wire["chat_id"] = frame.chat_id
        return wire
    if isinstance(frame, TextChunk):
        return {"type": _TEXT_CHUNK, "text": frame.text}
    if isinstance(frame, ToolCallChunk):
        wire = {"type": _TOOL_CALL_CHUNK, "tool_name": frame.tool_name}
        if frame.args is not None:
            wire["args"] = frame.args
        return wire
    if isinstance(frame, ToolResult):
        wire = {"type": _TOOL_RESULT, "result": frame.result}
        if frame.tool_name is not None:
            wire["tool_name"] = frame.tool_name
        return wire
    if isinstance(frame, CustomUpdate):
        payload = dict(frame.payload)
        if frame.confirm is not None:
            payload.update(
                kind=_CONFIRM_KIND,
                request_id=frame.confirm.request_id,
                action=frame.confirm.action,
                details=frame.confirm.details,
            )
        return {"type": _CUSTOM_UPDATE, "payload": payload}
    if isinstance(frame, SendFile):
        return {"type": _SEND_FILE, "path": frame.path}
    if isinstance(frame, End):
        wire = {"type": _END}
        if frame.tokens_used is not None:
            wire["tokens_used"] = frame.tokens_used
        return wire
    if isinstance(frame, AgentError):
        wire = {"type": _ERROR, "message": frame.message}
        if frame.code is not None:
            wire["code"] = frame.code
        return wire
    if isinstance(frame, UnknownFrame):
        return {**frame.raw, "type": frame.type}
    raise TypeError(f"cannot encode {type(frame).__name__}: only the frame classes of this module are frames")


def encode(frame: object) -> str:
    """The JSON text frame for any frame class of this module.

    :class:`MalformedFrame` has no wire form (it is what *failed* to parse)
    and raises :class:`TypeError`, as does any other object.
    """
    return json.dumps(_wire(frame), ensure_ascii=False, separators=(",", ":"))


def user_message(text: str, attachments: Iterable[str] = ()) -> str:
    """The ``USER_MESSAGE`` frame for ``text`` and workspace-relative attachments."""
    return encode(UserMessage(text=text, attachments=tuple(attachments)))


def confirm_response(request_id: str, approved: bool) -> str:
    """The ``CONFIRM_RESPONSE`` frame answering a :class:`ConfirmRequest`."""
    return encode(ConfirmResponse(request_id=request_id, approved=bool(approved)))


# --- URLs --------------------------------------------------------------------

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# A base_url copied from a socket URL: cut back to the prefix before
# /v1/agent_ws. Greedy so the last occurrence wins.
_SOCKET_SUFFIX = re.compile(r"^(?P<prefix>.*)/v1/agent_ws(?:/[^/]*)?/?$")
_CHAT_ID = re.compile(r"^[A-Za-z0-9._~-]+$")


def _split_base(base_url: object) -> tuple[str, str, str]:
    """(lower-case scheme, netloc, prefix path without trailing slash)."""
    if not isinstance(base_url, str):
        raise ValueError(f"agent base_url must be a string, not {type(base_url).__name__}")
    try:
        parts = urllib.parse.urlsplit(base_url.strip())
        port = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"{base_url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _WS_SCHEMES:
        raise ValueError(
            f"{base_url!r} must be an http, https, ws or wss URL with a host: it must start with http://, https://, ws:// or wss://"
        )
    if not parts.hostname:
        raise ValueError(f"{base_url!r} must be an http, https, ws or wss URL with a host; it has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{base_url!r} must not carry a query or fragment")
    del port
    path = parts.path
    match = _SOCKET_SUFFIX.match(path)
    if match:
        path = match["prefix"]
    return scheme, parts.netloc, path.rstrip("/")


def check_base_url(base_url: object) -> str:
    """``base_url`` as given, if it is an agent base URL an operator may configure.

    The one validation of agent URLs (configuration loading calls it): an
    http, https, ws or wss URL with a host and a valid port, no query or
    fragment, no whitespace, and no credentials (they would end up in logs;
    put secrets elsewhere). Raises :class:`ValueError` saying what is wrong.
    """
    _split_base(base_url)
    assert isinstance(base_url, str)
    parts = urllib.parse.urlsplit(base_url.strip())
    if any(c.isspace() for c in base_url):
        raise ValueError(f"{base_url!r} must not contain spaces")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{base_url!r} must not carry credentials (user:password@); they would end up in logs")
    return base_url


def socket_url(base_url: str, chat_id: str | int) -> str:
    """The WebSocket URL of one chat: ``<base>/v1/agent_ws/<chat_id>/``.

    ``base_url`` may be http, https, ws or wss (http becomes ws, https wss),
    may carry a path prefix with or without a trailing slash, and may already
    be a socket URL (``.../v1/agent_ws/<anything>/``), which is cut back to
    its prefix. Raises :class:`ValueError` naming what is wrong with a
    ``base_url`` or ``chat_id`` that cannot make a URL; configuration loading
    should call this once per agent to refuse bad URLs at start-up.
    """
    scheme, netloc, prefix = _split_base(base_url)
    if isinstance(chat_id, bool) or not isinstance(chat_id, (int, str)):
        raise ValueError(f"chat id must be an int or a string, not {type(chat_id).__name__}")
    if isinstance(chat_id, int) and chat_id < 0:
        raise ValueError(f"chat id {chat_id} must not be negative")
    chat = str(chat_id)
    if not _CHAT_ID.match(chat) or chat in {".", ".."}:
        raise ValueError(f"chat id {chat!r} must be a non-negative number or a URL-safe word")
    return f"{_WS_SCHEMES[scheme]}://{netloc}{prefix}/v1/agent_ws/{chat}/"


def reset_url(base_url: str) -> str:
    """The optional ``POST <base>/reset`` endpoint of an agent, as http(s)."""
    scheme, netloc, prefix = _split_base(base_url)
    return f"{_HTTP_SCHEMES[scheme]}://{netloc}{prefix}/reset"
