"""Streaming an agent's answer into Matrix by editing one message.

The answer arrives in small chunks; posting each as a message would flood the
room, and editing on every chunk would hit the homeserver's rate limits and
leave an edit history of hundreds of entries. :class:`AnswerStream` decides,
from the chunks and the clock alone, what to send and when:

- the first message is posted once the answer has content and has had
  ``first_delay`` to grow (a quick answer then takes a single message, no
  edits); it is then edited (``m.replace``) no more often than every
  ``min_interval`` seconds and at most ``max_edits`` times;
- a message body never exceeds ``max_bytes`` as the homeserver counts it
  (UTF-8 inside JSON, escapes included; see :func:`json_size`): past that the
  answer continues in a new message "part" (split after a newline when one
  is near, never inside a character). The default keeps every event under
  Matrix's 64 KiB limit even for an edit, which carries the body twice
  (``m.new_content`` and the ``* body`` fallback) plus the event's envelope;
- an answer takes at most ``max_parts`` messages: past that it is cut, and
  its last part ends with a note saying so (:data:`CUT_NOTE`), so a
  runaway agent cannot fill a room;
- a running tool shows as one status line at the bottom of the current part,
  replaced when the tool changes and removed when it finishes;
- when the answer ends, each part's last action carries that part's whole
  text, so the parts read in order are exactly the answer; on failure a
  marker (error or interruption) is appended instead.

It does no I/O and reads no clock: the caller passes ``now`` (any monotonic
time in seconds) with every input and sends the actions it gets back. Every
action carries its part number and edit number, from which the caller derives
deterministic Matrix transaction ids (``f"{source_event_id}:{part_no}:{edit_no}"``),
so a retried send never posts twice. :meth:`AnswerStream.next_due` says when
to call :meth:`AnswerStream.tick` if nothing else arrives.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "CUT_NOTE",
    "INTERRUPTED",
    "PART_BYTES",
    "AnswerStream",
    "EditPart",
    "PostPart",
    "StreamAction",
]

#: Marker for an answer cut short because the bot, or its connection to the
#: agent, stopped or restarted in the middle of it.
INTERRUPTED = (
    "⏹ This answer was interrupted: the bot, or its connection to the agent, restarted. "
    "Please send your message again."
)

#: Appended to the last part of an answer cut at ``max_parts`` messages.
CUT_NOTE = "(The answer was cut here: it went over {parts} messages, the most one answer may take.)"

#: Default size of one part's body, in bytes of JSON (see :func:`json_size`).
#: An edit carries the body twice, and Synapse refuses events over 65,536
#: bytes in all (envelope, signatures and hashes included, about 2 KB): two
#: bodies of 30,000 bytes leave room for that and the content's own keys.
PART_BYTES = 30_000

#: JSON bytes of the blank line ("\n\n") between the text and a status
#: line, marker or note.
_GAP = 4

_EMPTY_ANSWER = "(The agent finished without writing an answer.)"
_MAX_TOOL_NAME = 64


@dataclass(frozen=True)
class PostPart:
    """Post a new message: part ``part_no`` of the answer (edit number 0)."""

    part_no: int
    body: str
    edit_no: ClassVar[int] = 0


@dataclass(frozen=True)
class EditPart:
    """Replace the body of part ``part_no``; ``edit_no`` counts from 1 within the part."""

    part_no: int
    edit_no: int
    body: str


StreamAction = PostPart | EditPart


class AnswerStream:
    """The pure state machine for one streamed answer.

    Feed it with :meth:`text`, :meth:`tool_call`, :meth:`tool_result` and
    :meth:`tick`, and finish with :meth:`end` or :meth:`fail`; each returns
    the actions to perform now, in order. Inputs after the end are ignored
    (agents do send frames after END).

    Limits, per part (message): at most ``max_edits`` edits including the
    last one; edits at least ``min_interval`` apart, except the last one,
    which is never delayed; bodies of at most ``max_bytes`` bytes of JSON
    (:func:`json_size`). A small share of ``max_bytes`` is kept for the
    status line, the failure marker and the cut note, which are shortened
    to fit it. Per answer: at most ``max_parts`` parts (None: no limit).
    """

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        max_edits: int = 50,
        max_bytes: int = PART_BYTES,
        first_delay: float = 1.0,
        empty_answer: str = _EMPTY_ANSWER,
        max_parts: int | None = None,
    ) -> None:
        if min_interval < 0 or first_delay < 0:
            raise ValueError("min_interval and first_delay must not be negative")
        if max_edits < 1:
            raise ValueError("max_edits must be at least 1: the last edit is always allowed")
        if max_bytes < 64:
            raise ValueError("max_bytes must be at least 64")
        if max_parts is not None and max_parts < 1:
            raise ValueError("max_parts must be at least 1")
        self.max_parts = max_parts
        #: True once text was dropped because the answer reached ``max_parts``.
        self.cut = False
        self.min_interval = min_interval
        self.max_edits = max_edits
        self.max_bytes = max_bytes
        self.first_delay = first_delay
        self._reserve = min(512, max_bytes // 4)
        self._capacity = max_bytes - self._reserve
        self._empty_answer = _fit(empty_answer, self._capacity) or "-"
        self._now = float("-inf")
        self._done = False
        self._status: str | None = None
        self._tool: str | None = None
        self._part_no = 0
        self._new_part("")

    # --- state of the current part ---------------------------------------------

    def _new_part(self, text: str) -> None:
        self._chunks = [text] if text else []
        self._bytes = json_size(text)
        self._has_content = bool(text.strip())
        self._posted = False
        self._shown: str | None = None
        self._edits = 0
        self._last_sent = float("-inf")
        self._visible_since: float | None = None
        self._dirty = True

    def _text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def _body(self) -> str:
        status = _fit(self._status or "", self._reserve - _GAP)
        if not status:
            return self._text()
        if not self._has_content:
            return status
        return self._text() + "\n\n" + status

    def _visible(self) -> bool:
        """Whether the current part has something worth showing yet."""
        # Part 0 may start with just the status line, so a user sees the
        # agent working; later parts appear only with text, so no part ever
        # ends up holding nothing but a vanished status line.
        return self._has_content or (self._part_no == 0 and self._status is not None)

    # --- public inputs -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once :meth:`end` or :meth:`fail` was called."""
        return self._done

    def text(self, chunk: str, now: float) -> list[StreamAction]:
        """The next piece of the answer."""
        if self._done:
            return []
        self._clock(now)
        if not chunk:
            return self._due()
        # A lone surrogate (possible from JSON "\ud800") cannot be sent as
        # UTF-8; it becomes U+FFFD rather than failing the whole answer.
        if _has_surrogate(chunk):
            chunk = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in chunk)
        actions: list[StreamAction] = []
        if self.cut:
            return self._due()
        encoded = json_size(chunk)
        if self._bytes + encoded <= self._capacity:
            self._chunks.append(chunk)
            self._bytes += encoded
            self._dirty = True
            self._has_content = self._has_content or not chunk.isspace()
        else:
            self._overflow(self._text() + chunk, actions)
        actions.extend(self._due())
        return actions

    def tool_call(self, tool_name: str, now: float) -> list[StreamAction]:
        """A tool call started (or streams its arguments): show it as the status line."""
        if self._done:
            return []
        self._clock(now)
        name = _clean_tool_name(tool_name)
        if name != self._tool:
            self._tool = name
            self._set_status(f"⚙ running {name}…")
        return self._due()

    def tool_result(self, tool_name: str | None, now: float) -> list[StreamAction]:
        """A tool finished: its status line goes (unless another tool is now shown)."""
        if self._done:
            return []
        self._clock(now)
        if self._tool is not None and (tool_name is None or _clean_tool_name(tool_name) == self._tool):
            self._tool = None
            self._set_status(None)
        return self._due()

    def tick(self, now: float) -> list[StreamAction]:
        """Time passed: send the post or edit that has become due, if any."""
        if self._done:
            return []
        self._clock(now)
        return self._due()

    def next_due(self) -> float | None:
        """When :meth:`tick` will have something to send, or None if nothing is waiting.

        None also while the part has used all its intermediate edits: the
        rest waits for the end (or the next part).
        """
        if self._done or not self._dirty or not self._visible():
            return None
        if not self._posted:
            since = self._now if self._visible_since is None else self._visible_since
            # Only the first part waits: a later part continues a message
            # the user is already reading.
            return since + self.first_delay if self._part_no == 0 else since
        if self._edits >= self.max_edits - 1:
            return None
        return self._last_sent + self.min_interval

    def end(self, now: float) -> list[StreamAction]:
        """The answer is complete: send every part's whole text (status line removed)."""
        if self._done:
            return []
        self._clock(now)
        self._done = True
        self._status = None
        text = self._text()
        if self.cut:
            return self._final(text + "\n\n" + self._cut_note())
        if self._has_content:
            return self._final(text)
        if self._part_no == 0:
            return self._final(self._empty_answer)
        # A whitespace-only tail after a full part: nothing anyone could read.
        return []

    def fail(self, marker: str, now: float) -> list[StreamAction]:
        """The answer broke off: keep what arrived and append ``marker``.

        ``marker`` tells the user what happened, e.g. ``"⚠ The agent
        failed: connection lost."`` or :data:`INTERRUPTED`.
        """
        if self._done:
            return []
        self._clock(now)
        self._done = True
        self._status = None
        note = self._cut_note() if self.cut else ""
        room = self._reserve - _GAP - (json_size(note) + _GAP if note else 0)
        marker = _fit(marker.strip() or "⚠ The answer broke off.", room) or "!"
        if note:
            marker = note + "\n\n" + marker
        if self._has_content:
            return self._final(self._text() + "\n\n" + marker)
        return self._final(marker)

    # --- decisions ---------------------------------------------------------------

    def _cut_note(self) -> str:
        return _fit(CUT_NOTE.format(parts=self.max_parts), self._reserve // 2)

    def _clock(self, now: float) -> None:
        # Time never runs backwards here, whatever the caller passes.
        self._now = max(self._now, now)

    def _set_status(self, status: str | None) -> None:
        if status != self._status:
            self._status = status
            self._dirty = True

    def _due(self) -> list[StreamAction]:
        if self._visible_since is None and self._visible():
            self._visible_since = self._now
        due = self.next_due()
        if due is None or due > self._now:
            return []
        body = self._body()
        self._dirty = False
        if body == self._shown:
            return []
        self._shown = body
        self._last_sent = self._now
        if not self._posted:
            self._posted = True
            return [PostPart(self._part_no, body)]
        self._edits += 1
        return [EditPart(self._part_no, self._edits, body)]

    def _final(self, body: str) -> list[StreamAction]:
        """The part's last action: its whole body, sent now whatever the throttle says."""
        self._dirty = False
        if not self._posted:
            self._posted = True
            self._shown = body
            return [PostPart(self._part_no, body)]
        if body == self._shown:
            return []
        self._shown = body
        self._edits += 1
        return [EditPart(self._part_no, self._edits, body)]

    def _overflow(self, text: str, actions: list[StreamAction]) -> None:
        """The current part cannot take all of ``text``: close full parts, start the next."""
        while json_size(text) > self._capacity:
            head = _fit(text, self._capacity)
            newline = head.rfind("\n")
            # Prefer ending a part after a line, unless that leaves it
            # less than half full.
            if newline >= 0 and json_size(head[: newline + 1]) >= self._capacity // 2:
                head = head[: newline + 1]
            if self.max_parts is not None and self._part_no + 1 >= self.max_parts:
                # The last part allowed: keep what fits, drop the rest, and
                # say so at the end (the reserve has room for the note).
                self._chunks, self._bytes, self.cut = [head], json_size(head), True
                self._has_content = self._has_content or bool(head.strip())
                self._dirty = True
                return
            status, self._status = self._status, None
            actions.extend(self._final(head))
            self._status = status
            self._part_no += 1
            text = text[len(head) :]
            self._new_part(text)


def json_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string as the homeserver counts an
    event (canonical JSON: UTF-8, with ``"``, ``\\`` and control characters
    escaped). Additive: the size of a concatenation is the sum of the sizes."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def _fit(text: str, limit: int) -> str:
    """A prefix of ``text`` of at most ``limit`` bytes of JSON (whole characters only)."""
    if limit <= 0:
        return ""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit and json_size(text) <= limit:
        return text
    head = encoded[:limit].decode("utf-8", "ignore")
    if json_size(head) <= limit:
        return head
    # Escapes make JSON longer than UTF-8: find the longest prefix that fits.
    low, high = 0, len(head)  # head[:low] fits, head[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if json_size(head[:middle]) <= limit:
            low = middle
        else:
            high = middle
    return head[:low]


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean_tool_name(name: object) -> str:
    text = name if isinstance(name, str) else ""
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    text = " ".join(text.split())
    if len(text) > _MAX_TOOL_NAME:
        text = text[: _MAX_TOOL_NAME - 1] + "…"
    return text or "a tool"
