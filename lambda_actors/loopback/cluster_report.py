"""What a run of several nodes did, read from the cluster room (issue 15's figures).

A pure fold (no I/O, no clock): the cluster room's timeline (type, content,
sender, ``origin_server_ts``, state key), in timeline order, and the
harness's own log of what it did to the nodes (SIGKILL, restart, pause,
resume; homeserver down and up, all in wall-clock milliseconds, the clock
Synapse stamps events with on the same machine) in; a
:class:`ClusterReport` out. Node logs are not read: the room is the record
every node folds, so the report folds it with the same :class:`~lambda_actors.dag.cluster.Ledger`
(and parses it with the same :func:`~lambda_actors.dag.status.parse_cluster_event`).

The figures:

- ``takeover_p50_s`` / ``takeover_p99_s``: for every task a node held
  (claimed, or assigned to it and not yet claimed) when the harness
  SIGKILLed (or paused) it, the time from the kill to the first accepted
  claim of a higher epoch of that task, by any node (the killed one,
  restarted, included: the task then started again). A task its node
  resumed after a restart at the same epoch (its result, same epoch,
  after the kill) is counted in ``resumed_after_restart`` instead; one that
  ended otherwise first (its result was already on its way) is neither.
- ``tasks_lost``: tasks of the counted runs without one final status
  (``cis.dag.task.status`` final, from the run's coordinator, that the
  ledger accepts); ``runs_unended``: counted runs without an end
  (``cis.dag.run.completed|failed|cancelled`` from the coordinator).
- ``tasks_completed_twice``: tasks the record counts complete more than
  once: two completions written by the run's coordinator (as the ledger
  named it when each was written), or a run whose end says more tasks
  completed than have a completion.
- ``stale_results_ignored``: results of an older epoch (the ledger's count).
- ``false_takeovers``: reassignments (a higher epoch of a task a node
  held, with no failure or revocation between: only a takeover moves a
  task so) away from a node the harness had not killed or paused within
  ``kill_window_s`` before (or had, but it was back more than
  :data:`BACK_GRACE_S` before), and likewise runs taken over from such a
  coordinator; ``reassignments`` and ``coordinator_takeovers`` count them all.
- ``runs_completed``, ``node_kills``, ``homeserver_restarts``,
  ``claims_lost`` (claims that lost a race in the timeline) and
  ``attempts_per_task``: how many times each task was started (distinct
  claimed epochs) -> how many tasks.

Which runs count: those the harness submitted (``runs``: run id -> task
ids), or, without it, every run whose spec (``cis.dag.run.spec``) or
coordinator is in the room. A run's task ids come from ``runs``, else its
spec event, else its assignments. The identity rule of the nodes applies:
with ``accounts`` (Matrix user id -> node id), an event naming a node
(``claimed_by``, ``reported_by``, ...) counts only when that node's account
sent it (``forged_ignored`` counts the others).
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..dag.cluster import Accepted, Ledger, TaskRecord, task_ended
from ..dag.status import (
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_COORDINATOR,
    RUN_FAILED,
    TASK_ASSIGNED,
    TASK_CLAIMED,
    TASK_RESULT,
    TASK_REVOKED,
    TASK_STATUS,
    Assigned,
    Claimed,
    ClusterEvent,
    Coordinator,
    Result,
    Revoked,
    parse_cluster_event,
)

__all__ = [
    "GOAL_TAKEOVER_P99_S",
    "RUN_SPEC",
    "ClusterReport",
    "HarnessEvent",
    "TimelineEvent",
    "cluster_report",
    "percentile",
]

#: The spec of a run, posted by its coordinator so any node can take it over.
RUN_SPEC = "cis.dag.run.spec"
RUN_ENDS = {RUN_COMPLETED: "completed", RUN_FAILED: "failed", RUN_CANCELLED: "cancelled"}
#: Issue 15's goal for the takeover time.
GOAL_TAKEOVER_P99_S = 15.0
#: A reassignment away from a node is justified when the harness killed or
#: paused that node at most this long before: detection takes up to the
#: delayed ``offline`` (10 s) plus the homeserver-restart grace (10 s).
KILL_WINDOW_S = 60.0

#: A node back (restarted, resumed) this long may still be declared dead
#: for its old process: the offline it left fires up to 10 s after its death.
BACK_GRACE_S = 15.0

HarnessKind = Literal["kill", "restart", "pause", "resume", "homeserver_down", "homeserver_up"]


@dataclass(frozen=True)
class TimelineEvent:
    """One event of the cluster room, as the homeserver serves it."""

    type: str
    content: Mapping[str, Any] = field(hash=False)
    sender: str
    ts_ms: int  #: ``origin_server_ts``
    state_key: str | None = None
    event_id: str = ""

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> TimelineEvent | None:
        """From a client-API event (a ``/messages`` chunk entry); None when it is not one. Never raises."""
        kind, sender, ts, content = raw.get("type"), raw.get("sender"), raw.get("origin_server_ts"), raw.get("content")
        if not (isinstance(kind, str) and isinstance(sender, str) and isinstance(ts, int) and isinstance(content, Mapping)):
            return None
        key, event_id = raw.get("state_key"), raw.get("event_id")
        return cls(kind, content, sender, ts, key if isinstance(key, str) else None, event_id if isinstance(event_id, str) else "")


@dataclass(frozen=True)
class HarnessEvent:
    """Something the harness did, at wall-clock ``at_ms``."""

    kind: HarnessKind
    at_ms: int
    node_id: str | None = None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` 0.99 for p99); None for no values."""
    # The chaos run's own rule (loopback/chaos.py), imported lazily: that
    # module pulls in the bot, which a pure fold has no need of.
    from .chaos import percentile as nearest_rank

    return nearest_rank(list(values), fraction)


