"""The run's board: one ``m.notice`` people read in Element, edited as the run moves (SPEC 8.1).

Clients hide the custom ``cis.dag.*`` events, so each run also gets one
notice in the status room: an HTML table of its tasks (status, attempt,
elapsed) and the run's progress, with a plain-text body for clients without
HTML, carrying ``org.lambda.dag: {run_id}`` so tools can find it.

Two pure parts:

- :func:`render` turns what the run looks like into the notice's content.
  It is deterministic in its inputs, so "only on change" is a comparison of
  contents. A running task's elapsed time is shown to the minute (``<1m``,
  ``4m``), a finished one's to the second: to the second for running tasks
  would change the board every second and make an edit every 2 s of a long
  run, all noise. A run too large for one event shows its busy and failed
  tasks first and counts the rest.
- :class:`BoardThrottle` decides when to post and edit: the first rendering
  at once, then an ``m.replace`` at most every ``min_interval`` (2 s), and
  only when the content differs from what the room shows; the final state
  is always shown (it waits for the throttle, never dropped). A failed send
  is tried again later with the newest content.

The node's broadcaster (``dag/actors/broadcast.py``) performs the actions.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .status import Progress, canonical_size

__all__ = ["DAG_KEY", "BoardThrottle", "EditBoard", "PostBoard", "TaskRow", "render"]

#: The key carrying ``{run_id}`` in the board's content (and in its edits'
#: ``m.new_content``).
DAG_KEY = "org.lambda.dag"

#: Most bytes of canonical JSON for the board's body and HTML together. An
#: edit carries the content twice (``m.new_content`` and the fallback) and an
#: event may take 64 KiB in all, envelope included.
MAX_BOARD_BYTES = 28_000

_ICONS = {
    "pending": "⏳",
    "running": "▶️",
    "blocked": "⚠️",
    "completed": "✅",
    "failed": "❌",
    "skipped": "⏭️",
    "cancelled": "⏹️",
}
#: Which tasks a board too large to show whole keeps first.
_SHOW_FIRST = {"running": 0, "blocked": 0, "failed": 1, "pending": 2, "cancelled": 3, "skipped": 3, "completed": 4}


@dataclass(frozen=True)
class TaskRow:
    """One task as the board shows it. Times are wall-clock seconds (Unix)."""

    task_id: str
    status: str
    attempt: int = 0
    started_at: float | None = None
    ended_at: float | None = None


def render(
    run_id: str,
    dag_name: str,
    run_status: str,
    tasks: Sequence[TaskRow],
    progress: Progress,
    now: float,
    *,
    max_bytes: int = MAX_BOARD_BYTES,
) -> dict[str, Any]:
    """The board's ``m.notice`` content for a run as it is at ``now`` (Unix seconds)."""
    title = f"DAG {dag_name} · run {run_id} · {run_status}"
    summary = f"{progress.completed}/{progress.total} completed" + (f", {progress.failed} failed" if progress.failed else "")
    rows = [(t, _elapsed(t, now)) for t in tasks]
    shown, hidden = _fit(rows, title, summary, max_bytes)
    text_lines = [title, summary, ""]
    text_lines += [f"{_ICONS.get(t.status, '')} {t.task_id}  {t.status}  attempt {t.attempt}  {elapsed}".rstrip() for t, elapsed in shown]
    cells = "".join(
        f"<tr><td>{html.escape(t.task_id)}</td><td>{_ICONS.get(t.status, '')} {html.escape(t.status)}</td>"
        f"<td>{t.attempt}</td><td>{elapsed}</td></tr>"
        for t, elapsed in shown
    )
    more = ""
    if hidden:
        counts = Counter(t.status for t, _ in hidden)
        more = f"… and {len(hidden)} more tasks (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
        text_lines.append(more)
    formatted = (
        f"<p><b>{html.escape(title)}</b><br>{html.escape(summary)}</p>"
        "<table><thead><tr><th>task</th><th>status</th><th>attempt</th><th>elapsed</th></tr></thead>"
        f"<tbody>{cells}</tbody></table>" + (f"<p>{html.escape(more)}</p>" if more else "")
    )
    return {
        "msgtype": "m.notice",
        "body": "\n".join(text_lines),
        "format": "org.matrix.custom.html",
        "formatted_body": formatted,
        DAG_KEY: {"run_id": run_id},
    }


