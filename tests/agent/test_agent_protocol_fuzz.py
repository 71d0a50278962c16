"""Hypothesis: the frame parser and URL builder have a defined outcome for any input."""

from __future__ import annotations

import json
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from lambda_actors.agent import protocol as p

AGENT_OUTCOMES = (
    p.Status,
    p.TextChunk,
    p.ToolCallChunk,
    p.ToolResult,
    p.CustomUpdate,
    p.SendFile,
    p.End,
    p.AgentError,
    p.UnknownFrame,
    p.MalformedFrame,
)
CLIENT_OUTCOMES = (p.UserMessage, p.ConfirmResponse, p.UnknownFrame, p.MalformedFrame)
KNOWN_TYPES = [
    "STATUS",
    "AGENT_EVENT_TEXT_CHUNK",
    "AGENT_EVENT_TOOL_CALL_CHUNK",
    "AGENT_EVENT_TOOL_RESULT",
    "AGENT_EVENT_CUSTOM_UPDATE",
    "AGENT_EVENT_SEND_FILE",
    "AGENT_EVENT_END",
    "ERROR",
    "USER_MESSAGE",
    "CONFIRM_RESPONSE",
]
FIELDS = ["text", "tool_name", "args", "result", "payload", "path", "tokens_used", "message", "code",
          "status", "chat_id", "kind", "request_id", "action", "details", "attachments", "approved"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Objects that look like frames: a known (or near-known) type and the
# protocol's own field names with values of any JSON type, so the fuzzer
# reaches every field check rather than stopping at "no type".
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(KNOWN_TYPES) | st.text(max_size=12)},
    optional={name: json_values for name in FIELDS}
    | {"payload": st.fixed_dictionaries({"kind": st.sampled_from(["confirm", "progress"]) | json_values},
                                        optional={k: json_values for k in ["request_id", "action", "details"]})},
)


def _assert_agent_outcome(frame: object) -> None:
    assert isinstance(frame, AGENT_OUTCOMES)
    if isinstance(frame, p.MalformedFrame):
        assert frame.reason
    if isinstance(frame, p.CustomUpdate) and frame.confirm is not None:
        assert isinstance(frame.confirm.request_id, str) and frame.confirm.request_id
        assert isinstance(frame.confirm.action, str)
        assert isinstance(frame.confirm.details, str)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_agent_protocol_fuzz_any_bytes_or_text_has_a_defined_outcome(data):
    _assert_agent_outcome(p.parse_frame(data))
    assert isinstance(p.parse_client_frame(data), CLIENT_OUTCOMES)


@given(json_values)
def test_agent_protocol_fuzz_any_json_value_has_a_defined_outcome(value):
    text = json.dumps(value)
    _assert_agent_outcome(p.parse_frame(text))
    _assert_agent_outcome(p.parse_frame(text.encode()))
    assert isinstance(p.parse_client_frame(text), CLIENT_OUTCOMES)


@given(frame_like)
def test_agent_protocol_fuzz_frame_shaped_objects_parse_or_are_malformed(wire):
    frame = p.parse_frame(json.dumps(wire))
    _assert_agent_outcome(frame)
    if not isinstance(frame, (p.MalformedFrame, p.UnknownFrame)):
        # Whatever parsed has a wire form that parses back to itself.
        again = p.parse_frame(p.encode(frame))
        if isinstance(frame, p.CustomUpdate):
            assert again.confirm == frame.confirm
        else:
            assert again == frame
    client = p.parse_client_frame(json.dumps(wire))
    assert isinstance(client, CLIENT_OUTCOMES)
    if isinstance(client, (p.UserMessage, p.ConfirmResponse)):
        assert p.parse_client_frame(p.encode(client)) == client


@given(st.text(max_size=20000), st.integers(min_value=0, max_value=100))
def test_agent_protocol_fuzz_size_limit_is_always_enforced(text, limit):
    frame = p.parse_frame(text, max_size=limit)
    if len(text) > limit:
        assert isinstance(frame, p.MalformedFrame)


@given(st.text(max_size=60) | st.none() | st.integers(), st.integers() | st.text(max_size=12))
def test_agent_protocol_fuzz_socket_url_returns_a_url_or_a_value_error(base_url, chat_id):
    try:
        url = p.socket_url(base_url, chat_id)
    except ValueError as exc:
        assert str(exc)
        return
    assert url.startswith(("ws://", "wss://"))
    assert url.endswith(f"/v1/agent_ws/{chat_id}/")


schemes = st.sampled_from(["http", "https", "ws", "wss", "HTTP", "Wss"])
hosts = st.sampled_from(["agents", "127.0.0.1", "[::1]", "a.example.org"])
ports = st.none() | st.integers(min_value=1, max_value=65535)
segments = st.lists(st.from_regex(r"[A-Za-z0-9_.~-]{1,8}", fullmatch=True).filter(lambda s: s not in {".", ".."}),
                    max_size=3)


@given(schemes, hosts, ports, segments, st.booleans(), st.integers(min_value=0, max_value=10**9),
       st.none() | st.from_regex(r"[A-Za-z0-9]{1,6}", fullmatch=True))
def test_agent_protocol_fuzz_socket_url_of_valid_bases_keeps_host_and_prefix(
    scheme, host, port, prefix, trailing, chat_id, old_chat
):
    netloc = host if port is None else f"{host}:{port}"
    path = "/" + "/".join(prefix) if prefix else ""
    if trailing and path:
        path += "/"
    base = f"{scheme}://{netloc}{path}"
    if old_chat is not None:
        # A socket URL pasted as base_url is cut back to the same prefix.
        base = f"{scheme}://{netloc}{'/'.join([''] + prefix)}/v1/agent_ws/{old_chat}/"
    url = p.socket_url(base, chat_id)
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[scheme.lower()]
    assert parts.netloc == netloc
    assert parts.path == "".join(f"/{s}" for s in prefix) + f"/v1/agent_ws/{chat_id}/"
    # Building from the result again is stable.
    assert p.socket_url(url, chat_id) == url
