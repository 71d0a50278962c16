"""The pure protocol module: socket URLs, parsing every frame, building frames."""

from __future__ import annotations

import json

import pytest

from lambda_actors.agent import protocol as p

# --- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://agents:7000", "ws://agents:7000/v1/agent_ws/42/"),
        ("http://agents:7000/", "ws://agents:7000/v1/agent_ws/42/"),
        ("https://agents.example.org", "wss://agents.example.org/v1/agent_ws/42/"),
        ("ws://agents:7000/agent_17", "ws://agents:7000/agent_17/v1/agent_ws/42/"),
        ("wss://agents:7000/agent_17/", "wss://agents:7000/agent_17/v1/agent_ws/42/"),
        ("http://agents.internal:7000/agent_0/", "ws://agents.internal:7000/agent_0/v1/agent_ws/42/"),
        ("HTTPS://Agents:443/a/b/", "wss://Agents:443/a/b/v1/agent_ws/42/"),
        ("http://[::1]:7000/x", "ws://[::1]:7000/x/v1/agent_ws/42/"),
        # Already a socket URL: cut back to its prefix.
        ("ws://agents:7000/agent_17/v1/agent_ws/9/", "ws://agents:7000/agent_17/v1/agent_ws/42/"),
        ("http://agents:7000/v1/agent_ws/anything", "ws://agents:7000/v1/agent_ws/42/"),
        ("http://agents:7000/p/v1/agent_ws/", "ws://agents:7000/p/v1/agent_ws/42/"),
        ("http://agents:7000/p/v1/agent_ws", "ws://agents:7000/p/v1/agent_ws/42/"),
        ("http://agents:7000/v1/agent_ws/1/v1/agent_ws/2/", "ws://agents:7000/v1/agent_ws/1/v1/agent_ws/42/"),
    ],
)
def test_agent_protocol_socket_url_from_every_base_url_form(base_url, expected):
    assert p.socket_url(base_url, 42) == expected


def test_agent_protocol_socket_url_accepts_string_chat_ids():
    assert p.socket_url("http://h/", "7") == "ws://h/v1/agent_ws/7/"


@pytest.mark.parametrize(
    ("base_url", "complaint"),
    [
        ("ftp://agents/", "must start with http://"),
        ("agents:7000", "must start with http://"),
        ("http:///nohost", "has no host"),
        ("http://h:notaport/", "is not a URL"),
        ("http://h/?token=1", "query or fragment"),
        ("http://h/#frag", "query or fragment"),
        (None, "must be a string"),
    ],
)
def test_agent_protocol_socket_url_refuses_bad_base_urls_saying_why(base_url, complaint):
    with pytest.raises(ValueError, match=complaint):
        p.socket_url(base_url, 1)


@pytest.mark.parametrize("chat_id", [-1, True, 1.5, "", "a/b", "..", "a b", None])
def test_agent_protocol_socket_url_refuses_chat_ids_that_are_not_one_path_segment(chat_id):
    with pytest.raises(ValueError, match="chat id"):
        p.socket_url("http://h/", chat_id)


def test_agent_protocol_reset_url_is_http_under_the_prefix():
    assert p.reset_url("wss://h/agent_3/v1/agent_ws/5/") == "https://h/agent_3/reset"
    assert p.reset_url("http://h:1") == "http://h:1/reset"