def _fit(
    rows: list[tuple[TaskRow, str]], title: str, summary: str, max_bytes: int
) -> tuple[list[tuple[TaskRow, str]], list[tuple[TaskRow, str]]]:
    """The rows that fit (in the run's order), and those left out."""
    budget = max_bytes - 2 * canonical_size(title + summary) - 400
    costs = [2 * canonical_size(t.task_id) + 180 for t, _ in rows]
    if sum(costs) <= budget:
        return rows, []
    order = sorted(range(len(rows)), key=lambda i: (_SHOW_FIRST.get(rows[i][0].status, 5), i))
    kept: set[int] = set()
    for i in order:
        if costs[i] > budget:
            break
        budget -= costs[i]
        kept.add(i)
    return [r for i, r in enumerate(rows) if i in kept], [r for i, r in enumerate(rows) if i not in kept]


def _elapsed(task: TaskRow, now: float) -> str:
    if task.started_at is None:
        return ""
    if task.ended_at is not None:
        return _duration(max(0, round(task.ended_at - task.started_at)))
    minutes = int(max(0.0, now - task.started_at) // 60)
    return "<1m" if minutes == 0 else _duration(minutes * 60)


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds % 60 else f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- the throttle --------------------------------------------------------------------------


@dataclass(frozen=True)
class PostBoard:
    """Post the board (``m.room.message``); report :meth:`BoardThrottle.sent` with its event id."""

    content: Mapping[str, Any] = field(hash=False)
    #: For a deterministic transaction id: a retried post cannot post twice.
    txn_no: ClassVar[int] = 0


@dataclass(frozen=True)
class EditBoard:
    """Replace the board's content (``client.edit(room, board_event_id, content, txn)``)."""

    content: Mapping[str, Any] = field(hash=False)
    txn_no: int


BoardAction = PostBoard | EditBoard


class BoardThrottle:
    """When one run's board is posted and edited. Pure: contents and ``now`` in, actions out.

    Give it each new rendering with :meth:`show` (as often as the run moves:
    equal contents cost nothing), the last with :meth:`final`; call
    :meth:`tick` at :meth:`next_due`; report each action's end with
    :meth:`sent` or :meth:`failed`. One action is in flight at a time.
    """

    def __init__(self, *, min_interval: float = 2.0, retry_s: float = 2.0, posted: bool = False) -> None:
        """``posted``: the board is in the room already (a restarted node edits it)."""
        self.min_interval = min_interval
        self.retry_s = retry_s
        self._latest: Mapping[str, Any] | None = None
        self._shown: Mapping[str, Any] | None = None
        self._first: Mapping[str, Any] | None = None
        self._in_flight: BoardAction | None = None
        self._posted = posted
        self._final = False
        self._last_sent = -math.inf
        self._retry_at: float | None = None
        self._edits = 0
        self._now = -math.inf

    @property
    def finished(self) -> bool:
        """The final content is what the room shows."""
        return self._final and self._in_flight is None and self._shown == self._latest

    def show(self, content: Mapping[str, Any], now: float) -> list[BoardAction]:
        if self._final:
            return []
        self._latest = content
        return self.tick(now)

    def final(self, content: Mapping[str, Any], now: float) -> list[BoardAction]:
        """The run ended: ``content`` will be shown, whatever the throttle delays."""
        self._latest = content
        self._final = True
        return self.tick(now)

    def tick(self, now: float) -> list[BoardAction]:
        self._now = max(self._now, now)
        due = self.next_due()
        if due is None or due > self._now:
            return []
        assert self._latest is not None
        self._retry_at = None
        self._last_sent = self._now
        if not self._posted:
            # A post retried keeps its first content: its transaction id is
            # fixed, and the homeserver answers a repeat with the first event
            # (whatever the repeat held); an edit brings it up to date.
            if self._first is None:
                self._first = self._latest
            self._in_flight = PostBoard(self._first)
        else:
            self._edits += 1
            self._in_flight = EditBoard(self._latest, self._edits)
        return [self._in_flight]

    def next_due(self) -> float | None:
        if self._in_flight is not None or self._latest is None or self._latest == self._shown:
            return None
        due = self._last_sent + self.min_interval if self._posted else -math.inf
        if self._retry_at is not None:
            due = max(due, self._retry_at)
        return due

    def sent(self, now: float) -> list[BoardAction]:
        if self._in_flight is None:
            return []
        self._shown = self._in_flight.content
        self._posted = True
        self._in_flight = None
        return self.tick(now)

    def failed(self, now: float) -> list[BoardAction]:
        """The post or edit failed: the newest content is tried again after ``retry_s``."""
        self._now = max(self._now, now)
        if self._in_flight is None:
            return []
        self._in_flight = None
        self._retry_at = self._now + self.retry_s
        return []

