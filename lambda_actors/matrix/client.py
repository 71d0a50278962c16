"""A Matrix client for Trio: the operations the bot needs, one method each.

Requests are built by ``nio.Api`` (via :mod:`._nio`), sent by
:class:`~lambda_actors.matrix.transport.Transport` (httpx, which runs on
Trio), and answered with nio response objects turned into plain values.
Syncs and history pages are the exception: they come back as the
homeserver's JSON, checked for the tokens that continue them, because the
bot stores events as they came (a replay after a crash parses them again
with the code of that day); :func:`~.events.parse_sync` and
:func:`~.events.parse_events` turn them into our own event values.

Every method may raise a :class:`~lambda_actors.matrix.errors.MatrixFailure`:
a :class:`~lambda_actors.matrix.errors.MatrixError` (or a subclass:
``RateLimited`` when the wait asked for is beyond the retry policy,
``InvalidToken``, ``MediaTooLarge``),
:class:`~lambda_actors.matrix.errors.HomeserverUnavailable`, or for
:meth:`MatrixClient.download` of a malformed link
:class:`~lambda_actors.matrix.errors.InvalidMediaUrl`. Retries are already
done by then.

The client holds no mutable state besides its identity; it is safe to use
from many tasks at once (httpx pools the connections).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import nio
import nio.responses as responses

from . import _nio, content as contents
from .errors import InvalidMediaUrl, MatrixError
from .events import RoomEvent, parse_events
from .retry import RetryPolicy
from .transport import LONG_POLL_MARGIN_S, Transport

__all__ = ["BOT_SYNC_FILTER", "DELAYED_EVENT_ACTIONS", "Download", "MatrixClient", "Session"]

#: MSC4140's wire names: the query parameter that delays a send or state
#: write, where pending delayed events are managed, and what can be done to one.
DELAY_PARAMETER = "org.matrix.msc4140.delay"
DELAYED_EVENTS_PATH = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
DELAYED_EVENT_ACTIONS = frozenset({"restart", "cancel", "send"})

# A sync filter for a bot: room timelines and state, nothing it would ignore
# anyway (presence, typing, receipts, account data), members loaded lazily.
BOT_SYNC_FILTER: Mapping[str, Any] = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {
        "timeline": {"limit": 100},
        "state": {"lazy_load_members": True},
        "ephemeral": {"types": []},
        "account_data": {"types": []},
    },
}


@dataclass(frozen=True)
class Session:
    """Who we are logged in as. Keep ``device_id`` across restarts: the same
    transaction id from the same device gives back the same event."""

    user_id: str
    device_id: str
    access_token: str = field(repr=False)


@dataclass(frozen=True)
class Download:
    data: bytes = field(repr=False)
    content_type: str | None
    filename: str | None


class MatrixClient:
    """One Matrix identity on one homeserver.

    Give an ``access_token`` (and ideally ``user_id`` / ``device_id``; else
    :meth:`whoami` finds them) or call :meth:`login`. Use ``async with``, or
    call :meth:`aclose` when done.
    """

    def __init__(
        self,
        homeserver_url: str,
        *,
        access_token: str | None = None,
        user_id: str | None = None,
        device_id: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        #: 429 answers this client got (read for ``/metrics``; no label, no user).
        self.rate_limited = 0
        self._also_on_rate_limited = retry.on_rate_limited
        retry = replace(retry, on_rate_limited=self._count_rate_limited)
        self._transport = Transport(homeserver_url, access_token=access_token, retry=retry, http=http)
        self.user_id = user_id
        self.device_id = device_id
        # Which form of the delayed-event actions the homeserver takes
        # (see update_delayed_event); learnt on first use.
        self._delayed_action_in_body = False

    def trying_once(self) -> MatrixClient:
        """The same session (token, device, connection pool), each request tried
        once on a transient failure (429s are still waited out): for a caller
        that must notice the homeserver going away at once, such as a liveness
        observer's own sync (``dag/actors/cluster_node.py``)."""
        return MatrixClient(
            self.homeserver_url, access_token=self._transport.access_token, user_id=self.user_id,
            device_id=self.device_id, retry=replace(self._transport.retry, attempts=1), http=self._transport._http,
        )

    def _count_rate_limited(self) -> None:
        self.rate_limited += 1
        if self._also_on_rate_limited is not None:
            self._also_on_rate_limited()

    def __repr__(self) -> str:
        return f"MatrixClient({self._transport.public_url!r}, user_id={self.user_id!r}, device_id={self.device_id!r})"

    @property
    def homeserver_url(self) -> str:
        return self._transport.homeserver_url

    @property
    def server_name(self) -> str:
        """Our homeserver's name, from our user id (``@bot:example.org`` → ``example.org``)."""
        if self.user_id is None:
            raise RuntimeError("server_name needs the user id: log in or call whoami() first")
        return self.user_id.split(":", 1)[1]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # -- identity ------------------------------------------------------------

    async def login(
        self, user: str, password: str, *, device_id: str | None = None, device_name: str | None = None
    ) -> Session:
        """Password login; the client then uses the new token.

        Pass the same *device_id* on every start so the bot stays one device:
        transaction ids are scoped to the device, so a send retried after a
        restart still cannot post twice.
        """
        request = _nio.build(nio.Api.login, user, password, device_name=device_name or "", device_id=device_id or "")
        body = await self._transport.request(
            *request,
            authenticated=False,
            # Repeating a login with a fixed device id only replaces that device's token.
            idempotent=device_id is not None,
            what="POST login",
        )
        parsed = _nio.parse(responses.LoginResponse, body)
        self._transport.access_token = parsed.access_token
        self.user_id, self.device_id = parsed.user_id, parsed.device_id
        return Session(parsed.user_id, parsed.device_id, parsed.access_token)

    async def whoami(self) -> tuple[str, str | None]:
        """Check the token; return (user_id, device_id) and remember them."""
        body = await self._transport.request(*_nio.authenticated(nio.Api.whoami), idempotent=True, what="GET whoami")
        parsed = _nio.parse(responses.WhoamiResponse, body)
        self.user_id, self.device_id = parsed.user_id, parsed.device_id
        return parsed.user_id, parsed.device_id

    async def logout(self) -> None:
        """Invalidate the token (and end the device)."""
        await self._transport.request(*_nio.authenticated(nio.Api.logout), idempotent=True, what="POST logout")
        self._transport.access_token = None

    async def set_display_name(self, name: str) -> None:
        request = _nio.authenticated(nio.Api.profile_set_displayname, await self._me(), name)
        await self._transport.request(*request, idempotent=True, what="PUT displayname")

    # -- sync ----------------------------------------------------------------

    async def create_filter(self, definition: Mapping[str, Any] = BOT_SYNC_FILTER, *, unique: bool = False) -> str:
        """Store a sync filter on the homeserver; return its id for :meth:`sync`.

        ``unique=True`` for a filter whose first sync starts from nothing
        (``since`` None): Synapse answers an identical ``/sync`` from a cache
        for a while (``sync_response_cache_duration``, 2 minutes by default),
        and an identical definition gets the same filter id back, so a process
        restarted within that time would get its previous run's first answer:
        old state, and a ``next_batch`` from back then, after which every
        event since arrives again as if new. A unique filter makes the request
        new; it excludes an account-data type that does not exist, so it
        filters nothing more.
        """
        if unique:
            data = dict(definition.get("account_data", {}))
            data["not_types"] = [*data.get("not_types", ()), f"org.lambda.unused.{uuid.uuid4().hex}"]
            definition = {**definition, "account_data": data}
        request = _nio.authenticated(nio.Api.upload_filter, await self._me(), **_filter_kwargs(definition))
        body = await self._transport.request(*request, idempotent=True, what="POST filter")
        return _nio.parse(responses.UploadFilterResponse, body).filter_id

    async def sync(
        self,
        since: str | None = None,
        *,
        timeout_ms: int = 30_000,
        filter_id: str | None = None,
        full_state: bool = False,
    ) -> dict[str, Any]:
        """Long-poll for what happened since *since*; return the homeserver's JSON body.

        The body is checked to carry a ``next_batch`` token; everything else
        is as the homeserver sent it. Parse it with
        :func:`~.events.parse_sync` (``parse_sync(body, client.user_id)``).
        Always pass the previous ``next_batch``: Synapse answers a repeated
        identical request from a cache for a while.
        """
        request = _nio.authenticated(
            nio.Api.sync, since=since, timeout=timeout_ms, filter=filter_id, full_state=full_state or None
        )
        body = await self._transport.request(
            *request,
            idempotent=True,
            read_timeout_s=timeout_ms / 1000 + LONG_POLL_MARGIN_S,
            what="GET sync",
        )
        if not isinstance(body, dict) or not isinstance(body.get("next_batch"), str):
            raise MatrixError(200, "M_BAD_JSON", "the homeserver's /sync answer has no next_batch token")
        return body

    # -- sending -------------------------------------------------------------

    async def send(self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str) -> str:
        """Send an event; return its event id.

        *txn_id* must be derived from what caused the send (never random per
        try): the homeserver answers a repeat of (device, txn_id) with the
        first event's id, so a retry or a replay after a crash posts once.
        """
        request = _nio.authenticated(nio.Api.room_send, room_id, event_type, dict(content), txn_id)
        body = await self._transport.request(*request, idempotent=True, what=f"PUT send {event_type}")
        return _nio.parse(responses.RoomSendResponse, body, room_id).event_id

    async def edit(self, room_id: str, target_event_id: str, new_content: Mapping[str, Any], txn_id: str) -> str:
        """Replace an earlier message's content (``m.replace``); return the edit's event id."""
        return await self.send(room_id, "m.room.message", contents.edit(target_event_id, new_content), txn_id)

    async def react(self, room_id: str, target_event_id: str, key: str, txn_id: str) -> str:
        return await self.send(room_id, "m.reaction", contents.reaction(target_event_id, key), txn_id)

    async def typing(self, room_id: str, typing: bool = True, *, timeout_ms: int = 30_000) -> None:
        """Show (or stop showing) us typing in *room_id* for up to *timeout_ms*."""
        request = _nio.authenticated(nio.Api.room_typing, room_id, await self._me(), typing, timeout_ms)
        await self._transport.request(*request, idempotent=True, what="PUT typing")

    # -- rooms and Spaces ------------------------------------------------------

    async def create_room(
        self,
        *,
        name: str | None = None,
        topic: str | None = None,
        invite: Sequence[str] = (),
        is_direct: bool = False,
        preset: str = "private_chat",
        initial_state: Sequence[Mapping[str, Any]] = (),
        power_level_override: Mapping[str, Any] | None = None,
        space: bool = False,
        alias: str | None = None,
    ) -> str:
        """Create a room (a Space with ``space=True``); return its id.

        ``alias`` is the local part of an alias to give it (``dag-status-n1``
        for ``#dag-status-n1:<server>``); a room found again by its alias
        after a crash needs no marker.

        Not retried on an ambiguous failure: a repeat would make a second room.
        Put a marker in *initial_state* if the caller must be able to find a
        room it may have created before a crash.
        """
        request = _nio.authenticated(
            nio.Api.room_create,
            name=name,
            topic=topic,
            invite=list(invite),
            is_direct=is_direct,
            preset=nio.RoomPreset(preset),
            initial_state=[dict(event) for event in initial_state],
            power_level_override=dict(power_level_override) if power_level_override is not None else None,
            space=space,
            alias=alias,
        )
        body = await self._transport.request(*request, idempotent=False, what="POST createRoom")
        return _nio.parse(responses.RoomCreateResponse, body).room_id

    async def create_space(self, name: str, *, topic: str | None = None, invite: Sequence[str] = ()) -> str:
        """Create a Space (``creation_content.type = m.space``); return its id."""
        return await self.create_room(name=name, topic=topic, invite=invite, space=True)

    async def add_to_space(self, space_id: str, room_id: str, *, suggested: bool = False) -> None:
        """Link *room_id* into *space_id* both ways: ``m.space.child`` in the
        Space and ``m.space.parent`` in the room (we need power in both)."""
        via = [self.server_name]
        await self.put_state(space_id, "m.space.child", contents.space_child(via, suggested=suggested), room_id)
        await self.put_state(room_id, "m.space.parent", contents.space_parent(via), space_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        request = _nio.authenticated(nio.Api.room_invite, room_id, user_id)
        await self._transport.request(*request, idempotent=False, what="POST invite")

    async def join(self, room_id_or_alias: str) -> str:
        """Join (or accept an invitation); return the room id."""
        request = _nio.authenticated(nio.Api.join, room_id_or_alias)
        body = await self._transport.request(*request, idempotent=True, what="POST join")
        return _nio.parse(responses.JoinResponse, body).room_id

    async def leave(self, room_id: str) -> None:
        """Leave a room, or decline an invitation to it."""
        request = _nio.authenticated(nio.Api.room_leave, room_id)
        await self._transport.request(*request, idempotent=True, what="POST leave")

    async def joined_rooms(self) -> tuple[str, ...]:
        body = await self._transport.request(
            *_nio.authenticated(nio.Api.joined_rooms), idempotent=True, what="GET joined_rooms"
        )
        return tuple(_nio.parse(responses.JoinedRoomsResponse, body).rooms)

    async def joined_members(self, room_id: str) -> dict[str, str | None]:
        """The room's joined members: user id → display name (None if unset)."""
        request = _nio.authenticated(nio.Api.joined_members, room_id)
        body = await self._transport.request(*request, idempotent=True, what="GET joined_members")
        parsed = _nio.parse(responses.JoinedMembersResponse, body, room_id)
        return {member.user_id: member.display_name for member in parsed.members}

    # -- state -----------------------------------------------------------------

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str:
        """Set a state event (any type, custom ones too); return its event id."""
        request = _nio.authenticated(nio.Api.room_put_state, room_id, event_type, dict(content), state_key=state_key)
        body = await self._transport.request(*request, idempotent=True, what=f"PUT state {event_type}")
        return _nio.parse(responses.RoomPutStateResponse, body, room_id).event_id

    async def get_state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """The content of a state event, or None if the room has none of that type and key."""
        request = _nio.authenticated(nio.Api.room_get_state_event, room_id, event_type, state_key)
        try:
            body = await self._transport.request(*request, idempotent=True, what=f"GET state {event_type}")
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return _nio.parse(responses.RoomGetStateEventResponse, body, event_type, state_key, room_id).content

    async def room_state(self, room_id: str) -> tuple[RoomEvent, ...]:
        """Every current state event of the room, parsed like sync events."""
        request = _nio.authenticated(nio.Api.room_get_state, room_id)
        body = await self._transport.request(*request, idempotent=True, what="GET state")
        return parse_events(room_id, body)

    async def is_encrypted(self, room_id: str) -> bool:
        """True if end-to-end encryption is on in the room (we cannot read it)."""
        return await self.get_state(room_id, "m.room.encryption") is not None

    # -- history -----------------------------------------------------------------

    async def messages(
        self,
        room_id: str,
        *,
        start: str | None = None,
        direction: str = "b",
        limit: int = 10,
        event_filter: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One page of room history from *start* (None: the latest event when
        paging back); ``direction`` is ``"b"`` (back) or ``"f"`` (forward).

        Returns the homeserver's JSON body, checked to have a ``start`` token
        and a ``chunk`` list: ``chunk`` holds the events in the direction
        asked (newest first when paging back), ``end`` (absent at the edge of
        the room) is the next page's ``start``. Parse the events with
        :func:`~.events.parse_events` (``parse_events(room_id, body["chunk"])``).
        """
        request = _nio.authenticated(
            nio.Api.room_messages,
            room_id,
            start=start,
            direction=nio.MessageDirection(direction),
            limit=limit,
            message_filter=dict(event_filter) if event_filter is not None else None,
        )
        body = await self._transport.request(*request, idempotent=True, what="GET messages")
        if not isinstance(body, dict) or not isinstance(body.get("start"), str):
            raise MatrixError(200, "M_BAD_JSON", "the homeserver's /messages answer has no start token")
        if not isinstance(body.setdefault("chunk", []), list):
            raise MatrixError(200, "M_BAD_JSON", "the homeserver's /messages answer has no list of events")
        return body

    # -- media -------------------------------------------------------------------

    async def upload(self, data: bytes, content_type: str, filename: str | None = None) -> str:
        """Put a file in the media repository; return its ``mxc://`` URI."""
        method, path, _ = _nio.authenticated(nio.Api.upload, filename)
        body = await self._transport.request(
            method,
            path,
            data,
            content_type=content_type or "application/octet-stream",
            # A repeat after an ambiguous failure leaves at most an unused
            # copy in the media store; nothing is posted twice.
            idempotent=True,
            what="POST upload",
        )
        return _nio.parse(responses.UploadResponse, body).content_uri

    async def download(self, mxc_uri: str, *, max_bytes: int) -> Download:
        """Fetch a file through the authenticated media API.

        Raises :class:`~lambda_actors.matrix.errors.InvalidMediaUrl` for a
        link that is not ``mxc://<server>/<media id>`` (any sender can put
        any string in a message's ``url``), without a request;
        :class:`~lambda_actors.matrix.errors.MediaTooLarge` beyond
        *max_bytes*; and, like every method, ``MatrixError`` when the
        homeserver refuses (404: no such file) or ``HomeserverUnavailable``
        when it cannot get the file (a remote server's media failing with 502
        ends here after the retries).
        """
        server, media_id = _split_mxc(mxc_uri)
        method, path, _ = _nio.build(nio.Api.download, server, media_id)
        data, headers = await self._transport.download(path, max_bytes=max_bytes, what="GET media")
        return Download(data, headers.get("Content-Type"), _filename(headers.get("Content-Disposition")))

    # -- account data ----------------------------------------------------------------

    async def get_account_data(self, event_type: str) -> dict[str, Any] | None:
        """Our global account data of ``event_type`` (a JSON object), or None if never set.

        Account data lives on the homeserver, private to us: it survives the
        loss of our own database (the bot keeps its chat-id high-water mark there).
        """
        path = _account_data_path(await self._me(), event_type)
        try:
            body = await self._transport.request("GET", path, idempotent=True, what=f"GET account_data {event_type}")
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return body if isinstance(body, dict) else None

    async def put_account_data(self, event_type: str, content: Mapping[str, Any]) -> None:
        """Set our global account data of ``event_type`` (replacing what was there)."""
        path = _account_data_path(await self._me(), event_type)
        await self._transport.request(
            "PUT", path, json.dumps(dict(content)), idempotent=True, what=f"PUT account_data {event_type}"
        )

    # -- delayed events (MSC4140) ----------------------------------------------------
    #
    # An event the homeserver sends later unless told otherwise: a node's
    # delayed `offline` is its dead-man's switch (SPEC 8.2). Synapse takes the
    # delay as a query parameter on the ordinary send and state endpoints and
    # manages the pending event under DELAYED_EVENTS_PATH. Feature-detect with
    # :meth:`versions` (``org.matrix.msc4140`` in ``unstable_features``).

    async def versions(self) -> dict[str, Any]:
        """The homeserver's ``/_matrix/client/versions`` answer (spec versions, unstable features)."""
        body = await self._transport.request(
            "GET", "/_matrix/client/versions", authenticated=False, idempotent=True, what="GET versions"
        )
        if not isinstance(body, dict):
            raise MatrixError(200, "M_BAD_JSON", "the homeserver's /versions answer is not a JSON object")
        return body

    async def send_delayed(
        self, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str, *, delay_ms: int
    ) -> str:
        """Schedule an event to be sent in *delay_ms*; return its ``delay_id``.

        Not retried on an ambiguous failure: Synapse does not deduplicate
        delayed sends by transaction id, and a second pending copy nobody
        restarts would fire on its own. After such a failure, look in
        :meth:`delayed_events` and cancel what is not wanted.
        """
        method, path, body = _nio.authenticated(nio.Api.room_send, room_id, event_type, dict(content), txn_id)
        return await self._schedule(method, path, body, delay_ms, what=f"PUT send {event_type} (delayed)")

    async def put_state_delayed(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = "", *, delay_ms: int
    ) -> str:
        """Schedule a state event to be set in *delay_ms*; return its ``delay_id``
        (not retried on an ambiguous failure, as :meth:`send_delayed`)."""
        method, path, body = _nio.authenticated(
            nio.Api.room_put_state, room_id, event_type, dict(content), state_key=state_key
        )
        return await self._schedule(method, path, body, delay_ms, what=f"PUT state {event_type} (delayed)")

    async def update_delayed_event(self, delay_id: str, action: str) -> bool:
        """``restart`` (the delay counts again from now), ``cancel`` or ``send``
        (now) a delayed event; False when the homeserver has no such delayed
        event any more (it fired, was cancelled or was lost), True otherwise.

        Synapse releases differ: newer ones offer ``.../{delay_id}/{action}``,
        older ones only ``.../{delay_id}`` with ``{"action": ...}``. The first
        form is tried; an endpoint the homeserver does not know (M_UNRECOGNIZED)
        switches this client to the second for good.
        """
        if action not in DELAYED_EVENT_ACTIONS:
            raise ValueError(f"action must be one of {sorted(DELAYED_EVENT_ACTIONS)}, not {action!r}")
        target = f"{DELAYED_EVENTS_PATH}/{quote(delay_id, safe='')}"
        what = f"POST delayed_events {action}"
        try:
            if not self._delayed_action_in_body:
                try:
                    await self._transport.request("POST", f"{target}/{action}", "{}", idempotent=True, what=what)
                    return True
                except MatrixError as exc:
                    if exc.errcode != "M_UNRECOGNIZED":
                        raise
                    self._delayed_action_in_body = True
            body = json.dumps({"action": action})
            await self._transport.request("POST", target, body, idempotent=True, what=what)
        except MatrixError as exc:
            # A retried cancel or send whose first try went through lands
            # here too: the event is gone either way, which is what was asked.
            if exc.status == 404 and exc.errcode == "M_NOT_FOUND":
                return False
            raise
        return True

    async def delayed_events(self) -> tuple[dict[str, Any], ...]:
        """Our pending delayed events, as the homeserver lists them (each with
        ``delay_id``, ``room_id``, ``type``, ``state_key`` when a state event)."""
        body = await self._transport.request("GET", DELAYED_EVENTS_PATH, idempotent=True, what="GET delayed_events")
        listed = body.get("delayed_events") if isinstance(body, dict) else None
        if not isinstance(listed, list):
            raise MatrixError(200, "M_BAD_JSON", "the homeserver's delayed_events answer has no list")
        return tuple(item for item in listed if isinstance(item, dict) and isinstance(item.get("delay_id"), str))

    async def _schedule(self, method: str, path: str, body: str | None, delay_ms: int, *, what: str) -> str:
        if not isinstance(delay_ms, int) or delay_ms <= 0:
            raise ValueError(f"delay_ms must be a positive whole number of milliseconds, not {delay_ms!r}")
        separator = "&" if "?" in path else "?"
        path = f"{path}{separator}{DELAY_PARAMETER}={delay_ms}"
        answer = await self._transport.request(method, path, body, idempotent=False, what=what)
        delay_id = answer.get("delay_id") if isinstance(answer, dict) else None
        if not isinstance(delay_id, str) or not delay_id:
            raise MatrixError(200, "M_BAD_JSON", f"{what}: the homeserver's answer has no delay_id")
        return delay_id

    # -- internals -----------------------------------------------------------------

    async def _me(self) -> str:
        if self.user_id is None:
            await self.whoami()
        assert self.user_id is not None
        return self.user_id


def _account_data_path(user_id: str, event_type: str) -> str:
    return f"/_matrix/client/v3/user/{quote(user_id, safe='')}/account_data/{quote(event_type, safe='')}"


def _filter_kwargs(definition: Mapping[str, Any]) -> dict[str, Any]:
    """nio's filter builder takes the filter's top-level sections as arguments."""
    known = {"event_fields", "event_format", "presence", "account_data", "room"}
    unknown = set(definition) - known
    if unknown:
        raise ValueError(f"unsupported sync filter sections: {sorted(unknown)} (allowed: {sorted(known)})")
    kwargs = {key: json.loads(json.dumps(value)) for key, value in definition.items()}
    if "event_format" in kwargs:
        kwargs["event_format"] = nio.EventFormat(kwargs["event_format"])
    return kwargs


# The spec's grammar: a server name is a DNS name, IPv4 or [IPv6] literal with
# an optional port; a media id is opaque but made of [A-Za-z0-9_-]. Checked
# strictly, because both become parts of a request path.
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?")
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _split_mxc(uri: object) -> tuple[str, str]:
    """``mxc://<server>/<media id>`` → (server, media id), or :class:`InvalidMediaUrl`."""
    shown = _show_uri(uri)
    if not isinstance(uri, str) or not uri.startswith("mxc://"):
        raise InvalidMediaUrl(f"the file's link {shown} is not a Matrix media link (mxc://…), so it cannot be fetched")
    server, slash, media_id = uri.removeprefix("mxc://").partition("/")
    if not slash or not _SERVER_NAME.fullmatch(server) or not _MEDIA_ID.fullmatch(media_id):
        raise InvalidMediaUrl(
            f"the file's link {shown} is malformed (a media link is mxc://<server>/<media id>), so it cannot be fetched"
        )
    return server, media_id


def _show_uri(uri: object) -> str:
    """A link as a user may see it: printable, quoted, at most 80 characters."""
    text = uri if isinstance(uri, str) else type(uri).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text if len(text) <= 80 else text[:60] + "…" + text[-19:])


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message()
    message["Content-Disposition"] = disposition
    return message.get_filename()
