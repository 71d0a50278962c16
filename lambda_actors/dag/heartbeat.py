"""Node heartbeats and liveness (SPEC 8.2): the contents, the node's machine, the observers' rule.

- **Contents** of ``cis.node.heartbeat``, ``cis.node.dag.active`` and the
  state event ``cis.node.status`` (state key: the node id), built here only.

- **The node's liveness machine** (:class:`Liveness`, pure: inputs and
  ``now`` in, actions out). Where the homeserver offers delayed events
  (MSC4140, ``org.matrix.msc4140`` in ``/versions``), the node's own
  ``offline`` is scheduled with the homeserver *before* the node says
  ``online``, and restarted every ``restart_every_s`` (5 s) with a delay of
  ``delay_ms`` (10 s): if the node dies, the homeserver itself writes
  ``offline`` within 10 s. A restart answered "not found" means the delayed
  event fired (the homeserver was away longer than the delay, or the node
  stalled) or was lost: the node schedules a new one and says ``online``
  again. A clean stop cancels the delayed event, then writes ``stopped``.

  Stale delayed events are the hazard: one left by the previous run of the
  node (killed and restarted within 10 s), or a second one made by a
  schedule request that reached the homeserver although its answer was
  lost (Synapse does not deduplicate delayed sends), would fire while the
  node is alive. So before every schedule the machine lists the node's
  pending delayed events and cancels those for its own status.

  It does not rely on another write of the state cancelling a pending
  delayed event: Synapse may drop that behaviour (issue 15).

- **The observers' rule** (:func:`node_table`, pure): from the heartbeat
  room's events and the time, each node's liveness. The state event is the
  truth where it is newer than the last heartbeat; a node whose heartbeats
  stopped for three intervals is offline whatever its state says (the
  fallback where the homeserver has no delayed events). This table is what
  people see; whether to take a node's tasks over is decided by
  :class:`.liveness.Observer`, which also tells the ``offline`` events a
  homeserver restart fires from deaths.

- **The driver** (:func:`keep_alive`): the thin loop that performs the
  machine's actions with a :class:`~lambda_actors.matrix.MatrixClient`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio

from .status import Progress, check_integers, rfc3339

if TYPE_CHECKING:
    from ..matrix import MatrixClient

_log = structlog.get_logger("lambda_actors.dag.heartbeat")

__all__ = [
    "DAG_ACTIVE",
    "HEARTBEAT",
    "MSC4140",
    "NODE_STATUS",
    "CancelDelayed",
    "ListDelayed",
    "Liveness",
    "LivenessAction",
    "NodeRow",
    "ReadVersions",
    "RestartDelayed",
    "ScheduleOffline",
    "SendHeartbeat",
    "WriteStatus",
    "dag_active_content",
    "delayed_events_offered",
    "heartbeat_content",
    "keep_alive",
    "node_status_content",
    "node_table",
    "stale_delayed",
]

HEARTBEAT = "cis.node.heartbeat"
DAG_ACTIVE = "cis.node.dag.active"
NODE_STATUS = "cis.node.status"
#: The ``/versions`` unstable feature that says delayed events are offered.
MSC4140 = "org.matrix.msc4140"

NodeState = Literal["online", "busy", "maintenance", "offline"]
LivenessState = Literal["online", "offline", "stopped"]


# -- contents ---------------------------------------------------------------------------


def heartbeat_content(
    node_id: str,
    did: str | None,
    status: NodeState,
    *,
    agents: Sequence[str],
    max_workers: int,
    version: str,
    cpu_percent: int,
    memory_percent: int,
    active_sessions: int,
    at: datetime,
) -> dict[str, Any]:
    """``cis.node.heartbeat``. Percentages are whole numbers (round them):
    Matrix events hold no floats."""
    content = {
        "node_id": node_id,
        "did": did,
        "status": status,
        "capabilities": {"agents": list(agents), "max_workers": max_workers, "version": version},
        "resources": {
            "cpu_percent": cpu_percent,
            "memory_percent": memory_percent,
            "active_sessions": active_sessions,
        },
        "timestamp": rfc3339(at),
    }
    check_integers(content, HEARTBEAT)
    return content


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    dag_name: str
    progress: Progress
    status: str


def dag_active_content(node_id: str, active_runs: Iterable[ActiveRun], *, at: datetime) -> dict[str, Any]:
    """``cis.node.dag.active``: the runs this node is running now."""
    content = {
        "node_id": node_id,
        "active_runs": [
            {"run_id": r.run_id, "dag_name": r.dag_name, "progress": r.progress.to_json(), "status": r.status}
            for r in active_runs
        ],
        "timestamp": rfc3339(at),
    }
    check_integers(content, DAG_ACTIVE)
    return content


def node_status_content(node_id: str, status: LivenessState, *, since: datetime) -> dict[str, Any]:
    """``cis.node.status`` (state key: ``node_id``)."""
    return {"node_id": node_id, "status": status, "since": rfc3339(since)}


def delayed_events_offered(versions: Mapping[str, Any]) -> bool:
    """Whether a ``/versions`` answer says the homeserver offers MSC4140."""
    features = versions.get("unstable_features")
    return isinstance(features, Mapping) and features.get(MSC4140) is True


def stale_delayed(listed: Iterable[Mapping[str, Any]], room_id: str, node_id: str) -> list[str]:
    """The delay ids, among our pending delayed events, that would write this node's status."""
    return [
        item["delay_id"]
        for item in listed
        if item.get("room_id") == room_id
        and item.get("type") == NODE_STATUS
        and item.get("state_key") == node_id
        and isinstance(item.get("delay_id"), str)
    ]