# --- parsing agent frames -------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "frame"),
    [
        ({"type": "STATUS", "status": "ready", "chat_id": 4}, p.Status("ready", "4")),
        ({"type": "STATUS"}, p.Status(None, None)),
        ({"type": "AGENT_EVENT_TEXT_CHUNK", "text": "hi"}, p.TextChunk("hi")),
        ({"type": "AGENT_EVENT_TOOL_CALL_CHUNK", "tool_name": "ls"}, p.ToolCallChunk("ls", None)),
        ({"type": "AGENT_EVENT_TOOL_CALL_CHUNK", "tool_name": "ls", "args": "-l"}, p.ToolCallChunk("ls", "-l")),
        ({"type": "AGENT_EVENT_TOOL_CALL_CHUNK", "tool_name": "ls", "args": {"a": 1}}, p.ToolCallChunk("ls", '{"a":1}')),
        ({"type": "AGENT_EVENT_TOOL_RESULT", "result": "ok"}, p.ToolResult("ok", None)),
        ({"type": "AGENT_EVENT_TOOL_RESULT", "result": [1, 2], "tool_name": "ls"}, p.ToolResult("[1,2]", "ls")),
        ({"type": "AGENT_EVENT_SEND_FILE", "path": "out/a.txt"}, p.SendFile("out/a.txt")),
        ({"type": "AGENT_EVENT_END", "tokens_used": 12}, p.End(12)),
        ({"type": "AGENT_EVENT_END"}, p.End(None)),
        ({"type": "AGENT_EVENT_END", "tokens_used": "12"}, p.End(None)),
        ({"type": "AGENT_EVENT_END", "tokens_used": True}, p.End(None)),
        ({"type": "AGENT_EVENT_END", "tokens_used": -3}, p.End(None)),
        ({"type": "ERROR", "message": "boom", "code": "E1"}, p.AgentError("boom", "E1")),
        ({"type": "ERROR", "message": "boom", "code": 500}, p.AgentError("boom", "500")),
        ({"type": "ERROR"}, p.AgentError("the agent reported an error without a message", None)),
    ],
)
def test_agent_protocol_parses_every_agent_frame_type(wire, frame):
    assert p.parse_frame(json.dumps(wire)) == frame
    assert p.parse_frame(json.dumps(wire).encode()) == frame


def test_agent_protocol_parses_progress_and_confirmation_updates():
    progress = p.parse_frame(json.dumps({"type": "AGENT_EVENT_CUSTOM_UPDATE", "payload": {"kind": "progress", "n": 1}}))
    assert progress == p.CustomUpdate(payload={"kind": "progress", "n": 1}, confirm=None)

    wire = {"kind": "confirm", "request_id": "r1", "action": "rm -rf /tmp/x", "details": {"files": 3}}
    confirm = p.parse_frame(json.dumps({"type": "AGENT_EVENT_CUSTOM_UPDATE", "payload": wire}))
    assert isinstance(confirm, p.CustomUpdate)
    assert confirm.confirm == p.ConfirmRequest("r1", "rm -rf /tmp/x", '{"files":3}')


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"type": "AGENT_EVENT_TEXT_CHUNK"}, "no string 'text'"),
        ({"type": "AGENT_EVENT_TEXT_CHUNK", "text": 3}, "no string 'text'"),
        ({"type": "AGENT_EVENT_TOOL_CALL_CHUNK", "args": "x"}, "no string 'tool_name'"),
        ({"type": "AGENT_EVENT_TOOL_RESULT", "tool_name": "x"}, "no 'result'"),
        ({"type": "AGENT_EVENT_SEND_FILE", "path": None}, "no string 'path'"),
        ({"type": "AGENT_EVENT_CUSTOM_UPDATE", "payload": "x"}, "no object 'payload'"),
        ({"type": "AGENT_EVENT_CUSTOM_UPDATE", "payload": {"kind": "confirm", "action": "a"}}, "request_id"),
        ({"type": "AGENT_EVENT_CUSTOM_UPDATE", "payload": {"kind": "confirm", "request_id": "r"}}, "action"),
        ({"text": "no type"}, "no string 'type'"),
        ({"type": 7}, "no string 'type'"),
    ],
)
def test_agent_protocol_frames_missing_required_fields_are_malformed_with_a_reason(wire, reason):
    frame = p.parse_frame(json.dumps(wire))
    assert isinstance(frame, p.MalformedFrame)
    assert reason in frame.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "JSON array, not an object"),
        ('"STATUS"', "JSON string"),
        ("null", "JSON null"),
        ("true", "JSON boolean"),
        ("3", "JSON number"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"type": "STATUS", "n": ' + "9" * 10_000 + "}", "not valid JSON"),
        (None, "NoneType"),
        (12, "int"),
    ],
)
def test_agent_protocol_unreadable_input_is_malformed_never_an_exception(data, reason):
    frame = p.parse_frame(data)
    assert isinstance(frame, p.MalformedFrame)
    assert reason in frame.reason


