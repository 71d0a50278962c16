"""One turn of an agent connection, as a pure machine: frames and ``now`` in, actions out.

A *turn* is one user message and its answer. :class:`Turn` decides what the
user sees and what the agent is told; the connection actor
(``bot/actors/connection.py``) only carries the frames in and performs the
actions it gets back, in order. Nothing here does I/O or reads a clock.

The rules of a turn:

1. **Streaming.** Text and tool frames go through
   :class:`~lambda_actors.bot.streaming.AnswerStream` (one message growing by
   edits, parts under the event size limit, at most ``Limits.answer_parts``
   parts, then cut with a note). :meth:`Turn.next_due` says when to
   :meth:`Turn.tick` if no frame comes.
2. **The end.** ``END`` finishes the turn with the whole answer (a note is
   appended when frames could not be read); ``ERROR`` finishes it with the
   agent's message, as an ``agent_failed`` error. The finishing sends carry
   the done marker; when nothing changed since the last edit, that edit is
   repeated once with the marker, so readers always see the end.
3. **Failure.** :meth:`Turn.fail` (the socket failed, the bot is stopping)
   keeps what arrived and appends the marker: an agent failure
   (:func:`failure_text`) or :data:`~lambda_actors.bot.streaming.INTERRUPTED`.
4. **Confirmations.** A confirmation request becomes a prompt in the room and
   a pending confirmation under a key namespaced by agent and chat
   (:func:`confirmation_key`), so no agent can reach another's. Its text is
   cut to ``Limits.confirmation_chars`` with a note, never refused. The
   owner's answer (by key) is passed to the agent; a key that is not this
   turn's is ignored; a request id used twice in one turn is refused at once,
   so the agent never waits for an answer that cannot come. With no answer
   by the deadline the store decides who was first (:class:`Expire`, then
   :meth:`Turn.expired`): the expiry says "no" only if the owner did not.
5. **Files.** Each ``SEND_FILE`` becomes a :class:`Fetch` (numbered, for
   its transaction id), at most ``Limits.answer_files`` per answer; past
   that, one note and the rest are ignored.
6. **Other frames.** A ``STATUS``, a late frame (one the socket layer saw
   while no answer was open), an unknown frame or a progress update is
   logged and changes nothing; a malformed frame is counted for the note.
   Inputs after the end are ignored.

Between turns the connection also keeps two small books, here as well:
:class:`Deliveries` (the turns waiting for this connection, explicitly
queued, never overwritten) and :class:`OutsideAnswer` (frames the agent sends
while no answer is open, bounded by ``Limits.frames_outside_answer``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..agent import protocol as p
from ..agent.client import (
    AgentBusy,
    AgentClosed,
    AgentConnectionError,
    AgentStalled,
    AgentUnreachable,
    FrameTooLarge,
    Late,
    NoStatus,
    TooManyFrames,
)
from .limits import Limits
from .streaming import PART_BYTES, AnswerStream, EditPart, PostPart, StreamAction

__all__ = [
    "Action",
    "Ask",
    "Deliveries",
    "Expire",
    "Fetch",
    "Finish",
    "Log",
    "OutsideAnswer",
    "Reply",
    "Say",
    "Show",
    "Turn",
    "TurnSettings",
    "confirmation_key",
    "failure_text",
]

#: Error kinds carried by the finishing sends (the ``ERROR_*`` constants of
#: ``bot/actors/services.py`` have the same values; this module imports no actor code).
AGENT_FAILED = "agent_failed"
INTERRUPTED_KIND = "interrupted"
FILE_KIND = "file"
LIMIT_KIND = "limit"


@dataclass(frozen=True)
class TurnSettings:
    """What a turn needs to know about its agent and the bot's limits."""

    label: str
    #: ``<agent_id>/<chat_id>``: the prefix of this chat's confirmation keys.
    namespace: str
    edit_interval: float = 1.0
    confirmation_timeout: float = 600.0
    limits: Limits = Limits()
    part_bytes: int = PART_BYTES


# --- actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Show:
    """Post or edit answer parts now; the turn goes on."""

    parts: tuple[StreamAction, ...]


@dataclass(frozen=True)
class Say:
    """A notice in the middle of the answer (not the done marker): ``kind`` and
    ``cause`` make its transaction id, ``error`` its error kind."""

    kind: str
    cause: tuple[str, ...]
    body: str
    error: str | None = None


@dataclass(frozen=True)
class Ask:
    """Record a pending confirmation under ``key`` and post its prompt."""

    key: str
    action: str
    details: str
    body: str


@dataclass(frozen=True)
class Reply:
    """Send ``CONFIRM_RESPONSE`` for the agent's own ``request_id``."""

    request_id: str
    approved: bool


@dataclass(frozen=True)
class Expire:
    """A confirmation's time is up: resolve ``key`` in the store, and report
    whether this expiry was first with :meth:`Turn.expired`."""

    key: str


@dataclass(frozen=True)
class Fetch:
    """Read the agent's file ``path`` and post it (file number ``number`` of the answer)."""

    number: int
    path: str


