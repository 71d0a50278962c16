"""Parsing sync answers into event values: pure, and never raising on content."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.matrix import (
    Edit,
    FileMessage,
    Invite,
    MatrixError,
    Membership,
    OtherEvent,
    Reaction,
    TextMessage,
    content,
    parse_events,
    parse_sync,
)

ROOM = "!room:hs"


def _event(event_type: str, body: dict, **extra) -> dict:
    return {"event_id": f"$e{len(str(body))}", "sender": "@alice:hs", "origin_server_ts": 1700, "type": event_type, "content": body, **extra}


def _sync(*timeline: dict, state: tuple = (), invite: dict | None = None) -> dict:
    rooms = {"join": {ROOM: {"timeline": {"events": list(timeline), "limited": True, "prev_batch": "p1"}, "state": {"events": list(state)}}}}
    if invite is not None:
        rooms["invite"] = invite
    return {"next_batch": "s2", "rooms": rooms}


def test_matrix_events_messages_commands_files_and_edits():
    batch = parse_sync(
        _sync(
            _event("m.room.message", content.text("hello", html="<b>hello</b>")),
            _event("m.room.message", content.text("!new  Research notes")),
            _event("m.room.message", content.text("!")),
            _event("m.room.message", content.text("!help", msgtype="m.notice")),  # bots' notices are never commands
            _event("m.room.message", content.file_message("mxc://hs/abc", "cat.png", mimetype="image/png", size=12)),
            _event("m.room.message", {"msgtype": "m.file", "body": "no-name.bin", "url": "mxc://hs/def", "info": {"size": True}}),
            _event("m.room.message", content.edit("$orig", content.text("better"))),
            _event("m.room.message", {"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"}),
        )
    )
    [room] = batch.rooms
    assert (batch.next_batch, room.room_id, room.membership, room.limited, room.prev_batch) == ("s2", ROOM, "join", True, "p1")
    text, command, bare, notice, image, file, edit, location = room.timeline
    assert isinstance(text, TextMessage) and (text.body, text.formatted_body, text.msgtype) == ("hello", "<b>hello</b>", "m.text")
    assert (text.room_id, text.sender, text.origin_server_ts) == (ROOM, "@alice:hs", 1700)
    # Commands are texts: their meaning is parsed once, by bot/commands.py.
    assert isinstance(command, TextMessage) and command.body == "!new  Research notes"
    assert isinstance(bare, TextMessage) and bare.body == "!"
    assert isinstance(notice, TextMessage) and notice.msgtype == "m.notice"
    assert isinstance(image, FileMessage)
    assert (image.msgtype, image.url, image.filename, image.mimetype, image.size) == ("m.image", "mxc://hs/abc", "cat.png", "image/png", 12)
    assert isinstance(file, FileMessage) and (file.filename, file.size, file.mimetype) == ("no-name.bin", None, None)
    assert isinstance(edit, Edit) and (edit.target_event_id, edit.body, edit.msgtype) == ("$orig", "better", "m.text")
    assert isinstance(location, OtherEvent) and location.content["geo_uri"] == "geo:1,2"


def test_matrix_events_replies_lose_their_quoted_fallback():
    reply = {
        "msgtype": "m.text",
        "body": "> <@bot:hs> Delete the file?\n> really?\n\n!yes",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$question"}},
    }
    [command] = parse_events(ROOM, [_event("m.room.message", reply)])
    assert isinstance(command, TextMessage) and command.body == "!yes" and command.reply_to == "$question"


def test_matrix_events_reactions_memberships_and_custom_events():
    events = parse_events(
        ROOM,
        [
            _event("m.reaction", content.reaction("$q", "❌")),
            _event("m.reaction", {"m.relates_to": {"rel_type": "m.reference", "event_id": "$q"}}),
            _event("m.room.member", {"membership": "join", "displayname": "Alice"}, state_key="@alice:hs", unsigned={"prev_content": {"membership": "invite"}}),
            _event("m.room.member", {"membership": "leave", "reason": "bye"}, state_key="@carol:hs"),
            _event("cis.dag.task.status", {"run_id": "r1", "status": "running"}),
            _event("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}, state_key=""),
        ],
    )
    reaction, reference, joined, left, custom, encryption = events
    assert isinstance(reaction, Reaction) and (reaction.key, reaction.target_event_id) == ("❌", "$q")
    assert isinstance(reference, OtherEvent)
    assert isinstance(joined, Membership) and (joined.user_id, joined.membership, joined.previous, joined.displayname) == ("@alice:hs", "join", "invite", "Alice")
    assert isinstance(left, Membership) and (left.membership, left.reason, left.previous) == ("leave", "bye", None)
    assert isinstance(custom, OtherEvent) and custom.event_type == "cis.dag.task.status"
    assert custom.content == {"run_id": "r1", "status": "running"} and custom.source["type"] == "cis.dag.task.status"
    assert isinstance(encryption, OtherEvent) and encryption.state_key == ""


def test_matrix_events_encryption_in_state_marks_the_room():
    plain = parse_sync(_sync(_event("m.room.message", content.text("hi"))))
    encrypted = parse_sync(_sync(state=(_event("m.room.encryption", {"algorithm": "x"}, state_key=""),)))
    assert not plain.rooms[0].encrypted and encrypted.rooms[0].encrypted


def test_matrix_events_invites_read_the_invite_state():
    invite_state = [
        {"type": "m.room.create", "state_key": "", "sender": "@alice:hs", "content": {"type": "m.space"}},
        {"type": "m.room.name", "state_key": "", "sender": "@alice:hs", "content": {"name": "Team"}},
        {"type": "m.room.member", "state_key": "@alice:hs", "sender": "@alice:hs", "content": {"membership": "join"}},
        {"type": "m.room.member", "state_key": "@other:hs", "sender": "@alice:hs", "content": {"membership": "invite"}},
        {"type": "m.room.member", "state_key": "@bot:hs", "sender": "@alice:hs", "content": {"membership": "invite", "is_direct": True},
         "event_id": "$inv", "origin_server_ts": 5},
    ]
    batch = parse_sync(_sync(invite={"!team:hs": {"invite_state": {"events": invite_state}}}), user_id="@bot:hs")
    assert batch.invites == (
        Invite("$inv", "!team:hs", "@alice:hs", 5, is_direct=True, room_name="Team", member_count=1, room_type="m.space"),
    )
    # Without our user id the first pending invitation is taken; a stripped one has no id.
    [other] = parse_sync(_sync(invite={"!team:hs": {"invite_state": {"events": invite_state}}})).invites
    assert (other.event_id, other.origin_server_ts, other.is_direct) == ("", 0, False)


def test_matrix_events_malformed_events_are_dropped_and_counted():
    batch = parse_sync(_sync({"type": "m.room.message", "content": {}}, "not an event", _event("m.room.message", content.text("ok"))))
    assert [type(e) for e in batch.rooms[0].timeline] == [TextMessage]
    assert batch.dropped == 2


def test_matrix_events_a_body_without_next_batch_is_refused():
    for body in (None, [], {}, {"next_batch": 5}):
        with pytest.raises(MatrixError, match="no next_batch"):
            parse_sync(body)


# -- never raising, whatever arrives -------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=5,
)
EVENT_TYPES = ["m.room.message", "m.reaction", "m.room.member", "m.room.name", "m.room.create", "m.room.encryption", "cis.x"]
MSGTYPES = ["m.text", "m.notice", "m.emote", "m.file", "m.image", "m.audio", "m.video", "m.location"]


# Mostly well-formed envelopes with arbitrary insides, some outright junk: the
# parser has to get deep into an event before content can trip it up.
def _or_junk(strategy):
    """*strategy*, or any JSON value at all."""
    return st.one_of(strategy, json_values)


ids = st.sampled_from(["$a", "@bot:hs", "@alice:hs", ""]) | st.text(max_size=4)
relations = st.fixed_dictionaries(
    {},
    optional={
        "rel_type": _or_junk(st.sampled_from(["m.replace", "m.annotation", "m.reference"])),
        "event_id": _or_junk(ids),
        "key": _or_junk(st.text(max_size=4)),
        "m.in_reply_to": _or_junk(st.fixed_dictionaries({"event_id": _or_junk(ids)})),
    },
)
optional_content = {
    "formatted_body": _or_junk(st.text(max_size=4)),
    "url": _or_junk(st.sampled_from(["mxc://hs/x", "http://x/y", "mxc://"])),
    "filename": _or_junk(st.text(max_size=4)),
    "info": _or_junk(st.fixed_dictionaries({}, optional={"mimetype": _or_junk(st.text(max_size=4)), "size": json_values})),
    "m.relates_to": _or_junk(relations),
    "is_direct": json_values,
    "name": json_values,
    "type": json_values,
}
message_contents = st.deferred(
    lambda: st.fixed_dictionaries(
        {
            "msgtype": _or_junk(st.sampled_from(MSGTYPES)),
            "body": _or_junk(st.text(max_size=6) | st.sampled_from(["!cmd x", "!", "> q\n\n!yes", "> q", "\n"])),
        },
        optional={**optional_content, "m.new_content": _or_junk(message_contents)},
    )
)
member_contents = st.fixed_dictionaries(
    {"membership": _or_junk(st.sampled_from(["join", "invite", "leave", "ban"]))},
    optional={"is_direct": json_values, "displayname": json_values, "reason": json_values},
)
contents_by_type = {
    "m.room.message": message_contents,
    "m.reaction": st.fixed_dictionaries({"m.relates_to": relations}),
    "m.room.member": member_contents,
}


def _envelope(event_type: str):
    return st.fixed_dictionaries(
        {
            "event_id": _or_junk(ids),
            "sender": _or_junk(ids),
            "type": st.just(event_type),
            "content": _or_junk(contents_by_type.get(event_type, st.fixed_dictionaries({}, optional=optional_content))),
        },
        optional={
            "state_key": _or_junk(ids),
            "origin_server_ts": _or_junk(st.integers()),
            "unsigned": _or_junk(st.fixed_dictionaries({"prev_content": member_contents})),
        },
    )


envelopes = st.sampled_from(["m.room.message"] * 3 + EVENT_TYPES).flatmap(_envelope)
events = _or_junk(envelopes)
event_lists = _or_junk(st.lists(events, max_size=6))
rooms = st.fixed_dictionaries(
    {},
    optional={
        "timeline": _or_junk(st.fixed_dictionaries({"events": event_lists}, optional={"limited": json_values, "prev_batch": json_values})),
        "state": _or_junk(st.fixed_dictionaries({"events": event_lists})),
        "invite_state": _or_junk(st.fixed_dictionaries({"events": event_lists})),
    },
)
room_maps = _or_junk(st.dictionaries(st.text(max_size=4), rooms, min_size=1, max_size=3))
# Structure fixed, events arbitrary: most examples reach the event parser.
event_syncs = st.fixed_dictionaries(
    {
        "next_batch": st.text(max_size=5),
        "rooms": st.fixed_dictionaries(
            {
                "join": st.dictionaries(
                    st.text(max_size=4),
                    st.fixed_dictionaries({"timeline": st.fixed_dictionaries({"events": st.lists(events, min_size=1, max_size=8)})}),
                    min_size=1,
                    max_size=2,
                ),
                "invite": st.dictionaries(
                    st.text(max_size=4),
                    st.fixed_dictionaries({"invite_state": st.fixed_dictionaries({"events": st.lists(events, max_size=6)})}),
                    max_size=2,
                ),
            }
        ),
    }
)
# Anything goes at every level.
syncs = event_syncs | st.fixed_dictionaries(
    {"next_batch": st.text(max_size=5)},
    optional={"rooms": _or_junk(st.fixed_dictionaries({}, optional={k: room_maps for k in ("join", "leave", "invite")}))},
)


@settings(max_examples=150, deadline=None)
@given(syncs, st.none() | st.text(max_size=5))
def test_matrix_events_arbitrary_sync_content_never_raises(body, user_id):
    batch = parse_sync(body, user_id)
    assert batch.next_batch == body["next_batch"]
    for room in batch.rooms:
        for event in (*room.timeline, *room.state):
            assert isinstance(event.event_id, str) and isinstance(event.origin_server_ts, int)
            hash(event)  # usable as a dict key or in a set, whatever the content


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=4), event_lists)
def test_matrix_events_arbitrary_history_chunks_never_raise(room_id, chunk):
    for event in parse_events(room_id, chunk):
        assert event.room_id == room_id