@dataclass
class ClusterReport:
    """The figures of one run of several nodes; :meth:`as_json` is the ``--json`` object."""

    runs: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    runs_cancelled: int = 0
    runs_unended: int = 0
    tasks: int = 0
    tasks_lost: int = 0
    tasks_completed_twice: int = 0
    stale_results_ignored: int = 0
    false_takeovers: int = 0
    reassignments: int = 0
    #: Runs taken over by another node (``cis.dag.run.coordinator`` of a higher epoch).
    coordinator_takeovers: int = 0
    claims_lost: int = 0
    node_kills: int = 0
    node_pauses: int = 0
    homeserver_restarts: int = 0
    takeover_p50_s: float | None = None
    takeover_p99_s: float | None = None
    takeover_max_s: float | None = None
    takeover_samples: int = 0
    #: Tasks held by a killed node and started again by it, same epoch, once restarted.
    resumed_after_restart: int = 0
    attempts_per_task: dict[str, int] = field(default_factory=dict)
    forged_ignored: int = 0
    #: Traces of each problem, for the reader of report.json.
    lost: list[str] = field(default_factory=list)
    completed_twice: list[str] = field(default_factory=list)
    false_takeover_traces: list[str] = field(default_factory=list)
    unended: list[str] = field(default_factory=list)
    takeovers_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    def goals(self) -> dict[str, bool]:
        takeover_ok = (self.takeover_p99_s is None and self.takeover_samples == 0) or (
            self.takeover_p99_s is not None and self.takeover_p99_s <= GOAL_TAKEOVER_P99_S
        )
        return {
            "takeover_p99_s<=15": takeover_ok,
            "tasks_lost==0": self.tasks_lost == 0 and self.runs_unended == 0,
            "tasks_completed_twice==0": self.tasks_completed_twice == 0,
            "false_takeovers==0": self.false_takeovers == 0,
        }

    @property
    def ok(self) -> bool:
        return all(self.goals().values())

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["goals"] = self.goals()
        data["ok"] = self.ok
        return data

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) pairs for a table."""

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} s"

        attempts = ", ".join(f"{k}×: {v}" for k, v in sorted(self.attempts_per_task.items(), key=lambda kv: int(kv[0])))
        return [
            ("runs", f"{self.runs} ({self.runs_completed} completed, {self.runs_failed} failed, "
                     f"{self.runs_cancelled} cancelled, {self.runs_unended} without an end)"),
            ("tasks", str(self.tasks)),
            ("tasks lost", str(self.tasks_lost) + (f"  {' '.join(self.lost[:5])}" if self.lost else "")),
            ("tasks completed twice", str(self.tasks_completed_twice)),
            ("takeover p50 / p99 / max", f"{seconds(self.takeover_p50_s)} / {seconds(self.takeover_p99_s)} / "
                                         f"{seconds(self.takeover_max_s)} ({self.takeover_samples} takeovers)"),
            ("resumed by their restarted node", str(self.resumed_after_restart)),
            ("false takeovers", f"{self.false_takeovers} (of {self.reassignments} reassignments "
                                f"and {self.coordinator_takeovers} runs taken over)"),
            ("stale results ignored", str(self.stale_results_ignored)),
            ("claims lost in a race", str(self.claims_lost)),
            ("node kills / pauses", f"{self.node_kills} / {self.node_pauses}"),
            ("homeserver restarts", str(self.homeserver_restarts)),
            ("starts per task", attempts or "-"),
            ("took", f"{self.duration_s:.0f} s"),
        ]


@dataclass
class _Held:
    """A task a node held when the harness killed it, waiting for its takeover."""

    run_id: str
    task_id: str
    node_id: str
    epoch: int
    killed_ms: int


@dataclass
class _Run:
    ledger: Ledger
    ended: str | None = None
    end_progress: Mapping[str, Any] | None = None
    spec_tasks: tuple[str, ...] | None = None
    #: task -> completions written by the coordinator of the moment.
    completions: Counter[str] = field(default_factory=Counter)
    #: task -> epochs in which a claim won (each a start of the task).
    starts: dict[str, set[int]] = field(default_factory=dict)


def cluster_report(
    timeline: Iterable[TimelineEvent],
    harness: Iterable[HarnessEvent] = (),
    *,
    runs: Mapping[str, Sequence[str]] | None = None,
    accounts: Mapping[str, str] | None = None,
    kill_window_s: float = KILL_WINDOW_S,
) -> ClusterReport:
    """Fold the cluster room's ``timeline`` (in timeline order) and the ``harness`` log into the figures."""
    report = ClusterReport()
    log = sorted(harness, key=lambda h: h.at_ms)
    folded: dict[str, _Run] = {}
    held: list[_Held] = []
    samples: list[float] = []
    next_log = 0

    def run_of(run_id: str) -> _Run:
        state = folded.get(run_id)
        if state is None:
            state = folded[run_id] = _Run(Ledger(run_id, "", coordinator_epoch=0))
            for task_id in (runs or {}).get(run_id, ()):
                state.ledger.tasks.setdefault(task_id, TaskRecord(task_id))
        return state

    def node_of(sender: str) -> str:
        return accounts.get(sender, sender) if accounts is not None else sender

    def killed_recently(node_id: str, at_ms: int) -> bool:
        """Whether the harness had taken ``node_id`` away shortly before: killed
        or paused in the window, and not back, or back only just (its death
        may still be learnt from the offline its old process left)."""
        low = at_ms - kill_window_s * 1000
        for down in log:
            if down.kind not in ("kill", "pause") or down.node_id != node_id or not low <= down.at_ms <= at_ms:
                continue
            back = next((h for h in log if h.kind in ("restart", "resume") and h.node_id == node_id and h.at_ms > down.at_ms), None)
            if back is None or back.at_ms > at_ms or at_ms - back.at_ms <= BACK_GRACE_S * 1000:
                return True
        return False

    for event in timeline:
        # Kills up to this event's time: note what the node held then.
        while next_log < len(log) and log[next_log].at_ms <= event.ts_ms:
            _note_kill(log[next_log], folded, held)
            next_log += 1
        if runs is not None and _run_id(event) not in runs:
            continue  # another run's: none of its figures count
        node = node_of(event.sender)
        if event.type == RUN_SPEC:
            run_id = event.content.get("run_id")
            if isinstance(run_id, str) and run_id:
                state = run_of(run_id)
                state.spec_tasks = _spec_tasks(event.content.get("spec"))
                for task_id in state.spec_tasks or ():
                    state.ledger.tasks.setdefault(task_id, TaskRecord(task_id))
            continue
        if event.type in RUN_ENDS:
            run_id = event.content.get("run_id")
            ending = folded.get(run_id) if isinstance(run_id, str) else None
            if ending is not None and ending.ended is None and node == ending.ledger.coordinator:
                ending.ended = RUN_ENDS[event.type]
                progress = event.content.get("progress")
                ending.end_progress = progress if isinstance(progress, Mapping) else None
            continue
        if event.type == TASK_STATUS:
            run_id = event.content.get("run_id")
            owning = folded.get(run_id) if isinstance(run_id, str) else None
            ended = task_ended(event.content, node)
            if owning is None or ended is None:
                continue
            if ended.status == "completed" and ended.by == owning.ledger.coordinator:
                owning.completions[ended.task_id] += 1
            owning.ledger.observe(ended)
            continue
        if event.type not in (TASK_ASSIGNED, TASK_CLAIMED, TASK_RESULT, TASK_REVOKED, RUN_COORDINATOR):
            continue
        parsed = parse_cluster_event(event.type, event.content)
        if parsed is None:
            continue
        if accounts is not None and _named(parsed) != node:
            report.forged_ignored += 1
            continue
        if isinstance(parsed, Coordinator):
            run_id = event.state_key or event.content.get("run_id")
            if isinstance(run_id, str) and run_id:
                ledger = run_of(run_id).ledger
                leader = ledger.coordinator
                if isinstance(ledger.observe(parsed), Accepted) and leader and leader != parsed.node_id:
                    report.coordinator_takeovers += 1
                    if not killed_recently(leader, event.ts_ms):
                        report.false_takeovers += 1
                        report.false_takeover_traces.append(
                            f"{run_id}: {parsed.node_id} took the run over (epoch {parsed.epoch}) from {leader} "
                            f"at {event.ts_ms}, alive (not killed or paused in the {kill_window_s:g} s before, or back for over {BACK_GRACE_S:g} s)"
                        )
            continue
        state = run_of(parsed.run_id)
        before = state.ledger.tasks.get(parsed.task_id)
        was = (before.phase, before.holder or before.assigned_to) if before is not None else None
        outcome = state.ledger.observe(parsed)
        if not isinstance(outcome, Accepted) or outcome.task is None:
            continue
        task = outcome.task
        if outcome.what == "claimed":
            state.starts.setdefault(task.task_id, set()).add(task.epoch)
            for waiting in [h for h in held if (h.run_id, h.task_id) == (parsed.run_id, task.task_id) and task.epoch > h.epoch]:
                samples.append(max(0.0, (event.ts_ms - waiting.killed_ms) / 1000))
                held.remove(waiting)
        elif outcome.what == "assigned" and was is not None:
            phase, owner = was
            # From held straight to assigned: only a takeover moves a task so
            # (a timeout or a failure ends the attempt in the room first).
            if phase in ("assigned", "claimed") and owner is not None:
                report.reassignments += 1
                if not killed_recently(owner, event.ts_ms):
                    report.false_takeovers += 1
                    report.false_takeover_traces.append(
                        f"{parsed.run_id}/{task.task_id}: epoch {parsed.epoch} moved it away from {owner} "
                        f"at {event.ts_ms}, alive (not killed or paused in the {kill_window_s:g} s before, or back for over {BACK_GRACE_S:g} s)"
                    )
        elif outcome.what in ("completed", "failed", "ended", "revoked"):
            for waiting in [h for h in held if (h.run_id, h.task_id) == (parsed.run_id, task.task_id)]:
                held.remove(waiting)
                if (
                    isinstance(parsed, Result)
                    and parsed.epoch == waiting.epoch
                    and parsed.reported_by == waiting.node_id
                    and _restarted_between(log, waiting.node_id, waiting.killed_ms, event.ts_ms)
                ):
                    report.resumed_after_restart += 1

    for entry in log:
        if entry.kind == "kill":
            report.node_kills += 1
        elif entry.kind == "pause":
            report.node_pauses += 1
        elif entry.kind == "homeserver_down":
            report.homeserver_restarts += 1

    counted = [r for r in (runs if runs is not None else folded)]
    starts: Counter[int] = Counter()
    for run_id in counted:
        state = folded.get(run_id) or run_of(run_id)
        report.runs += 1
        if state.ended is None:
            report.runs_unended += 1
            report.unended.append(run_id)
        elif state.ended == "completed":
            report.runs_completed += 1
        elif state.ended == "failed":
            report.runs_failed += 1
        else:
            report.runs_cancelled += 1
        report.stale_results_ignored += state.ledger.stale_results_ignored
        report.claims_lost += state.ledger.claims_lost
        twice = {t for t, n in state.completions.items() if n > 1}
        completed = {t.task_id for t in state.ledger.tasks.values() if t.phase == "completed"}
        said = state.end_progress.get("completed") if state.end_progress is not None else None
        over = said - len(completed) if isinstance(said, int) and not isinstance(said, bool) else 0
        report.tasks_completed_twice += max(len(twice), over)
        report.completed_twice += [f"{run_id}/{t}" for t in sorted(twice)]
        if over > len(twice):
            report.completed_twice.append(f"{run_id}: its end says {said} tasks completed, {len(completed)} did")
        for task in state.ledger.tasks.values():
            report.tasks += 1
            starts[len(state.starts.get(task.task_id, ()))] += 1
            final = (task.phase == "completed" and task.announced) or task.phase == "ended"
            if not final:
                report.tasks_lost += 1
                report.lost.append(f"{run_id}/{task.task_id} ({task.phase}, epoch {task.epoch})")
    report.attempts_per_task = {str(k): v for k, v in sorted(starts.items())}
    report.takeovers_s = [round(s, 3) for s in samples]
    report.takeover_samples = len(samples)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    report.takeover_p50_s = None if p50 is None else round(p50, 2)
    report.takeover_p99_s = None if p99 is None else round(p99, 2)
    report.takeover_max_s = round(max(samples), 2) if samples else None
    return report