@dataclass(frozen=True)
class Finish:
    """End the turn: these final sends, marked done, together with "handled";
    ``error`` is the error kind when the turn did not end in an answer."""

    parts: tuple[StreamAction, ...]
    error: str | None = None


@dataclass(frozen=True)
class Log:
    """A line for the log (``level`` is a structlog method name)."""

    event: str
    level: str = "info"
    fields: tuple[tuple[str, Any], ...] = ()


Action = Show | Say | Ask | Reply | Expire | Fetch | Finish | Log


def confirmation_key(namespace: str, request_id: str) -> str:
    """The store key of a confirmation: the agent's id inside its chat's namespace.

    Agent ids hold no ``/``, so two agents (or two chats) never make the same key.
    """
    return f"{namespace}/{request_id}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (cut: {len(text) - limit} more characters not shown)"


def failure_text(label: str, error: AgentConnectionError) -> str:
    """What the user reads when the connection failed during their turn: no
    URLs, codes or advice meant for operators (the log has those)."""
    match error:
        case AgentBusy():
            why = "another client holds this chat"
        case AgentUnreachable():
            why = "it cannot be reached right now"
        case NoStatus():
            why = "it did not get ready in time"
        case AgentStalled():
            why = "it stopped responding in the middle of the answer"
        case FrameTooLarge():
            why = "it sent a message too large to handle"
        case TooManyFrames():
            why = "it sent more than it was asked for"
        case AgentClosed():
            why = "it closed the connection in the middle of the answer"
        case _:
            why = "the connection to it failed"
    return f"⚠ {label} could not answer: {why}. Please send your message again."


@dataclass
class _Pending:
    request_id: str
    action: str
    deadline: float
    expiring: bool = False


