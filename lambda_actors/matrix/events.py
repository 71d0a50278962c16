"""What the bot sees of Matrix: small frozen event values, parsed from JSON without I/O.

A homeserver's ``/sync`` answer (or a page of room history) goes in; our own
values come out, in the homeserver's order, room by room:

- :class:`TextMessage` (``m.text``, ``m.notice``, ``m.emote``; a ``!command``
  is a text too: what it means is the bot's to parse, in ``bot/commands.py``),
- :class:`FileMessage` (``m.file``, ``m.image``, ``m.audio``, ``m.video``),
- :class:`Edit` (an ``m.replace`` of an earlier message),
- :class:`Reaction` (an ``m.annotation``),
- :class:`Membership` (an ``m.room.member`` change),
- :class:`Invite` (an invitation for us, from the sync's ``invite`` section),
- :class:`OtherEvent` (everything else, passed through untouched).

Events come from other people's clients, so anything can arrive: the parser
never raises on an event's content. An event without the fields every event
has (an ``event_id`` and a ``sender``) cannot be acted on and is dropped and
counted; anything else odd becomes an :class:`OtherEvent`.

We parse the JSON ourselves rather than through ``nio.SyncResponse``, whose
schema validation costs about 80 µs per event; see ``benchmarks/matrix.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import MatrixError

__all__ = [
    "Edit",
    "FileMessage",
    "Invite",
    "Membership",
    "OtherEvent",
    "Reaction",
    "RoomBatch",
    "RoomEvent",
    "SyncBatch",
    "TextMessage",
    "RawTimeline",
    "parse_events",
    "parse_invite",
    "parse_sync",
    "raw_timeline",
    "sync_rooms",
]

TEXT_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
FILE_MSGTYPES = frozenset({"m.file", "m.image", "m.audio", "m.video"})


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """What every room event carries."""

    event_id: str
    room_id: str
    sender: str
    origin_server_ts: int


@dataclass(frozen=True, slots=True)
class TextMessage(RoomEvent):
    """Text (``m.text``), a notice (``m.notice``, what bots send) or an emote (``m.emote``).

    ``body`` is without the quoted reply fallback that older clients prepend
    to replies; ``reply_to`` is the event replied to, if any.
    """

    msgtype: str
    body: str
    formatted_body: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class FileMessage(RoomEvent):
    """A file, image, audio or video message. ``url`` is the ``mxc://`` URI;
    ``filename`` falls back to the body when the sender gave none; ``mimetype``
    and ``size`` are what the sender claimed (or None)."""

    msgtype: str
    url: str
    filename: str
    mimetype: str | None
    size: int | None
    body: str


@dataclass(frozen=True, slots=True)
class Edit(RoomEvent):
    """An edit (``m.replace``) of *target_event_id*. ``new_content`` is the
    replacement content as sent (``m.new_content``); ``body`` and ``msgtype``
    are taken from it."""

    target_event_id: str
    msgtype: str | None
    body: str | None
    new_content: Mapping[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Reaction(RoomEvent):
    """A reaction (``m.annotation``) with *key* (usually an emoji) to *target_event_id*."""

    key: str
    target_event_id: str


@dataclass(frozen=True, slots=True)
class Membership(RoomEvent):
    """*user_id*'s membership became *membership* (``join``, ``leave``,
    ``invite``, ``ban``, ``knock``); ``previous`` is what it was, when known.
    ``sender != user_id`` for invites, kicks and bans."""

    user_id: str
    membership: str
    previous: str | None = None
    displayname: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Invite(RoomEvent):
    """An invitation into ``room_id``; ``sender`` is who invited us.

    The other fields come from the room's ``invite_state`` (what the inviting
    server chose to reveal) and are None when absent. ``member_count`` counts
    the joined members visible there, which is only a lower bound.
    ``event_id`` is ``""`` and ``origin_server_ts`` 0 when the homeserver sent
    the invitation in stripped form.
    """

    is_direct: bool
    room_name: str | None = None
    member_count: int | None = None
    room_type: str | None = None
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class OtherEvent(RoomEvent):
    """Any other event, untouched: custom types (``cis.dag.*``), state changes,
    redactions, encrypted messages, unknown msgtypes. ``source`` is the event
    exactly as the homeserver sent it."""

    event_type: str
    content: Mapping[str, Any] = field(hash=False)
    state_key: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RoomBatch:
    """One room's part of a sync.

    ``timeline`` is in order. ``state`` is state from before the timeline
    (all of it on an initial sync or after a gap). ``limited`` means events
    were left out between the previous sync and this timeline: page back
    from ``prev_batch`` to get them. ``encrypted`` is True when an
    ``m.room.encryption`` event is in this batch (the room is, or has become,
    end-to-end encrypted, which the bot does not support).
    """

    room_id: str
    membership: str
    timeline: tuple[RoomEvent, ...]
    state: tuple[RoomEvent, ...] = ()
    limited: bool = False
    prev_batch: str | None = None
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """A whole ``/sync`` answer: joined and left rooms in the homeserver's
    order, invitations, the token for the next sync, and how many events were
    dropped as malformed."""

    next_batch: str
    rooms: tuple[RoomBatch, ...]
    invites: tuple[Invite, ...]
    dropped: int = 0


def parse_sync(body: Any, user_id: str | None = None) -> SyncBatch:
    """Turn a ``/sync`` JSON body into a :class:`SyncBatch`.

    *user_id* (ours) picks our own ``m.room.member`` in an invitation's
    state; without it the first pending invite membership is taken.

    Raises :class:`MatrixError` only when the body is not a sync answer at
    all (no ``next_batch``): carrying on would lose our place in the stream.
    Events inside it never make it raise.
    """
    if not isinstance(body, dict) or not isinstance(body.get("next_batch"), str):
        raise MatrixError(200, "M_BAD_JSON", "the homeserver's /sync answer has no next_batch")
    counter = [0]
    rooms: list[RoomBatch] = []
    invites: list[Invite] = []
    for membership, room_id, room in sync_rooms(body):
        if membership == "invite":
            if (invite := _invite(room_id, room, user_id)) is not None:
                invites.append(invite)
        else:
            rooms.append(_room_batch(room_id, membership, room, counter))
    return SyncBatch(body["next_batch"], tuple(rooms), tuple(invites), counter[0])


def sync_rooms(body: Any) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """The one walk over a ``/sync`` body's rooms: ``(membership, room_id,
    section)`` for the ``join``, ``leave`` and ``invite`` sections, in that
    order and the homeserver's order within each. Entries that are not a
    room id with an object are skipped; nothing raises.

    :func:`parse_sync` builds on it, and so does the bot's sync actor, which
    stores the raw events (:func:`raw_timeline`) rather than parsed ones.
    """
    rooms_section = _dict(_dict(body).get("rooms"))
    for membership in ("join", "leave", "invite"):
        for room_id, room in _dict(rooms_section.get(membership)).items():
            if isinstance(room_id, str) and isinstance(room, dict):
                yield membership, room_id, room


@dataclass(frozen=True, slots=True)
class RawTimeline:
    """A room section's timeline as the homeserver sent it: the events that
    are events (string ``event_id``, ``sender`` and ``type``) in order, and
    whether events were left out before them (page back from ``prev_batch``)."""

    events: tuple[Mapping[str, Any], ...]
    limited: bool = False
    prev_batch: str | None = None
    #: Entries skipped for lacking what every event has.
    dropped: int = 0


def raw_timeline(room: Mapping[str, Any]) -> RawTimeline:
    """The timeline of one room section of :func:`sync_rooms`, unparsed."""
    section = _dict(room.get("timeline"))
    raw = section.get("events")
    events = [e for e in raw if _is_event(e)] if isinstance(raw, list) else []
    return RawTimeline(
        tuple(events),
        section.get("limited") is True,
        _str(section, "prev_batch"),
        (len(raw) - len(events)) if isinstance(raw, list) else 0,
    )


def parse_invite(room_id: str, invite_section: Any, user_id: str | None = None) -> Invite | None:
    """The invitation in one ``invite`` room section of a sync (as stored by
    the bot's inbox), or None when it holds no invitation for us."""
    return _invite(room_id, invite_section, user_id) if isinstance(invite_section, dict) else None


def parse_events(room_id: str, events: Any) -> tuple[RoomEvent, ...]:
    """Parse a list of raw events of one room (a ``/messages`` chunk, say).

    Malformed entries are skipped; nothing raises.
    """
    return _events(room_id, events, [0])


# -- internals ----------------------------------------------------------------

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else _EMPTY


def _str(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) else None


def _is_event(raw: Any) -> bool:
    return (
        isinstance(raw, dict)
        and isinstance(raw.get("event_id"), str)
        and isinstance(raw.get("sender"), str)
        and isinstance(raw.get("type"), str)
    )


def _room_batch(room_id: str, membership: str, room: Mapping[str, Any], counter: list[int]) -> RoomBatch:
    raw = raw_timeline(room)
    counter[0] += raw.dropped
    state = _events(room_id, _dict(room.get("state")).get("events"), counter)
    timeline = _events(room_id, list(raw.events), counter)
    encrypted = any(
        isinstance(event, OtherEvent) and event.event_type == "m.room.encryption" for event in (*state, *timeline)
    )
    return RoomBatch(
        room_id=room_id,
        membership=membership,
        timeline=timeline,
        state=state,
        limited=raw.limited,
        prev_batch=raw.prev_batch,
        encrypted=encrypted,
    )


def _events(room_id: str, events: Any, counter: list[int]) -> tuple[RoomEvent, ...]:
    if not isinstance(events, list):
        return ()
    parsed = []
    for raw in events:
        event = _event(room_id, raw) if isinstance(raw, dict) else None
        if event is None:
            counter[0] += 1
        else:
            parsed.append(event)
    return tuple(parsed)


def _event(room_id: str, raw: Mapping[str, Any]) -> RoomEvent | None:
    event_id = raw.get("event_id")
    sender = raw.get("sender")
    event_type = raw.get("type")
    if not (isinstance(event_id, str) and isinstance(sender, str) and isinstance(event_type, str)):
        return None
    ts = raw.get("origin_server_ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        ts = 0
    content = _dict(raw.get("content"))
    state_key = _str(raw, "state_key")
    common = (event_id, room_id, sender, ts)

    if event_type == "m.room.message" and state_key is None:
        message = _message(common, content)
        if message is not None:
            return message
    elif event_type == "m.reaction":
        relation = _dict(content.get("m.relates_to"))
        key, target = _str(relation, "key"), _str(relation, "event_id")
        if relation.get("rel_type") == "m.annotation" and key is not None and target is not None:
            return Reaction(*common, key=key, target_event_id=target)
    elif event_type == "m.room.member" and state_key is not None:
        membership = _str(content, "membership")
        if membership is not None:
            return Membership(
                *common,
                user_id=state_key,
                membership=membership,
                previous=_str(_dict(_dict(raw.get("unsigned")).get("prev_content")), "membership"),
                displayname=_str(content, "displayname"),
                reason=_str(content, "reason"),
            )
    return OtherEvent(*common, event_type=event_type, content=content, state_key=state_key, source=raw)


def _message(common: tuple[str, str, str, int], content: Mapping[str, Any]) -> RoomEvent | None:
    relation = _dict(content.get("m.relates_to"))
    msgtype = _str(content, "msgtype")
    body = _str(content, "body")

    if relation.get("rel_type") == "m.replace":
        target = _str(relation, "event_id")
        if target is None:
            return None
        new_content = _dict(content.get("m.new_content"))
        return Edit(
            *common,
            target_event_id=target,
            msgtype=_str(new_content, "msgtype") or msgtype,
            body=_str(new_content, "body") if "body" in new_content else body,
            new_content=new_content,
        )
    if msgtype is None or body is None:
        return None

    reply_to = _str(_dict(relation.get("m.in_reply_to")), "event_id")
    if msgtype in TEXT_MSGTYPES:
        if reply_to is not None:
            body = _strip_reply_fallback(body)
        return TextMessage(
            *common,
            msgtype=msgtype,
            body=body,
            formatted_body=_str(content, "formatted_body"),
            reply_to=reply_to,
        )
    if msgtype in FILE_MSGTYPES:
        url = _str(content, "url")
        if url is None or not url.startswith("mxc://"):
            return None  # encrypted attachments (content.file) are out of scope
        info = _dict(content.get("info"))
        size = info.get("size")
        return FileMessage(
            *common,
            msgtype=msgtype,
            url=url,
            filename=_str(content, "filename") or body,
            mimetype=_str(info, "mimetype"),
            size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
            body=body,
        )
    return None


def _strip_reply_fallback(body: str) -> str:
    """Drop the ``> <@user> quoted text`` lines older clients put before a reply."""
    if not body.startswith("> "):
        return body
    lines = body.split("\n")
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    if index < len(lines) and lines[index] == "":
        index += 1
    return "\n".join(lines[index:])


def _invite(room_id: Any, room: Mapping[str, Any], user_id: str | None) -> Invite | None:
    if not isinstance(room_id, str):
        return None
    events = _dict(room.get("invite_state")).get("events")
    if not isinstance(events, list):
        return None
    ours: Mapping[str, Any] | None = None
    room_name = room_type = None
    joined: set[str] = set()
    encrypted = False
    for raw in events:
        if not isinstance(raw, dict):
            continue
        event_type = raw.get("type")
        content = _dict(raw.get("content"))
        state_key = _str(raw, "state_key")
        if event_type == "m.room.member" and state_key is not None:
            membership = content.get("membership")
            if membership == "join":
                joined.add(state_key)
            elif membership == "invite" and ours is None and (user_id is None or state_key == user_id):
                ours = raw
        elif event_type == "m.room.name":
            room_name = _str(content, "name")
        elif event_type == "m.room.create":
            room_type = _str(content, "type")
        elif event_type == "m.room.encryption":
            encrypted = True
    if ours is None or not isinstance(ours.get("sender"), str):
        return None
    ts = ours.get("origin_server_ts")
    return Invite(
        event_id=_str(ours, "event_id") or "",
        room_id=room_id,
        sender=ours["sender"],
        origin_server_ts=ts if isinstance(ts, int) and not isinstance(ts, bool) else 0,
        is_direct=_dict(ours.get("content")).get("is_direct") is True,
        room_name=room_name,
        member_count=len(joined) or None,
        room_type=room_type,
        encrypted=encrypted,
    )