# -- the node's machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReadVersions:
    """GET ``/versions``; report :meth:`Liveness.versions`."""


@dataclass(frozen=True)
class ListDelayed:
    """List our pending delayed events; report :meth:`Liveness.listed`."""


@dataclass(frozen=True)
class CancelDelayed:
    """Cancel a delayed event (its outcome need not be reported: gone is gone)."""

    delay_id: str


@dataclass(frozen=True)
class ScheduleOffline:
    """Schedule ``cis.node.status`` = ``offline`` in ``delay_ms``; report
    :meth:`Liveness.scheduled` with the delay id."""

    delay_ms: int


@dataclass(frozen=True)
class RestartDelayed:
    """Restart the delayed ``offline``; report :meth:`Liveness.restarted` (found or not)."""

    delay_id: str


@dataclass(frozen=True)
class WriteStatus:
    """Set ``cis.node.status`` to ``status`` now; report :meth:`Liveness.written`."""

    status: LivenessState


@dataclass(frozen=True)
class SendHeartbeat:
    """Post ``cis.node.heartbeat`` and ``cis.node.dag.active`` (report nothing:
    a heartbeat lost is replaced by the next)."""


LivenessAction = ReadVersions | ListDelayed | CancelDelayed | ScheduleOffline | RestartDelayed | WriteStatus | SendHeartbeat

#: The machine's phases, and what may follow each (a move not here is a bug).
Phase = Literal["start", "versions", "listing", "scheduling", "announcing", "live", "stopping", "stopped"]
MOVES: dict[str, frozenset[str]] = {
    "start": frozenset({"versions", "stopped"}),
    "versions": frozenset({"listing", "announcing", "stopping", "stopped"}),
    "listing": frozenset({"scheduling", "listing", "stopping", "stopped"}),
    "scheduling": frozenset({"announcing", "listing", "stopping", "stopped"}),
    "announcing": frozenset({"live", "listing", "stopping", "stopped"}),
    "live": frozenset({"listing", "announcing", "stopping", "stopped"}),
    "stopping": frozenset({"stopped"}),
    "stopped": frozenset(),
}