def _note_kill(entry: HarnessEvent, folded: Mapping[str, _Run], held: list[_Held]) -> None:
    if entry.kind not in ("kill", "pause") or entry.node_id is None:
        return
    for run_id, state in folded.items():
        if state.ended is not None:
            continue
        for task in state.ledger.tasks.values():
            owner = task.holder if task.phase == "claimed" else task.assigned_to if task.phase == "assigned" else None
            if owner == entry.node_id:
                held.append(_Held(run_id, task.task_id, entry.node_id, task.epoch, entry.at_ms))


def _restarted_between(log: Sequence[HarnessEvent], node_id: str, low: int, high: int) -> bool:
    return any(h.kind in ("restart", "resume") and h.node_id == node_id and low <= h.at_ms <= high for h in log)


def _run_id(event: TimelineEvent) -> object:
    """The run an event of the cluster room is about (the coordinator's state key names it)."""
    if event.type == RUN_COORDINATOR:
        return event.state_key or event.content.get("run_id")
    return event.content.get("run_id")


def _named(event: ClusterEvent) -> str:
    """The node an event speaks for (its sender must be that node's account)."""
    match event:
        case Assigned():
            return event.assigned_by
        case Claimed():
            return event.claimed_by
        case Result():
            return event.reported_by
        case Revoked():
            return event.revoked_by
        case Coordinator():
            return event.node_id
    return ""  # pragma: no cover - the match is exhaustive


def _spec_tasks(spec: object) -> tuple[str, ...] | None:
    """The task ids of a DAG file's text; None when it is not one. Never raises."""
    if not isinstance(spec, str):
        return None
    try:
        document = tomllib.loads(spec)
    except (tomllib.TOMLDecodeError, ValueError):
        return None
    tasks = document.get("tasks")
    if not isinstance(tasks, list):
        return None
    return tuple(t["id"] for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), str))