class Turn:
    """The pure machine of one turn (the rules are in the module docstring)."""

    def __init__(self, settings: TurnSettings, event_id: str) -> None:
        self.settings = settings
        self.event_id = event_id
        self.stream = AnswerStream(
            min_interval=settings.edit_interval,
            max_bytes=settings.part_bytes,
            max_parts=settings.limits.answer_parts,
        )
        self._last: StreamAction | None = None
        self._pending: dict[str, _Pending] = {}
        self._asked: set[str] = set()
        self._files = 0
        self._unreadable = 0

    @property
    def finished(self) -> bool:
        return self.stream.finished

    @property
    def pending_keys(self) -> frozenset[str]:
        """Confirmation keys asked in this turn and not answered yet."""
        return frozenset(self._pending)

    def next_due(self) -> float | None:
        """When :meth:`tick` has something to do, if nothing else happens first."""
        if self.finished:
            return None
        times = [c.deadline for c in self._pending.values() if not c.expiring]
        due = self.stream.next_due()
        if due is not None:
            times.append(due)
        return min(times, default=None)

    # --- inputs ----------------------------------------------------------------

    def frame(self, frame: Any, now: float) -> list[Action]:
        """A frame from the agent's socket (a parsed frame or a :class:`Late`)."""
        if self.finished:
            return [Log("connection.frame_after_end", fields=(("frame", type(frame).__name__),))]
        match frame:
            case Late(frame=late):
                return [Log("connection.late_frame_ignored", fields=(("frame", type(late).__name__),))]
            case p.TextChunk(text=text):
                return self._show(self.stream.text(text, now))
            case p.ToolCallChunk(tool_name=name):
                return self._show(self.stream.tool_call(name, now))
            case p.ToolResult(tool_name=name):
                return self._show(self.stream.tool_result(name, now))
            case p.CustomUpdate(confirm=confirm) if confirm is not None:
                return self._ask(confirm, now)
            case p.CustomUpdate():
                return [Log("connection.progress", "debug")]
            case p.SendFile(path=path):
                return self._fetch(path)
            case p.End():
                if self._unreadable:
                    self.stream.text(
                        f"\n\n(The agent also sent {self._unreadable} unreadable frame(s); "
                        "the answer may be incomplete.)",
                        now,
                    )
                return self._finish(self.stream.end(now), None)
            case p.AgentError(message=message):
                marker = f"⚠ {self.settings.label} reported an error: {message}"
                return self._finish(self.stream.fail(marker, now), AGENT_FAILED)
            case p.MalformedFrame(reason=reason):
                self._unreadable += 1
                return [Log("connection.malformed_frame", "warning", (("reason", reason),))]
            case p.UnknownFrame(type=kind):
                return [Log("connection.unknown_frame_ignored", fields=(("frame_type", kind),))]
            case p.Status():
                return [Log("connection.status_mid_answer_ignored")]
        return [Log("connection.frame_ignored", "debug", (("frame", type(frame).__name__),))]

    def tick(self, now: float) -> list[Action]:
        """Time passed: due edits, and confirmations whose time is up."""
        if self.finished:
            return []
        actions: list[Action] = []
        for key, pending in self._pending.items():
            if not pending.expiring and pending.deadline <= now:
                pending.expiring = True
                actions.append(Expire(key))
        actions.extend(self._show(self.stream.tick(now)))
        return actions

    def answer(self, key: str, approved: bool) -> list[Action]:
        """The owner answered confirmation ``key`` (the room resolved it in the store)."""
        pending = self._pending.pop(key, None)
        if pending is None or self.finished:
            return [Log("connection.stale_confirmation_answer", fields=(("key", key),))]
        return [Reply(pending.request_id, approved)]

    def expired(self, key: str, first: bool) -> list[Action]:
        """The outcome of an :class:`Expire`: ``first`` when the store resolved
        the key for it (the owner had not answered)."""
        if not first:
            # The owner answered at the same moment; their answer is on its
            # way through the mailbox and is taken by :meth:`answer`.
            return []
        pending = self._pending.pop(key, None)
        if pending is None or self.finished:
            return []
        body = f"⌛ No answer in time, so no: {pending.action}"
        return [
            Log("connection.confirmation_expired", fields=(("key", key),)),
            Say("expired", (self.event_id, key), body),
            Reply(pending.request_id, False),
        ]

    def fail(self, marker: str, error: str) -> list[Action]:
        """The turn cannot go on (the socket failed, or the bot is stopping)."""
        if self.finished:
            return []
        # ``now`` does not matter for a failure: its sends go out at once.
        return self._finish(self.stream.fail(marker, float("inf")), error)

    # --- rules -----------------------------------------------------------------

    def _show(self, parts: list[StreamAction]) -> list[Action]:
        if not parts:
            return []
        self._last = parts[-1]
        return [Show(tuple(parts))]

    def _finish(self, parts: list[StreamAction], error: str | None) -> list[Action]:
        last = self._last
        if not parts and last is not None:
            # The last throttled edit already showed the whole answer; repeat
            # it once more, marked done, so readers know nothing follows.
            parts = [EditPart(last.part_no, last.edit_no + 1, last.body)]
        if parts:
            self._last = parts[-1]
        self._pending.clear()
        return [Finish(tuple(parts), error)]

    def _ask(self, confirm: p.ConfirmRequest, now: float) -> list[Action]:
        key = confirmation_key(self.settings.namespace, confirm.request_id)
        if key in self._asked:
            return [
                Log("connection.confirmation_id_reused", "warning", (("key", key),)),
                Reply(confirm.request_id, False),
            ]
        self._asked.add(key)
        room = self.settings.limits.confirmation_chars
        action = clip(confirm.action, room)
        details = clip(confirm.details, max(room - len(action), 0)) if confirm.details else ""
        minutes = self.settings.confirmation_timeout / 60
        body = (
            f"🔐 {self.settings.label} asks for your permission to: {action}\n"
            f"{details}\n"
            f"Answer !yes or !no (or react ✅ / ❌). No answer within {minutes:g} min means no."
        )
        self._pending[key] = _Pending(confirm.request_id, action, now + self.settings.confirmation_timeout)
        return [Ask(key, action, details, body)]

    def _fetch(self, path: str) -> list[Action]:
        number = self._files
        self._files += 1
        limit = self.settings.limits.answer_files
        if number < limit:
            return [Fetch(number, path)]
        if number == limit:
            body = (
                f"⚠ The agent tried to send more than {limit} files in one answer; "
                f"I posted the first {limit} and left out the rest."
            )
            return [Say("file", (self.event_id, "too-many"), body, LIMIT_KIND)]
        return [Log("connection.file_over_limit", fields=(("path", path[:200]),))]


# --- between turns ------------------------------------------------------------------

T = TypeVar("T")


class Deliveries(Generic[T]):
    """The turns waiting for a connection, in order of arrival.

    A room hands over one turn at a time, so this holds at most one per room
    sharing the chat; a turn for an event already waiting or being answered
    (a room actor that restarted and delivered again) is not queued twice.
    Nothing is ever overwritten: every turn taken in is answered or failed.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[str, T]] = deque()
        self.current: str | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, event_id: str, item: T) -> bool:
        """Queue ``item``; False when that event is already queued or current."""
        if event_id == self.current or any(e == event_id for e, _ in self._queue):
            return False
        self._queue.append((event_id, item))
        return True

    def take(self) -> T:
        """The oldest waiting turn, which becomes the current one."""
        event_id, item = self._queue.popleft()
        self.current = event_id
        return item

    def done(self) -> None:
        """The current turn ended."""
        self.current = None

    def drain(self) -> list[T]:
        """Every waiting turn, removed (to fail them when the connection gives up)."""
        items = [item for _, item in self._queue]
        self._queue.clear()
        return items


@dataclass
class OutsideAnswer:
    """Frames an agent sends while no answer is open, counted between answers.

    :meth:`frame` is True once the count goes past ``budget``: the socket is
    then failed, so an agent that floods between answers costs a bounded
    amount of work and memory (the frames themselves are dropped as they come).
    """

    budget: int
    count: int = field(default=0)

    def frame(self) -> bool:
        self.count += 1
        return self.count > self.budget

    def answer_started(self) -> None:
        self.count = 0