class IllegalMove(Exception):
    """A phase change :data:`MOVES` does not allow (a bug in the machine or its driver)."""


class Liveness:
    """One node's liveness in its heartbeat room (SPEC 8.2).

    Drive it: call :meth:`start`, perform the actions it returns, report
    their outcomes with the matching method; call :meth:`tick` at
    :meth:`next_due`; :meth:`stop` on a clean stop. One request is asked for
    at a time (besides cancels and heartbeats, which need no answer), so
    the driver can be one task performing actions in order. A request that
    failed (the homeserver away) is reported with :meth:`failed`: it is
    asked again after ``retry_s``, doubling with each failure in a row up to
    ``retry_max_s`` (a refusal that lasts, such as a room whose power levels
    do not let this node write its status, is not asked every second);
    restarts of the delayed offline always after ``retry_s``, which must
    beat its delay.
    """

    def __init__(
        self,
        *,
        delay_ms: int = 10_000,
        restart_every_s: float = 5.0,
        heartbeat_every_s: float = 30.0,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        if restart_every_s * 1000 >= delay_ms:
            raise ValueError("restart_every_s must be shorter than the delay, or the offline fires between restarts")
        self.delay_ms = delay_ms
        self.restart_every_s = restart_every_s
        self.heartbeat_every_s = heartbeat_every_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        #: Requests failed in a row (reset by any answer).
        self.failures = 0
        self.phase: Phase = "start"
        #: None until /versions answered.
        self.delayed_events: bool | None = None
        self.delay_id: str | None = None
        self._now = -math.inf
        self._waiting: type[LivenessAction] | None = None  # the request in flight
        self._retry: LivenessAction | None = None
        self._retry_at: float | None = None
        self._next_restart: float | None = None
        self._next_heartbeat: float | None = None
        #: How many times the delayed offline was found gone and scheduled again.
        self.reregistered = 0

    # -- inputs -------------------------------------------------------------------------------

    def start(self, now: float) -> list[LivenessAction]:
        self._clock(now)
        self._move("versions")
        return self._ask(ReadVersions())

    def versions(self, body: Mapping[str, Any], now: float) -> list[LivenessAction]:
        if not self._answered(ReadVersions, now):
            return []
        self.delayed_events = delayed_events_offered(body)
        if self.delayed_events:
            self._move("listing")
            return self._ask(ListDelayed())
        # No delayed events: observers count missed heartbeats instead.
        self._move("announcing")
        return self._ask(WriteStatus("online"))

    def listed(self, stale_ids: Sequence[str], now: float) -> list[LivenessAction]:
        """Our pending delayed events for this node's status (see :func:`stale_delayed`)."""
        if not self._answered(ListDelayed, now):
            return []
        actions: list[LivenessAction] = [CancelDelayed(d) for d in stale_ids]
        self.delay_id = None
        self._move("scheduling")
        return actions + self._ask(ScheduleOffline(self.delay_ms))

    def scheduled(self, delay_id: str, now: float) -> list[LivenessAction]:
        if self.phase in ("stopping", "stopped"):
            # Scheduled while the node was stopping: it must not fire.
            return [CancelDelayed(delay_id)]
        if not self._answered(ScheduleOffline, now):
            return []
        self.delay_id = delay_id
        self._next_restart = self._now + self.restart_every_s
        # Only now that the homeserver would mark us offline do we say online.
        self._move("announcing")
        return self._ask(WriteStatus("online"))

    def written(self, now: float) -> list[LivenessAction]:
        if not self._answered(WriteStatus, now):
            return []
        if self.phase == "stopping":
            self._move("stopped")
            return []
        self._move("live")
        actions: list[LivenessAction] = []
        if self._next_heartbeat is None:
            # The first heartbeat goes with the announcement, so observers
            # counting heartbeats know the node at once.
            self._next_heartbeat = self._now + self.heartbeat_every_s
            actions.append(SendHeartbeat())
        return actions + self._due()

    def restarted(self, found: bool, now: float) -> list[LivenessAction]:
        if not self._answered(RestartDelayed, now):
            return []
        if found:
            self._next_restart = self._now + self.restart_every_s
            return self._due()
        # It fired (the homeserver may have written offline) or was lost:
        # schedule a new one, then say online again.
        self.reregistered += 1
        self.delay_id = None
        self._next_restart = None
        self._move("listing")
        return self._ask(ListDelayed())

    def failed(self, now: float) -> list[LivenessAction]:
        """The request in flight failed; it is asked again after ``retry_s``.

        A schedule that failed may still have reached the homeserver (its
        answer lost), so it is retried from the listing, which cancels a
        copy that did.
        """
        self._clock(now)
        if self._waiting is None:
            return []
        if self.phase == "stopping":
            # Stopping is best effort: the node is going anyway.
            self._waiting = None
            self._move("stopped")
            return []
        retry: LivenessAction
        if self._waiting is ScheduleOffline:
            self._move("listing")
            retry = ListDelayed()
        elif self._waiting is RestartDelayed:
            assert self.delay_id is not None
            retry = RestartDelayed(self.delay_id)
        elif self._waiting is WriteStatus:
            retry = WriteStatus("online")
        elif self._waiting is ReadVersions:
            retry = ReadVersions()
        else:
            retry = ListDelayed()
        self._waiting = None
        self.failures += 1
        pause = self.retry_s if isinstance(retry, RestartDelayed) else min(
            self.retry_max_s, self.retry_s * 2 ** (self.failures - 1)
        )
        self._retry, self._retry_at = retry, self._now + pause
        return []

    def tick(self, now: float) -> list[LivenessAction]:
        self._clock(now)
        return self._due()

    def next_due(self) -> float | None:
        if self.phase in ("stopping", "stopped"):
            return None
        times = [self._next_heartbeat] if self.phase == "live" else []
        if self._waiting is None:
            if self._retry_at is not None:
                times.append(self._retry_at)
            elif self.phase == "live" and self._next_restart is not None:
                times.append(self._next_restart)
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def stop(self, now: float) -> list[LivenessAction]:
        """A clean stop: cancel the delayed offline, then write ``stopped``.

        The driver performs the two in order, whatever request is still in
        flight (its answer, if it comes, is ignored)."""
        self._clock(now)
        if self.phase in ("stopping", "stopped"):
            return []
        if self.phase == "start":
            self._move("stopped")
            return []
        self._move("stopping")
        self._retry = self._retry_at = None
        actions: list[LivenessAction] = [CancelDelayed(self.delay_id)] if self.delay_id is not None else []
        self.delay_id = None
        self._waiting = WriteStatus
        return [*actions, WriteStatus("stopped")]

    # -- decisions ------------------------------------------------------------------------------

    def _clock(self, now: float) -> None:
        self._now = max(self._now, now)

    def _move(self, phase: Phase) -> None:
        if phase != self.phase and phase not in MOVES[self.phase]:
            raise IllegalMove(f"liveness cannot go from {self.phase} to {phase}")
        self.phase = phase

    def _ask(self, action: LivenessAction) -> list[LivenessAction]:
        self._waiting = type(action)
        return [action]

    def _answered(self, kind: type[LivenessAction], now: float) -> bool:
        """Whether an answer of ``kind`` is the one awaited (a late answer after a stop is not)."""
        self._clock(now)
        if self._waiting is not kind:
            return False
        self._waiting = None
        self.failures = 0
        return True

    def _due(self) -> list[LivenessAction]:
        if self.phase in ("stopping", "stopped", "start"):
            return []
        actions: list[LivenessAction] = []
        if self.phase == "live" and self._next_heartbeat is not None and self._now >= self._next_heartbeat:
            # Skipped beats are not made up: one heartbeat says what many would.
            while self._next_heartbeat <= self._now:
                self._next_heartbeat += self.heartbeat_every_s
            actions.append(SendHeartbeat())
        if self._waiting is not None:
            return actions
        if self._retry is not None and self._retry_at is not None:
            if self._now < self._retry_at:
                return actions
            retry, self._retry, self._retry_at = self._retry, None, None
            return actions + self._ask(retry)
        if (
            self.phase == "live"
            and self.delay_id is not None
            and self._next_restart is not None
            and self._now >= self._next_restart
        ):
            return actions + self._ask(RestartDelayed(self.delay_id))
        return actions


# -- the observers' rule ------------------------------------------------------------------------

_LIVENESS: dict[str, LivenessState] = {"online": "online", "offline": "offline", "stopped": "stopped"}


@dataclass
class NodeRow:
    """What an observer knows of one node."""

    node_id: str
    liveness: LivenessState = "offline"
    #: The node's own status from its last heartbeat (online, busy, ...).
    reported: str | None = None
    status_since: str | None = None
    last_heartbeat_ms: int | None = None
    agents: tuple[str, ...] = ()
    active_sessions: int | None = None
    active_runs: int | None = None
    #: Why ``liveness`` is what it is, for people.
    reason: str = ""
    _status_ms: int | None = field(default=None, repr=False)
    _status: LivenessState | None = field(default=None, repr=False)


def node_table(
    events: Iterable[tuple[str, Mapping[str, Any], int, str | None]],
    now_ms: int,
    *,
    interval_secs: int = 30,
    missed: int = 3,
) -> dict[str, NodeRow]:
    """Each node's liveness from the heartbeat room's events, oldest first.

    ``events`` are ``(type, content, origin_server_ts, state_key)``. A node
    is ``offline`` once ``missed`` heartbeats are overdue (more than
    ``missed * interval_secs`` since its last one), whatever its state
    says; otherwise its ``cis.node.status`` decides when newer than its
    last heartbeat (the homeserver's delayed ``offline``, or ``stopped``),
    and a heartbeat newer than the state means ``online`` (the node is
    back, e.g. after the homeserver restarted and fired its delayed offline
    while the node had only been cut off).
    """
    rows: dict[str, NodeRow] = {}

    def row(node_id: str) -> NodeRow:
        if node_id not in rows:
            rows[node_id] = NodeRow(node_id)
        return rows[node_id]

    for event_type, content, ts, state_key in events:
        if event_type == NODE_STATUS and state_key:
            status = _LIVENESS.get(str(content.get("status")))
            if status is not None:
                r = row(state_key)
                r._status, r._status_ms = status, ts
                since = content.get("since")
                r.status_since = since if isinstance(since, str) else None
            continue
        node_id = content.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            continue
        if event_type == HEARTBEAT:
            r = row(node_id)
            r.last_heartbeat_ms = ts
            reported = content.get("status")
            r.reported = reported if isinstance(reported, str) else None
            capabilities = content.get("capabilities")
            if isinstance(capabilities, Mapping) and isinstance(capabilities.get("agents"), list):
                r.agents = tuple(str(a) for a in capabilities["agents"])
            resources = content.get("resources")
            sessions = resources.get("active_sessions") if isinstance(resources, Mapping) else None
            r.active_sessions = sessions if isinstance(sessions, int) else None
        elif event_type == DAG_ACTIVE:
            runs = content.get("active_runs")
            row(node_id).active_runs = len(runs) if isinstance(runs, list) else None

    limit_ms = missed * interval_secs * 1000
    for r in rows.values():
        beat = r.last_heartbeat_ms
        if beat is not None and now_ms - beat > limit_ms:
            r.liveness, r.reason = "offline", f"{missed} heartbeats missed"
        elif r._status is not None and (beat is None or r._status_ms is None or r._status_ms >= beat):
            r.liveness, r.reason = r._status, "status"
        elif beat is not None:
            r.liveness, r.reason = "online", "heartbeat"
    return rows


# -- the driver ------------------------------------------------------------------------------------


async def keep_alive(
    client: MatrixClient,
    room_id: str,
    node_id: str,
    machine: Liveness,
    *,
    heartbeat: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any]]],
    stop: trio.Event,
    request_timeout_s: float = 4.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Perform ``machine``'s actions for ``node_id`` in ``room_id`` until ``stop`` is set.

    ``heartbeat()`` gives the contents of ``cis.node.heartbeat`` and
    ``cis.node.dag.active`` at the time of each beat. Reports started once
    the node has said ``online``. On ``stop``, the clean stop (cancel the
    delayed offline, write ``stopped``) is done before returning; cancelled
    instead, it does nothing more, as a death would (the homeserver then
    writes ``offline`` itself when delayed events are on).

    Each request is bounded by ``request_timeout_s`` (shorter than the
    delay, so a hanging homeserver cannot keep the restarts from their
    schedule unnoticed); one that fails or times out is reported to the
    machine, which asks again later. Nothing here blocks anyone else: the
    node runs this as a task of its own.
    """
    from ..matrix.errors import MatrixFailure

    beats = 0
    started = False
    # Heartbeats' transaction ids are this run's own (a restarted node on the
    # same device must not have its beats taken for repeats of the last run's).
    boot = secrets.token_hex(6)

    async def perform(action: LivenessAction) -> list[LivenessAction]:
        nonlocal beats, started
        now = trio.current_time
        wall = datetime.now(UTC)
        try:
            with trio.fail_after(request_timeout_s):
                match action:
                    case ReadVersions():
                        return machine.versions(await client.versions(), now())
                    case ListDelayed():
                        listed = await client.delayed_events()
                        return machine.listed(stale_delayed(listed, room_id, node_id), now())
                    case ScheduleOffline(delay_ms=delay_ms):
                        content = node_status_content(node_id, "offline", since=wall)
                        delay_id = await client.put_state_delayed(room_id, NODE_STATUS, content, node_id, delay_ms=delay_ms)
                        return machine.scheduled(delay_id, now())
                    case RestartDelayed(delay_id=delay_id):
                        return machine.restarted(await client.update_delayed_event(delay_id, "restart"), now())
                    case WriteStatus(status=status):
                        await client.put_state(room_id, NODE_STATUS, node_status_content(node_id, status, since=wall), node_id)
                        follow = machine.written(now())
                        if status == "online" and not started:
                            started = True
                            task_status.started()
                        return follow
                    case CancelDelayed(delay_id=delay_id):
                        await client.update_delayed_event(delay_id, "cancel")
                        return []
                    case SendHeartbeat():
                        beats += 1
                        beat, active = heartbeat()
                        # Transaction ids from this run's start and the beat's
                        # number: a retried send cannot post twice.
                        await client.send(room_id, HEARTBEAT, beat, f"hb.{node_id}.{boot}.{beats}")
                        await client.send(room_id, DAG_ACTIVE, active, f"active.{node_id}.{boot}.{beats}")
                        return []
        except (MatrixFailure, trio.TooSlowError) as exc:
            _log.warning("heartbeat.request_failed", node_id=node_id, action=type(action).__name__, error=str(exc))
            if isinstance(action, (CancelDelayed, SendHeartbeat)):
                return []  # answers nobody waits for: a cancel is best effort, a lost beat is replaced by the next
            return machine.failed(trio.current_time())
        return []

    async def run_all(actions: list[LivenessAction]) -> None:
        pending = list(actions)
        while pending:
            pending = (await perform(pending[0])) + pending[1:]

    await run_all(machine.start(trio.current_time()))
    while not stop.is_set():
        due = machine.next_due()
        with trio.move_on_at(due if due is not None else math.inf):
            await stop.wait()
        if stop.is_set():
            break
        await run_all(machine.tick(trio.current_time()))
    with trio.CancelScope(shield=True):
        await run_all(machine.stop(trio.current_time()))
