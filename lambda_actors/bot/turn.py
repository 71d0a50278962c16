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
4. **Confirmations.** A confirmation request becomes an :class:`Ask`: the
   connection makes it a record of the node's approvals (one gate for
   everything the owner answers; ``approvals/agent.py``), numbered within
   the answer for its id, under a key namespaced by agent and chat
   (:func:`confirmation_key`), so no agent can reach another's. Its text is
   cut to ``Limits.confirmation_chars`` with a note, never refused. The
   record's decision, or its deadline's default deny, comes back by key
   (:meth:`Turn.decided`) and is passed to the agent; a key that is not
   this turn's is ignored; a request id used twice in one turn is refused
   at once, so the agent never waits for an answer that cannot come. If no
   verdict arrives by the deadline plus :data:`VERDICT_GRACE` (the gate is
   away), or the gate cannot be asked at all (:meth:`Turn.not_asked`), the
   turn says no itself: no answer never means yes.
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

#: How long past a confirmation's deadline a turn waits for the gate's
#: verdict before it says no itself (the record expires on time; this only
#: matters when the approvals actor could not say so).
VERDICT_GRACE = 10.0


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
    """Ask the owner through the node's approvals: confirmation ``number`` of
    this answer, under ``key``; its verdict comes back by :meth:`Turn.decided`."""

    key: str
    number: int
    action: str
    details: str


@dataclass(frozen=True)
class Reply:
    """Send ``CONFIRM_RESPONSE`` for the agent's own ``request_id``."""

    request_id: str
    approved: bool


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


Action = Show | Say | Ask | Reply | Fetch | Finish | Log


def confirmation_key(namespace: str, request_id: str) -> str:
    """The key of a confirmation: the agent's id inside its chat's namespace.

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
    #: When the turn says no itself if no verdict came (the deadline plus the grace).
    give_up_at: float


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
        times = [c.give_up_at for c in self._pending.values()]
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
        """Time passed: due edits, and confirmations the gate never gave a verdict on."""
        if self.finished:
            return []
        actions: list[Action] = []
        for key, pending in list(self._pending.items()):
            if pending.give_up_at <= now:
                del self._pending[key]
                actions += [
                    Log("connection.confirmation_without_verdict", "warning", (("key", key),)),
                    Say("expired", (self.event_id, key), f"⌛ No answer reached me in time, so no: {pending.action}"),
                    Reply(pending.request_id, False),
                ]
        actions.extend(self._show(self.stream.tick(now)))
        return actions

    def decided(self, key: str, approved: bool) -> list[Action]:
        """The gate's verdict on confirmation ``key`` (the owner's answer, or no
        at the deadline): the agent is told."""
        pending = self._pending.pop(key, None)
        if pending is None or self.finished:
            return [Log("connection.stale_confirmation_answer", fields=(("key", key),))]
        return [Reply(pending.request_id, approved)]

    def not_asked(self, key: str) -> list[Action]:
        """The gate could not be asked (not running, or the room has no owner):
        the agent hears no at once, the owner why."""
        pending = self._pending.pop(key, None)
        if pending is None or self.finished:
            return []
        body = f"⚠ {self.settings.label} asked for your approval, but I could not ask you just now, so it was told no: {pending.action}"
        return [
            Log("connection.confirmation_not_asked", "warning", (("key", key),)),
            Say("unasked", (self.event_id, key), body),
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
        number = len(self._asked)
        self._asked.add(key)
        room = self.settings.limits.confirmation_chars
        action = clip(confirm.action, room)
        details = clip(confirm.details, max(room - len(action), 0)) if confirm.details else ""
        give_up_at = now + self.settings.confirmation_timeout + VERDICT_GRACE
        self._pending[key] = _Pending(confirm.request_id, action, give_up_at)
        return [Ask(key, number, action, details)]

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
