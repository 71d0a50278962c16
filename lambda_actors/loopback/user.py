"""A scripted Matrix user: what the demo, the chaos run, the benchmarks and
the end-to-end tests use to talk to the bot as a person would.

It is an ordinary Matrix client (our own :class:`MatrixClient`): it syncs in
the background, keeps every event it sees, and can wait for one without
sleeping. :meth:`ScriptedUser.answer` puts together the bot's reply to one
message from the ``org.lambda.source`` / ``org.lambda.done`` marks the bot
puts on everything it says in answer to a message, and the kind of error it
reports from ``org.lambda.error``.

Like a person's client it rides out a homeserver that goes away for a while
(the chaos run stops Synapse mid-run): its sync loop tries again, and
:meth:`ScriptedUser.say` sends again with the same transaction id (so the
message is posted once), until the homeserver is back or
``outage_patience`` seconds have passed.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from ..bot.actors.services import DONE_KEY, ERROR_KEY, SOURCE_KEY
from ..matrix import content as contents
from ..matrix.client import MatrixClient
from ..matrix.errors import HomeserverUnavailable, MatrixError

#: How often a scripted user tries an unreachable homeserver again. Polling:
#: a homeserver that is down sends no signal that it is back.
OUTAGE_RETRY = 0.5


@dataclass(frozen=True)
class Seen:
    """One event the user's client saw: ``room_id`` and the raw event."""

    room_id: str
    event: dict[str, Any]

    @property
    def content(self) -> dict[str, Any]:
        content = self.event.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def sender(self) -> str:
        return str(self.event.get("sender", ""))

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))

    @property
    def event_id(self) -> str:
        return str(self.event.get("event_id", ""))


@dataclass(frozen=True)
class Invitation:
    room_id: str
    inviter: str
    name: str
    is_space: bool


@dataclass
class Answer:
    """The bot's reply to one message: its parts (each at its latest edit),
    the event ids of the parts, and whether the bot marked it done."""

    parts: dict[str, str] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    edits: int = 0
    #: The error kinds (``org.lambda.error``) of the bot's sends for it, in order.
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.parts.values())


