"""A run's status in Matrix: the events of SPEC 8.1, and the batcher that sends them.

Two parts, both pure (no I/O, no clock):

- **The events.** Every custom event type is named once below, and every
  content is built by one function here, so the wire format lives in one
  place. Each content carries ``timestamp`` (RFC 3339 UTC, from the wall
  time the caller passes) and holds integers only: Matrix's canonical JSON
  has no floats and Synapse refuses an event holding one, so a float
  anywhere is a :class:`TypeError` at build time, naming where it is, never
  a refused send later. An output over :data:`OUTPUT_LIMIT` bytes is sent
  as ``{summary, size, truncated: true}``; the node keeps the whole.

- **The batcher** (:class:`Batcher`, in the style of ``bot/streaming.py``:
  inputs and ``now`` in, actions out). Logical events produced within
  ``batch_interval_ms`` go out together: a window of one as its own type,
  of several as one ``cis.dag.batch``, split to keep each event's content
  under :data:`MAX_CONTENT_BYTES`. One send is in flight at a time, and a
  failed one is retried as it was (same transaction id, same events), so
  the room's order is the order of production and a send that did reach
  the homeserver before failing is not posted twice.

The events of several nodes (SPEC 8.3: assignment, claim, result, revocation,
the run's coordinator) are named and built at the end of this module, with a
parser that never raises; ``dag/cluster.py`` gives them meaning.

Nothing is lost while Matrix is away, and memory stays bounded without
dropping anything that matters: waiting events pile up in the queue, but a
task's intermediate status (``pending``, ``running``, ``blocked``) replaces
any of its earlier intermediate statuses still waiting. What the queue can
hold is then bounded by the runs themselves, not by how long Matrix is down:
a few run events per run, per task at most one waiting intermediate status,
its final status, its output (at most :data:`OUTPUT_LIMIT` bytes) and its
blocked/recovered pairs. Run events, final statuses, outputs and session
events are never coalesced or dropped.

Producers never wait on Matrix: :meth:`Batcher.put` appends to a queue and
returns (no ``await``). On a node the run actors write their events to the
store's outbox and poke the broadcaster without waiting
(``dag/actors/broadcast.py``); only the broadcaster's own task waits on the
homeserver, and a failure there only delays the queue. A caller that reads
:attr:`Batcher.replaced` must empty it as it goes.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "BATCH",
    "CLUSTER_EVENT_TYPES",
    "INPUT_INLINE_LIMIT",
    "UPLOAD_LIMIT",
    "RESULT_INLINE_LIMIT",
    "RUN_COORDINATOR",
    "RUN_SPEC",
    "RunSpec",
    "SpecTooLarge",
    "parse_run_spec",
    "run_spec",
    "dag_toml",
    "TASK_ASSIGNED",
    "TASK_CLAIMED",
    "TASK_RESULT",
    "TASK_REVOKED",
    "Assigned",
    "Claimed",
    "ClusterEvent",
    "Coordinator",
    "Result",
    "Revoked",
    "TaskInput",
    "parse_cluster_event",
    "run_coordinator_content",
    "task_assigned",
    "task_input_body",
    "parse_task_input",
    "task_claimed",
    "task_result",
    "task_revoked",
    "FINAL_TASK_STATUSES",
    "MAX_CONTENT_BYTES",
    "OUTPUT_LIMIT",
    "RUN_CANCELLED",
    "RUN_COMPLETED",
    "RUN_CREATED",
    "RUN_EVENTS",
    "RUN_FAILED",
    "RUN_PAUSED",
    "RUN_STARTED",
    "SESSION_BLOCKED",
    "SESSION_RECOVERED",
    "STATUS_EVENT_TYPES",
    "TASK_OUTPUT",
    "TASK_STATUS",
    "Batcher",
    "LogicalEvent",
    "Progress",
    "SendEvent",
    "canonical_size",
    "check_integers",
    "rfc3339",
    "run_created",
    "run_event",
    "session_blocked",
    "session_recovered",
    "task_output",
    "task_status",
    "unpack",
]

# -- wire names (SPEC 8.1) ------------------------------------------------------

RUN_CREATED = "cis.dag.run.created"
RUN_STARTED = "cis.dag.run.started"
RUN_COMPLETED = "cis.dag.run.completed"
RUN_FAILED = "cis.dag.run.failed"
RUN_PAUSED = "cis.dag.run.paused"
#: Not in SPEC 8.1's list, which names no event for the run status
#: ``cancelled``; without one a cancelled run would never show as ended.
RUN_CANCELLED = "cis.dag.run.cancelled"
TASK_STATUS = "cis.dag.task.status"
TASK_OUTPUT = "cis.dag.task.output"
SESSION_BLOCKED = "cis.dag.session.blocked"
SESSION_RECOVERED = "cis.dag.session.recovered"
BATCH = "cis.dag.batch"

#: The run events built by :func:`run_event` (``created`` has its own builder).
RUN_EVENTS = frozenset({RUN_STARTED, RUN_COMPLETED, RUN_FAILED, RUN_PAUSED, RUN_CANCELLED})
#: Every logical event type (what a ``cis.dag.batch`` may hold).
STATUS_EVENT_TYPES = frozenset(
    {RUN_CREATED, *RUN_EVENTS, TASK_STATUS, TASK_OUTPUT, SESSION_BLOCKED, SESSION_RECOVERED}
)

#: Task statuses after which the task moves no more (SPEC 8): never coalesced.
FINAL_TASK_STATUSES = frozenset({"completed", "failed", "skipped", "cancelled"})
#: Task statuses a later status of the same task may replace while waiting.
INTERMEDIATE_TASK_STATUSES = frozenset({"pending", "running", "blocked"})

#: An output longer than this (bytes of UTF-8) is sent as a summary.
OUTPUT_LIMIT = 10 * 1024
#: The summary of a long output: its head and tail, in bytes of UTF-8.
_SUMMARY_HEAD = 1536
_SUMMARY_TAIL = 512
#: A blocked session's output preview and reason, in characters.
_PREVIEW_CHARS = 1000
_REASON_CHARS = 1000

#: Most bytes of canonical JSON one event's content may take. Synapse refuses
#: an event over 65,536 bytes in all: the envelope (ids, sender, hashes,
#: signatures, about 1-2 KB) comes on top of the content.
MAX_CONTENT_BYTES = 60_000


# -- contents ---------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """How far a run is: tasks completed, in all, failed (integers)."""

    completed: int
    total: int
    failed: int = 0

    def to_json(self) -> dict[str, int]:
        return {"completed": self.completed, "total": self.total, "failed": self.failed}


@dataclass(frozen=True)
class LogicalEvent:
    """One status event as SPEC 8.1 names it: its type and content.

    Built by the functions below, which check the content (integers only,
    small enough to send alone); ``size`` is its canonical JSON size as an
    element of a batch (``{"type", "content"}``).
    """

    type: str
    content: Mapping[str, Any] = field(hash=False)
    size: int = field(default=0, compare=False)

    @property
    def run_id(self) -> str | None:
        value = self.content.get("run_id")
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "content": dict(self.content)}


def _event(event_type: str, content: dict[str, Any]) -> LogicalEvent:
    check_integers(content, event_type)
    size = canonical_size({"type": event_type, "content": content})
    # Every builder caps what it takes from outside, so this is a bug here,
    # not a property of a run.
    if size + _EMPTY_BATCH > MAX_CONTENT_BYTES:
        raise ValueError(f"{event_type}: content of {size} bytes does not fit in one event")
    return LogicalEvent(event_type, content, size)


def run_created(
    run_id: str, dag_name: str, source_file: str, max_workers: int, federate: bool, *, at: datetime
) -> LogicalEvent:
    return _event(
        RUN_CREATED,
        {
            "run_id": run_id,
            "dag_name": dag_name,
            "source_file": _cap(source_file, 1000),
            "max_workers": max_workers,
            "federate": federate,
            "timestamp": rfc3339(at),
        },
    )


def run_event(event_type: str, run_id: str, dag_name: str, progress: Progress, *, at: datetime) -> LogicalEvent:
    """``cis.dag.run.started`` / ``.completed`` / ``.failed`` / ``.paused`` (/ ``.cancelled``)."""
    if event_type not in RUN_EVENTS:
        raise ValueError(f"{event_type!r} is not a run event; use one of {sorted(RUN_EVENTS)}")
    return _event(
        event_type, {"run_id": run_id, "dag_name": dag_name, "progress": progress.to_json(), "timestamp": rfc3339(at)}
    )


def task_status(
    run_id: str,
    task_id: str,
    status: str,
    *,
    agent_type: str | None,
    session_id: str,
    attempt: int,
    progress: Progress,
    at: datetime,
) -> LogicalEvent:
    """``cis.dag.task.status``; ``agent_type`` is None for a command task."""
    if status not in FINAL_TASK_STATUSES | INTERMEDIATE_TASK_STATUSES:
        raise ValueError(f"{status!r} is not a task status (SPEC 8)")
    return _event(
        TASK_STATUS,
        {
            "run_id": run_id,
            "task_id": task_id,
            "status": status,
            "agent_type": agent_type,
            "session_id": session_id,
            "attempt": attempt,
            "progress": progress.to_json(),
            "timestamp": rfc3339(at),
        },
    )


def task_output(run_id: str, task_id: str, output: str, *, at: datetime) -> LogicalEvent:
    """``cis.dag.task.output``: the output, or past :data:`OUTPUT_LIMIT` bytes
    ``{summary, size, truncated: true}`` (the whole is served by the node's API)."""
    content: dict[str, Any] = {"run_id": run_id, "task_id": task_id}
    encoded = output.encode("utf-8", "replace")
    if len(encoded) <= OUTPUT_LIMIT:
        content["output"] = encoded.decode("utf-8")
    else:
        head = encoded[:_SUMMARY_HEAD].decode("utf-8", "ignore")
        tail = encoded[-_SUMMARY_TAIL:].decode("utf-8", "ignore")
        content.update(summary=f"{head}\n…\n{tail}", size=len(encoded), truncated=True)
    content["timestamp"] = rfc3339(at)
    return _event(TASK_OUTPUT, content)


def session_blocked(
    run_id: str, task_id: str, session_id: str, reason: str, output_preview: str, *, at: datetime
) -> LogicalEvent:
    return _event(
        SESSION_BLOCKED,
        {
            "run_id": run_id,
            "task_id": task_id,
            "session_id": session_id,
            "reason": _cap(reason, _REASON_CHARS),
            "output_preview": _cap(output_preview, _PREVIEW_CHARS),
            "timestamp": rfc3339(at),
        },
    )


def session_recovered(run_id: str, task_id: str, session_id: str, *, at: datetime) -> LogicalEvent:
    return _event(
        SESSION_RECOVERED, {"run_id": run_id, "task_id": task_id, "session_id": session_id, "timestamp": rfc3339(at)}
    )


def unpack(event_type: str, content: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The logical events one room event carries: a batch's, in order, or the
    event itself when it is one. Never raises: a malformed batch entry, or an
    unknown type, is left out (the room may hold anything anyone sent)."""
    if event_type in STATUS_EVENT_TYPES:
        return [(event_type, content)]
    if event_type != BATCH:
        return []
    events = content.get("events")
    if not isinstance(events, list):
        return []
    unpacked: list[tuple[str, Mapping[str, Any]]] = []
    for item in events:
        if not isinstance(item, Mapping):
            continue
        inner_type, inner = item.get("type"), item.get("content")
        if isinstance(inner_type, str) and inner_type in STATUS_EVENT_TYPES and isinstance(inner, Mapping):
            unpacked.append((inner_type, inner))
    return unpacked


def rfc3339(at: datetime) -> str:
    """``at`` as RFC 3339 UTC with milliseconds (``2026-12-02T10:30:01.250Z``)."""
    if at.tzinfo is None:
        raise ValueError("timestamps need an aware datetime (datetime.now(UTC)); a naive one has no zone")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_integers(value: object, where: str = "content") -> None:
    """:class:`TypeError` naming the first float (or non-JSON value) in ``value``."""
    if isinstance(value, float):
        raise TypeError(f"{where}: {value!r} is a float; Matrix events hold integers only (round it)")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            check_integers(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_integers(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not JSON")


def canonical_size(value: object) -> int:
    """Bytes of ``value`` as canonical JSON (sorted keys, no spaces, UTF-8),
    the form the homeserver measures an event in."""
    return len(_CANONICAL.encode(value).encode("utf-8"))


#: json.dumps's encoder for canonical JSON, made once (every status event is measured).
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
#: What a batch adds around its events.
_EMPTY_BATCH = canonical_size({"events": []})


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the batcher ----------------------------------------------------------------------


@dataclass(frozen=True)
class SendEvent:
    """Send one room event: ``client.send(room, event_type, content, txn_id)``,
    then report :meth:`Batcher.sent` or :meth:`Batcher.failed` with ``txn_id``.
    ``events`` are the logical events it carries."""

    txn_id: str
    event_type: str
    content: Mapping[str, Any] = field(hash=False)
    events: tuple[LogicalEvent, ...] = field(hash=False)


class Batcher:
    """The pure machine between a node's runs and its status room.

    :meth:`put` a logical event as it happens; call :meth:`tick` when
    :meth:`next_due` says; perform each :class:`SendEvent` returned and report
    its end with :meth:`sent` or :meth:`failed`. Times are seconds on any
    monotonic clock. ``txn_prefix`` must differ between processes (e.g. the
    node id and its start time): transaction ids are ``<prefix>.<n>``.
    """

    def __init__(
        self,
        txn_prefix: str,
        *,
        batch_interval_ms: int = 500,
        max_content_bytes: int = MAX_CONTENT_BYTES,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        if batch_interval_ms < 0:
            raise ValueError("batch_interval_ms must not be negative")
        if max_content_bytes < 1024:
            raise ValueError("max_content_bytes must be at least 1024")
        self.txn_prefix = txn_prefix
        self.interval = batch_interval_ms / 1000
        self.max_content_bytes = max_content_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._queue: deque[_Waiting] = deque()
        #: (run_id, task_id) -> the entry of its waiting intermediate status.
        self._intermediate: dict[tuple[str, str], _Waiting] = {}
        self._waiting = 0
        self._dropped = 0
        self._in_flight: SendEvent | None = None
        #: A failed send, waiting to be tried again as it was.
        self._retry: SendEvent | None = None
        self._retry_at: float | None = None
        self._failures = 0
        self._window_end: float | None = None
        self._sent_count = 0
        self._now = -math.inf
        #: Logical events replaced by a later status of their task (never sent).
        self.coalesced = 0
        #: Logical events the homeserver has accepted.
        self.delivered = 0
        #: Sends that failed (each retried).
        self.failures = 0
        #: The events coalesced away since the caller last emptied this list
        #: (a broadcaster feeding from a durable queue marks them done: a
        #: later status of their task, still queued, says what they said).
        self.replaced: list[LogicalEvent] = []

    @property
    def backlog(self) -> int:
        """Logical events not yet accepted by the homeserver (a send in flight
        or waiting for its retry included): the node's broadcast backlog metric."""
        held = self._in_flight or self._retry
        return self._waiting + (len(held.events) if held is not None else 0)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight."""
        return self.backlog == 0

    def put(self, event: LogicalEvent, now: float) -> list[SendEvent]:
        """A logical event happened. Never blocks, never fails."""
        self._clock(now)
        entry = _Waiting(event)
        # The first event waiting opens a window; what comes within it goes
        # out with it (a replaced status keeps its window).
        opens_window = self._waiting == 0
        key = _coalescing_key(event)
        if key is not None:
            earlier = self._intermediate.pop(key, None)
            if earlier is not None:
                # The later status says all a watcher needs; the earlier
                # one's place in the queue is simply left empty, so the
                # order of everything else is unchanged.
                earlier.dropped = True
                self.replaced.append(earlier.event)
                self._waiting -= 1
                self._dropped += 1
                self.coalesced += 1
                if self._dropped > max(64, self._waiting):
                    # Tombstones would pile up over a long outage: rebuild
                    # the queue without them (amortised, as a list grows).
                    self._queue = deque(w for w in self._queue if not w.dropped)
                    self._dropped = 0
            if event.content.get("status") in INTERMEDIATE_TASK_STATUSES:
                self._intermediate[key] = entry
        if opens_window:
            self._window_end = self._now + self.interval
        self._queue.append(entry)
        self._waiting += 1
        return self._due()

    def tick(self, now: float) -> list[SendEvent]:
        self._clock(now)
        return self._due()

    def next_due(self) -> float | None:
        """When :meth:`tick` has something to send (None: nothing, or a send in flight)."""
        if self._in_flight is not None:
            return None
        if self._retry_at is not None:
            return self._retry_at
        if self._waiting == 0:
            return None
        return self._window_end

    def sent(self, txn_id: str, now: float) -> list[SendEvent]:
        """The homeserver accepted the send ``txn_id``."""
        self._clock(now)
        if self._in_flight is None or self._in_flight.txn_id != txn_id:
            return []
        self.delivered += len(self._in_flight.events)
        self._in_flight = None
        self._failures = 0
        self._retry_at = None
        return self._due()

    def failed(self, txn_id: str, now: float, retry_after_s: float | None = None) -> list[SendEvent]:
        """The send ``txn_id`` failed (after the client's own retries): it is
        tried again, unchanged, after a growing pause (or the one the
        homeserver asked for)."""
        self._clock(now)
        if self._in_flight is None or self._in_flight.txn_id != txn_id:
            return []
        self._failures += 1
        self.failures += 1
        pause = min(self.retry_max_s, self.retry_initial_s * 2 ** (self._failures - 1))
        if retry_after_s is not None:
            pause = max(pause, retry_after_s)
        self._retry_at = self._now + pause
        self._retry, self._in_flight = self._in_flight, None
        return []

    # -- decisions ---------------------------------------------------------------

    def _clock(self, now: float) -> None:
        self._now = max(self._now, now)

    def _compact(self) -> None:
        while self._queue and self._queue[0].dropped:
            self._queue.popleft()
            self._dropped -= 1

    def _due(self) -> list[SendEvent]:
        if self._in_flight is not None:
            return []
        if self._retry_at is not None:
            if self._now < self._retry_at:
                return []
            self._retry_at = None
            self._in_flight, self._retry = self._retry, None
            assert self._in_flight is not None
            return [self._in_flight]
        if self._waiting == 0 or self._window_end is None or self._now < self._window_end:
            return []
        self._in_flight = self._take()
        self._compact()
        if self._waiting:
            # Left over because the event was full (a busy window, or the
            # backlog of an outage): due as soon as this send is done.
            self._window_end = self._now
        return [self._in_flight]

    def _take(self) -> SendEvent:
        """The next send: as many waiting events, in order, as fit in one event."""
        taken: list[LogicalEvent] = []
        size = canonical_size({"events": []})
        while self._queue:
            entry = self._queue[0]
            if entry.dropped:
                self._queue.popleft()
                self._dropped -= 1
                continue
            # One more element of the list costs its size and a comma.
            cost = entry.event.size + (1 if taken else 0)
            if taken and size + cost > self.max_content_bytes:
                break
            self._queue.popleft()
            key = _coalescing_key(entry.event)
            if key is not None and self._intermediate.get(key) is entry:
                # Once taken it is no longer waiting: a later status is
                # sent after it rather than replacing it.
                del self._intermediate[key]
            taken.append(entry.event)
            self._waiting -= 1
            size += cost
        self._sent_count += 1
        txn_id = f"{self.txn_prefix}.{self._sent_count}"
        if len(taken) == 1:
            return SendEvent(txn_id, taken[0].type, dict(taken[0].content), tuple(taken))
        return SendEvent(txn_id, BATCH, {"events": [event.to_json() for event in taken]}, tuple(taken))


@dataclass
class _Waiting:
    event: LogicalEvent
    dropped: bool = False


def _coalescing_key(event: LogicalEvent) -> tuple[str, str] | None:
    if event.type != TASK_STATUS:
        return None
    run_id, task_id = event.content.get("run_id"), event.content.get("task_id")
    if not isinstance(run_id, str) or not isinstance(task_id, str):
        return None
    return (run_id, task_id)




# -- several nodes (SPEC 8.3): assignment, claims, results, takeover -----------------------
#
# Sent one per room event (never in a ``cis.dag.batch``): the order of claims
# in the timeline decides who runs a task, so each is its own event. Every
# content here comes from another node and may be anything: the parsers
# below return None for what does not fit, and never raise.

TASK_ASSIGNED = "cis.dag.task.assigned"
TASK_CLAIMED = "cis.dag.task.claimed"
#: The result of one attempt of a task, with its epoch (the coordinator counts it).
TASK_RESULT = "cis.dag.task.result"
#: The coordinator withdrew a task (its attempt was cancelled or timed out):
#: whatever runs it with an older epoch stops.
TASK_REVOKED = "cis.dag.task.revoked"
#: State event (state key: the run id, in the cluster room every run shares): who leads the run.
RUN_COORDINATOR = "cis.dag.run.coordinator"
#: The run itself, posted once by the node that received the confirm, so any
#: node can take it over: ``{run_id, dag_id, version, spec, owner, mode,
#: workers, node_id, timestamp}``; ``spec`` is the DAG file's TOML text
#: (:func:`dag_toml`), whose content version must be ``version``.
RUN_SPEC = "cis.dag.run.spec"
CLUSTER_EVENT_TYPES = frozenset({TASK_ASSIGNED, TASK_CLAIMED, TASK_RESULT, TASK_REVOKED, RUN_COORDINATOR})

#: Task inputs (prompt or command and upstream outputs) travel inside the
#: assignment up to this many bytes of canonical JSON; past it the
#: coordinator uploads them (:func:`task_input_body`) to the homeserver's
#: content repository and ``input_url`` is their ``mxc://`` URI, which the
#: worker downloads with its own account.
INPUT_INLINE_LIMIT = 32 * 1024
#: A result's output travels inline up to this many bytes; past it uploaded
#: the same way, ``output_url`` its ``mxc://`` URI.
RESULT_INLINE_LIMIT = 32 * 1024
#: The largest input or output uploaded (a node downloads no more); a longer
#: output is cut, with a marker, before it is uploaded.
UPLOAD_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class TaskInput:
    """What a worker needs to run a task: the prompt (agent task) or the argv
    (command task), and its upstream tasks' outputs."""

    prompt: str | None = None
    command: tuple[str, ...] | None = None
    upstream_outputs: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Assigned:
    """``cis.dag.task.assigned``: ``assigned_to`` None is an offer to any node (mode ``matrix``)."""

    run_id: str
    task_id: str
    assigned_to: str | None
    assigned_by: str
    agent_type: str | None
    upstream_tasks: tuple[str, ...]
    epoch: int
    attempt: int
    input: TaskInput | None  #: None: fetch ``input_url``
    input_url: str | None


@dataclass(frozen=True)
class Claimed:
    run_id: str
    task_id: str
    claimed_by: str
    epoch: int


@dataclass(frozen=True)
class Result:
    run_id: str
    task_id: str
    reported_by: str
    epoch: int
    outcome: str  #: ``completed`` or ``failed``
    output: str | None  #: None with ``output_url`` (too long to travel inline)
    output_url: str | None
    reason: str | None


@dataclass(frozen=True)
class Revoked:
    run_id: str
    task_id: str
    revoked_by: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class Coordinator:
    """``cis.dag.run.coordinator``: ``node_id`` leads the run from ``epoch`` on."""

    node_id: str
    epoch: int


def task_assigned(
    run_id: str,
    task_id: str,
    *,
    assigned_to: str | None,
    assigned_by: str,
    agent_type: str | None,
    upstream_tasks: Iterable[str],
    epoch: int,
    attempt: int,
    task_input: TaskInput,
    input_url: str,
    at: datetime,
) -> LogicalEvent:
    """``cis.dag.task.assigned``, with the input inline when it is small, else ``input_url``."""
    content: dict[str, Any] = {
        "run_id": run_id,
        "task_id": task_id,
        "assigned_to": assigned_to,
        "assigned_by": assigned_by,
        "agent_type": agent_type,
        "upstream_tasks": list(upstream_tasks),
        "epoch": epoch,
        "attempt": attempt,
        "timestamp": rfc3339(at),
    }
    inline = task_input_body(task_input)
    if canonical_size(inline) <= INPUT_INLINE_LIMIT:
        content.update(inline)
    else:
        content["input_url"] = input_url
    return _event(TASK_ASSIGNED, content)


def task_input_body(task_input: TaskInput) -> dict[str, Any]:
    """A task's input as JSON: inline in ``cis.dag.task.assigned``, or the
    document ``input_url`` names (:func:`parse_task_input` reads both)."""
    body: dict[str, Any] = {"upstream_outputs": dict(task_input.upstream_outputs)}
    if task_input.command is not None:
        body["command"] = list(task_input.command)
    else:
        body["prompt"] = task_input.prompt or ""
    return body


def parse_task_input(body: object) -> TaskInput | None:
    """The task input in ``body`` (see :func:`task_input_body`), or None. Never raises."""
    if not isinstance(body, Mapping):
        return None
    outputs = body.get("upstream_outputs")
    prompt, command = body.get("prompt"), body.get("command")
    if not isinstance(outputs, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()):
        return None
    if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        return TaskInput(command=tuple(command), upstream_outputs=dict(outputs))
    if isinstance(prompt, str):
        return TaskInput(prompt=prompt, upstream_outputs=dict(outputs))
    return None


def task_claimed(run_id: str, task_id: str, claimed_by: str, epoch: int, *, at: datetime) -> LogicalEvent:
    return _event(
        TASK_CLAIMED,
        {"run_id": run_id, "task_id": task_id, "claimed_by": claimed_by, "epoch": epoch, "timestamp": rfc3339(at)},
    )


def task_result(
    run_id: str,
    task_id: str,
    *,
    reported_by: str,
    epoch: int,
    outcome: str,
    output: str,
    output_url: str,
    reason: str | None,
    at: datetime,
) -> LogicalEvent:
    """``cis.dag.task.result``: the output inline up to :data:`RESULT_INLINE_LIMIT` bytes, else ``output_url``."""
    if outcome not in ("completed", "failed"):
        raise ValueError(f"{outcome!r} is not a result outcome (completed or failed)")
    content: dict[str, Any] = {
        "run_id": run_id,
        "task_id": task_id,
        "reported_by": reported_by,
        "epoch": epoch,
        "outcome": outcome,
        "reason": None if reason is None else _cap(reason, _REASON_CHARS),
        "timestamp": rfc3339(at),
    }
    size = len(output.encode("utf-8", "replace"))
    if size <= RESULT_INLINE_LIMIT:
        content["output"] = output
    else:
        content.update(output_url=output_url, size=size)
    return _event(TASK_RESULT, content)


def task_revoked(run_id: str, task_id: str, revoked_by: str, epoch: int, reason: str, *, at: datetime) -> LogicalEvent:
    return _event(
        TASK_REVOKED,
        {
            "run_id": run_id,
            "task_id": task_id,
            "revoked_by": revoked_by,
            "epoch": epoch,
            "reason": _cap(reason, _REASON_CHARS),
            "timestamp": rfc3339(at),
        },
    )


def run_coordinator_content(node_id: str, epoch: int) -> dict[str, Any]:
    """``cis.dag.run.coordinator`` (state key: the run id)."""
    return {"node_id": node_id, "epoch": epoch}


class SpecTooLarge(ValueError):
    """A run's spec does not fit in one ``cis.dag.run.spec`` event."""


def dag_toml(document: Mapping[str, Any]) -> str:
    """A DAG document (``DagSpec.to_mapping()``) as the TOML text of a DAG file
    that :func:`.spec.parse_dag` reads back to the same content (and version).
    Values are strings, integers, booleans and lists of strings; None is left out."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in document.items() if key != "tasks" and value is not None]
    for task in document.get("tasks", ()):
        lines += ["", "[[tasks]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in task.items() if value is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A TOML basic string: JSON's escapes are TOML's, but for DEL, which
        # TOML wants escaped and JSON leaves alone.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} has no place in a DAG file")


@dataclass(frozen=True)
class RunSpec:
    """``cis.dag.run.spec``: what a node needs to lead (or take over) a run."""

    run_id: str
    dag_id: str
    version: str
    spec: str  #: the DAG file's TOML text
    owner: str | None
    mode: str  #: ``matrix`` or ``federation``
    workers: tuple[str, ...]
    node_id: str  #: the node that posted it (its first coordinator)


def run_spec(
    run_id: str,
    dag_id: str,
    version: str,
    spec: str,
    *,
    owner: str | None,
    mode: str,
    workers: Iterable[str],
    node_id: str,
    at: datetime,
) -> dict[str, Any]:
    """The content of ``cis.dag.run.spec``. :class:`SpecTooLarge` when it would
    not fit in one event (:data:`MAX_CONTENT_BYTES`): the run is refused at
    its confirm, never half-posted."""
    content: dict[str, Any] = {
        "run_id": run_id,
        "dag_id": dag_id,
        "version": version,
        "spec": spec,
        "owner": owner,
        "mode": mode,
        "workers": list(workers),
        "node_id": node_id,
        "timestamp": rfc3339(at),
    }
    check_integers(content, RUN_SPEC)
    size = canonical_size(content)
    if size > MAX_CONTENT_BYTES:
        raise SpecTooLarge(
            f"the DAG is {size} bytes as a cluster event, over the {MAX_CONTENT_BYTES} a Matrix event may hold;"
            " shorten its prompts (upstream outputs travel separately) or split it into several DAGs"
        )
    return content


def parse_run_spec(content: object) -> RunSpec | None:
    """The :class:`RunSpec` a ``cis.dag.run.spec`` content says, or None. Never raises
    (the spec inside is checked by whoever uses it: :func:`.spec.parse_dag`)."""
    if not isinstance(content, Mapping):
        return None
    run_id, dag_id, version = _text(content, "run_id"), _text(content, "dag_id"), _text(content, "version")
    node_id, mode, spec = _text(content, "node_id"), content.get("mode"), content.get("spec")
    owner, workers = content.get("owner"), content.get("workers", [])
    if run_id is None or dag_id is None or version is None or node_id is None:
        return None
    if mode not in ("matrix", "federation") or not isinstance(spec, str):
        return None
    if not (owner is None or isinstance(owner, str)):
        return None
    if not isinstance(workers, list) or not all(isinstance(w, str) and w for w in workers):
        return None
    return RunSpec(run_id, dag_id, version, spec, owner, str(mode), tuple(workers), node_id)


ClusterEvent = Assigned | Claimed | Result | Revoked | Coordinator


def parse_cluster_event(event_type: str, content: object) -> ClusterEvent | None:
    """The cluster event a room event is, or None (unknown type, or malformed). Never raises."""
    if not isinstance(content, Mapping):
        return None
    try:
        if event_type == RUN_COORDINATOR:
            node, epoch = _text(content, "node_id"), _count(content, "epoch")
            return None if node is None or epoch is None else Coordinator(node, epoch)
        run_id, task_id, epoch = _text(content, "run_id"), _text(content, "task_id"), _count(content, "epoch")
        if run_id is None or task_id is None or epoch is None:
            return None
        if event_type == TASK_ASSIGNED:
            return _parse_assigned(content, run_id, task_id, epoch)
        if event_type == TASK_CLAIMED:
            by = _text(content, "claimed_by")
            return None if by is None else Claimed(run_id, task_id, by, epoch)
        if event_type == TASK_RESULT:
            by, outcome = _text(content, "reported_by"), content.get("outcome")
            output, url, reason = content.get("output"), _text(content, "output_url"), content.get("reason")
            if by is None or outcome not in ("completed", "failed"):
                return None
            if not isinstance(output, str):
                if url is None:
                    return None
                output = None
            return Result(
                run_id, task_id, by, epoch, str(outcome), output, url, reason if isinstance(reason, str) else None
            )
        if event_type == TASK_REVOKED:
            by, reason = _text(content, "revoked_by"), content.get("reason")
            if by is None:
                return None
            return Revoked(run_id, task_id, by, epoch, reason if isinstance(reason, str) else "")
    except Exception:  # noqa: BLE001 - hostile input must never take a node down
        return None
    return None


def _parse_assigned(content: Mapping[str, Any], run_id: str, task_id: str, epoch: int) -> Assigned | None:
    by, attempt = _text(content, "assigned_by"), _count(content, "attempt")
    to, agent = content.get("assigned_to"), content.get("agent_type")
    upstream = content.get("upstream_tasks")
    if by is None or attempt is None:
        return None
    if not (to is None or (isinstance(to, str) and to)) or not (agent is None or isinstance(agent, str)):
        return None
    if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
        return None
    url = _text(content, "input_url")
    task_input = parse_task_input(content)
    if task_input is None and url is None:
        return None
    return Assigned(run_id, task_id, to, by, agent, tuple(upstream), epoch, attempt, task_input, url)


def _text(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) and value else None


def _count(content: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer (``True`` is not one, though Python says it is an int)."""
    value = content.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