def test_agent_protocol_unknown_type_is_kept_with_its_raw_object():
    frame = p.parse_frame('{"type": "AGENT_EVENT_NEW", "x": [1]}')
    assert frame == p.UnknownFrame("AGENT_EVENT_NEW", {"type": "AGENT_EVENT_NEW", "x": [1]})


def test_agent_protocol_frames_over_the_size_limit_are_malformed_before_decoding():
    text = json.dumps({"type": "AGENT_EVENT_TEXT_CHUNK", "text": "x" * 100})
    assert isinstance(p.parse_frame(text, max_size=len(text)), p.TextChunk)
    too_big = p.parse_frame(text, max_size=len(text) - 1)
    assert isinstance(too_big, p.MalformedFrame) and "over the" in too_big.reason
    assert isinstance(p.parse_frame(text.encode(), max_size=10), p.MalformedFrame)


# --- building frames -----------------------------------------------------------------


def test_agent_protocol_builds_user_message_and_confirm_response_exactly():
    assert json.loads(p.user_message("hi", ["incoming/a.txt"])) == {
        "type": "USER_MESSAGE",
        "text": "hi",
        "attachments": ["incoming/a.txt"],
    }
    assert json.loads(p.user_message("hi")) == {"type": "USER_MESSAGE", "text": "hi", "attachments": []}
    assert json.loads(p.confirm_response("r1", True)) == {"type": "CONFIRM_RESPONSE", "request_id": "r1", "approved": True}


@pytest.mark.parametrize(
    "frame",
    [
        p.Status("ready", "3"),
        p.TextChunk("héllo"),
        p.ToolCallChunk("ls", "-l"),
        p.ToolResult("ok", "ls"),
        p.CustomUpdate({"kind": "progress"}),
        p.CustomUpdate({"title": "t"}, p.ConfirmRequest("r", "act", "det")),
        p.SendFile("a.txt"),
        p.End(5),
        p.AgentError("bad", "E"),
        p.UnknownFrame("X_NEW", {"type": "X_NEW", "a": 1}),
    ],
)
def test_agent_protocol_every_agent_frame_survives_encode_then_parse(frame):
    parsed = p.parse_frame(p.encode(frame))
    if isinstance(frame, p.CustomUpdate) and frame.confirm is not None:
        assert parsed.confirm == frame.confirm
    else:
        assert parsed == frame


def test_agent_protocol_client_frames_parse_on_the_agent_side():
    assert p.parse_client_frame(p.user_message("x", ["a"])) == p.UserMessage("x", ("a",))
    assert p.parse_client_frame(p.confirm_response("r", False)) == p.ConfirmResponse("r", False)
    bad = p.parse_client_frame('{"type": "USER_MESSAGE", "text": "x", "attachments": [1]}')
    assert isinstance(bad, p.MalformedFrame) and "attachments" in bad.reason
    assert isinstance(p.parse_client_frame('{"type": "CONFIRM_RESPONSE", "request_id": "r"}'), p.MalformedFrame)
    assert p.parse_client_frame('{"type": "PING"}') == p.UnknownFrame("PING", {"type": "PING"})


def test_agent_protocol_malformed_frames_have_no_wire_form():
    with pytest.raises(TypeError, match="MalformedFrame"):
        p.encode(p.MalformedFrame("x"))