class ScriptedUser:
    def __init__(self, client: MatrixClient, *, sync_timeout_ms: int = 10_000, outage_patience: float = 120.0) -> None:
        self.client = client
        self.outage_patience = outage_patience
        #: How many requests found the homeserver away (each tried again).
        self.outage_retries = 0
        self.seen: list[Seen] = []
        self.invites: list[Invitation] = []
        #: Who was typing, per room, each time that changed: (room_id, user ids).
        self.typing: list[tuple[str, tuple[str, ...]]] = []
        self._changed = trio.Event()
        self._sync_timeout_ms = sync_timeout_ms
        self._txn = itertools.count()
        self._txn_prefix = uuid.uuid4().hex[:8]

    @property
    def user_id(self) -> str:
        assert self.client.user_id is not None
        return self.client.user_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync for ever, recording what arrives (start it in a nursery)."""
        body = await self._through_outages(lambda: self.client.sync(None, timeout_ms=0))
        token = self._record(body)
        task_status.started()
        while True:
            body = await self._through_outages(
                lambda: self.client.sync(token, timeout_ms=self._sync_timeout_ms), patience=math.inf
            )
            token = self._record(body)

    async def _through_outages(self, request: Callable[[], Awaitable[Any]], patience: float | None = None) -> Any:
        """``await request()``, made again while the homeserver is away (down, or a 5xx from a
        proxy in front of it) for up to ``patience`` seconds (default ``outage_patience``)."""
        deadline = trio.current_time() + (self.outage_patience if patience is None else patience)
        while True:
            try:
                return await request()
            except (HomeserverUnavailable, MatrixError) as exc:
                if isinstance(exc, MatrixError) and exc.status < 500:
                    raise
                if trio.current_time() + OUTAGE_RETRY > deadline:
                    raise
                self.outage_retries += 1
                await trio.sleep(OUTAGE_RETRY)

    def _record(self, body: dict[str, Any]) -> str:
        rooms = body.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            for event in room.get("timeline", {}).get("events", []):
                self.seen.append(Seen(room_id, event))
            for event in room.get("ephemeral", {}).get("events", []):
                if event.get("type") == "m.typing":
                    self.typing.append((room_id, tuple(event.get("content", {}).get("user_ids", []))))
        for room_id, room in rooms.get("invite", {}).items():
            inviter, name, kind = "", "", None
            for event in room.get("invite_state", {}).get("events", []):
                content = event.get("content", {})
                if event.get("type") == "m.room.member" and event.get("state_key") == self.client.user_id:
                    inviter = event.get("sender", "")
                elif event.get("type") == "m.room.name":
                    name = content.get("name", "")
                elif event.get("type") == "m.room.create":
                    kind = content.get("type")
            invitation = Invitation(room_id, inviter, name, kind == "m.space")
            if invitation not in self.invites:
                self.invites.append(invitation)
        self._changed.set()
        self._changed = trio.Event()
        return body["next_batch"]

    async def wait_until(self, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until ``check()`` returns something truthy, and return it."""
        with trio.fail_after(timeout):
            while True:
                result = check()
                if result:
                    return result
                await self._changed.wait()

    # -- acting ----------------------------------------------------------------------

    def _next_txn(self) -> str:
        return f"user-{self._txn_prefix}-{next(self._txn)}"

    async def say(self, room_id: str, text: str, *, reply_to: str | None = None) -> str:
        """Send a text message (in reply to ``reply_to``); return its event id
        (sent again, same txn id, while the homeserver is away)."""
        txn = self._next_txn()
        content = contents.text(text)
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return await self._through_outages(lambda: self.client.send(room_id, "m.room.message", content, txn))

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        return await self.client.react(room_id, event_id, key, self._next_txn())

    async def send_file(self, room_id: str, filename: str, data: bytes, mimetype: str = "text/plain") -> str:
        mxc = await self.client.upload(data, mimetype, filename)
        content = contents.file_message(mxc, filename, mimetype=mimetype, size=len(data))
        return await self.client.send(room_id, "m.room.message", content, self._next_txn())

    async def start_dm(self, bot_user_id: str) -> str:
        """Create a direct chat and invite the bot into it."""
        return await self.client.create_room(invite=[bot_user_id], is_direct=True)

    async def accept_invite(self, name: str, timeout: float = 30.0) -> str:
        """Wait for an invitation to a room called ``name``, join it, return the room id."""
        invitation = await self.wait_until(lambda: next((i for i in self.invites if i.name == name), None), timeout)
        await self.client.join(invitation.room_id)
        return invitation.room_id

    # -- reading the bot ---------------------------------------------------------------

    def messages_from(self, sender: str, room_id: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.sender == sender and s.type == "m.room.message" and (room_id is None or s.room_id == room_id)
        ]

    def answer_so_far(self, source_event_id: str) -> Answer:
        answer = Answer()
        for seen in self.seen:
            content = seen.content
            if content.get(SOURCE_KEY) != source_event_id or seen.type != "m.room.message":
                continue
            relates = content.get("m.relates_to") or {}
            if relates.get("rel_type") == "m.replace":
                new = content.get("m.new_content") or {}
                if relates.get("event_id") in answer.parts:
                    answer.parts[relates["event_id"]] = str(new.get("body", ""))
                answer.edits += 1
            elif content.get("msgtype") in ("m.file", "m.image", "m.audio", "m.video"):
                answer.files.append(content)
            else:
                answer.parts[seen.event_id] = str(content.get("body", ""))
            answer.done = answer.done or bool(content.get(DONE_KEY))
            if isinstance(kind := content.get(ERROR_KEY), str):
                answer.errors.append(kind)
        return answer

    async def answer(self, source_event_id: str, timeout: float = 30.0) -> Answer:
        """Wait for the bot's complete reply to ``source_event_id``."""
        return await self.wait_until(
            lambda: (a := self.answer_so_far(source_event_id)).done and a or None, timeout
        )

    async def notice(self, room_id: str, contains: str, timeout: float = 30.0) -> Seen:
        """Wait for a message in ``room_id`` whose body contains ``contains``."""
        return await self.wait_until(
            lambda: next(
                (s for s in self.seen if s.room_id == room_id and contains in str(s.content.get("body", ""))), None
            ),
            timeout,
        )
