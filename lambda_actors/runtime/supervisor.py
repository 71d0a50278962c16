"""Supervisors: start children, watch them exit, restart them by policy.

The semantics are OTP's ``supervisor`` (restart types, strategies,
intensity over a sliding window, reverse-order shutdown with per-child
timeouts), with three additions for a long-running service:

* **Stable addresses.** A child's ``Address`` and mailbox belong to the
  supervisor, so messages sent while it restarts are held, not lost.
* **Backoff.** Each child waits ``min * multiplier ** (n-1)`` (capped,
  jittered, reset after a quiet period) before its n-th restart in a row.
* **Parking.** With ``on_exhausted = "park"`` a child that exceeds the
  intensity is stopped on its own and retried after ``cool_down``, while
  its siblings keep running. Intensity is then counted per child, so one
  flapping child cannot use up its siblings' budget.

How it runs: every child is one Trio task in the supervisor's nursery.
A one_for_one restart without delay happens inside that task (no respawn),
which keeps restarts cheap. Everything that needs waiting (backoff timers,
cool-downs, stopping siblings for one_for_all / rest_for_one, escalation)
is done by the supervisor's own loop.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence, overload

import structlog
import trio

from .address import Address
from .context import ActorContext, MailboxReader
from .deadlines import CallDeadlines
from .errors import ActorKilled, ActorStopped, ChildSpecError, IntensityExceeded, NoSuchActor
from .events import (
    BackingOff,
    Escalated,
    EventBus,
    EventStream,
    Exited,
    MessageDropped,
    Parked,
    Restarted,
    Started,
    SupervisionEvent,
    Unparked,
)
from .intensity import RestartWindow
from .log import _set_actor_path
from .mailbox import Mailbox
from .monitors import NOPROC, SHUTDOWN, Down, Watchers, down_reason
from .policy import OnExhausted, Policy, Restart, Strategy
from .registry import Registry
from .spec import ChildSpec, SupervisorSpec
from .state import ChildState, Status

if TYPE_CHECKING:
    from .supervision_config import SupervisionConfig

__all__ = ["Supervisor", "SupervisorStatistics", "ChildCounts", "open_supervisor", "serve_supervisor"]

_LIBRARY_DEFAULTS = Policy()
_NO_LAYER: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    path: str
    children: int  #: children known to this supervisor (any status)
    running: int
    backing_off: int
    parked: int
    restarts: int  #: restarts done since this supervisor was created
    parks: int  #: children parked since this supervisor was created
    restarts_in_window: int  #: restarts counted against the intensity right now (escalate mode)
    intensity: int
    period: float


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """As OTP's ``count_children``."""

    specs: int
    active: int
    supervisors: int
    workers: int


class _Tree:
    """What every supervisor of one tree shares: registry, events, config, randomness."""

    def __init__(self, config: SupervisionConfig | None, rng: random.Random | None) -> None:
        self.registry = Registry()
        self.bus = EventBus()
        self.deadlines = CallDeadlines()
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.log = structlog.get_logger("lambda_actors.runtime")
        self.root: Supervisor | None = None
        self._policy_cache: dict[Any, Policy] = {}

    def policy_for(self, path: str, explicit: dict[str, Any]) -> Policy:
        config = self.config
        if config is not None:
            defaults = config.defaults
            entry = config.for_path(path)
        else:
            defaults = entry = _NO_LAYER
        key = (id(defaults), id(entry), tuple(sorted(explicit.items())))
        policy = self._policy_cache.get(key)
        if policy is None:
            policy = _LIBRARY_DEFAULTS.merged(defaults).merged(explicit).merged(entry)
            problems = policy.problems()
            if problems:
                where = f" (check {config.source})" if config is not None else ""
                raise ChildSpecError(
                    f"{path}: " + "; ".join(f"{k}: {why}" for k, why in problems) + where
                )
            self._policy_cache[key] = policy
        return policy

    def emit(self, event: SupervisionEvent) -> None:
        if self.bus._subscribers:
            self.bus.emit(event)


class _Child:
    """The supervisor's record of one child; it outlives the child's incarnations."""

    __slots__ = (
        "name", "path", "spec", "policy", "order", "dynamic", "address", "mailbox", "sup",
        "status", "scope", "running", "done", "reader", "terminating", "kill_reason",
        "started_at", "attempt", "restarts", "retry_at", "timer_token", "window", "watchers",
    )

    def __init__(self, name: str, path: str, spec: Any, policy: Policy, order: int, dynamic: bool) -> None:
        self.name = name
        self.path = path
        self.spec = spec
        self.policy = policy
        self.order = order
        self.dynamic = dynamic
        self.address: Address | None = None
        self.mailbox: Mailbox | None = None
        self.sup: Supervisor | None = None
        self.status = Status.BACKING_OFF  # until its first start
        self.scope: trio.CancelScope | None = None
        self.running = False  # a task is running (or about to run) an incarnation
        self.done: trio.Event | None = None  # made only when someone waits for the task
        self.reader: MailboxReader | None = None
        self.terminating = False
        self.kill_reason: BaseException | None = None
        self.started_at = 0.0
        self.attempt = 0
        self.restarts = 0
        self.retry_at: float | None = None
        self.timer_token = 0
        self.window: RestartWindow | None = None
        # Monitors on this child (made on first use: most children are never watched).
        self.watchers: Watchers | None = None

    # --- ChildHandle: what this child's Address may ask ----------------------

    def state(self, now: float) -> ChildState:
        retry_in = None if self.retry_at is None else max(0.0, self.retry_at - now)
        return ChildState(
            name=self.name, path=self.path, status=self.status, retry_at=self.retry_at,
            retry_in=retry_in, restarts=self.restarts, attempt=self.attempt,
            supervisor=self.sup is not None,
        )

    def watch(self, watcher: Mailbox) -> bool:
        if self.status is Status.STOPPED:
            watcher.post(Down(self.path, NOPROC))
            return False
        if self.watchers is None:
            self.watchers = Watchers()
        self.watchers.add(watcher)
        return True

    def unwatch(self, watcher: Mailbox) -> None:
        if self.watchers is not None:
            self.watchers.discard(watcher)

    def notify_down(self, reason: str) -> None:
        """The watched incarnation ended (or will never come): tell the watchers."""
        watchers = self.watchers
        if watchers is not None:
            self.watchers = None
            watchers.fire(self.path, reason)


class Supervisor:
    """A node of the tree that starts, watches and restarts its children.

    Get one from ``open_supervisor`` (the root), ``start_child`` with a
    ``SupervisorSpec``, or ``registry.supervisor(path)``. The object is
    stable across its own restarts.
    """

    def __init__(
        self, spec: SupervisorSpec, path: str, policy: Policy, tree: _Tree, parent: Supervisor | None
    ) -> None:
        self.name = spec.name
        self.path = path
        self.policy = policy
        self.parent = parent
        self._spec = spec
        self._tree = tree
        self._children: dict[str, _Child] = {}
        self._order = count()
        self._window = RestartWindow(policy.intensity, policy.period)
        self._timers: list[tuple[float, int, _Child, int]] = []
        self._timer_seq = count()
        self._lot = trio.lowlevel.ParkingLot()
        self._group_jobs: deque[tuple[_Child, Any, BaseException | None, float]] = deque()
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._finalized = False
        self._stop_requested = False
        self._stop_for_good = False
        self._escalation: IntensityExceeded | None = None
        self._served: trio.Event | None = None
        self._restarts_total = 0
        self._parks_total = 0
        tree.registry._supervisors[path] = self
        self._ensure_static_children()

    def __repr__(self) -> str:
        return f"<Supervisor {self.path} {len(self._children)} children>"

    # --- public API --------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The tree's registry (shared by every supervisor of this tree)."""
        return self._tree.registry

    @overload
    def start_child(self, spec: ChildSpec) -> Address: ...

    @overload
    def start_child(self, spec: SupervisorSpec) -> Supervisor: ...

    def start_child(self, spec: ChildSpec | SupervisorSpec) -> Address | Supervisor:
        """Add and start a dynamic child; returns its ``Address`` (or ``Supervisor``).

        Synchronous: the child's address exists and accepts messages at
        once, and its task starts at the next scheduling point. If this
        supervisor is between incarnations the child starts with the next
        one. Raises ``ChildSpecError`` for a name already in use and
        ``ActorStopped`` if this supervisor has stopped for good.
        """
        if self._finalized:
            raise ActorStopped(self.path)
        if not isinstance(spec, (ChildSpec, SupervisorSpec)):
            raise ChildSpecError(f"start_child needs a ChildSpec or SupervisorSpec, got {spec!r}")
        if spec.name in self._children:
            raise ChildSpecError(
                f"{self.path}: a child named {spec.name!r} already exists; "
                "terminate it first or pick another name"
            )
        c = self._new_child(spec, dynamic=True)
        if self._running and not self._stop_requested:
            self._spawn(c)
            self._tree.emit(Started(c.path, trio.current_time()))
        if c.sup is not None:
            return c.sup
        assert c.address is not None
        return c.address

    async def terminate_child(self, name: str) -> None:
        """Stop a child for good: its mailbox closes, it drains it, then it is cancelled
        after its ``shutdown`` timeout. Senders then get ``ActorStopped``."""
        c = self._child(name)
        await self._stop_child(c, for_good=True)

    def which_children(self) -> list[ChildState]:
        """Every child, in start order."""
        now = trio.current_time()
        return [c.state(now) for c in self._children.values()]

    def count_children(self) -> ChildCounts:
        sups = sum(1 for c in self._children.values() if c.sup is not None)
        active = sum(1 for c in self._children.values() if c.running)
        return ChildCounts(specs=len(self._children), active=active, supervisors=sups,
                           workers=len(self._children) - sups)

    def child_state(self, name: str) -> ChildState:
        """Running, backing off or parked (with ``retry_at``); ``NoSuchActor`` if unknown."""
        return self._child(name).state(trio.current_time())

    def address(self, name: str) -> Address:
        """The stable address of the worker child ``name``."""
        c = self._child(name)
        if c.address is None:
            raise NoSuchActor(f"{c.path} is a supervisor; it has no address (use child_supervisor)")
        return c.address

    def child_supervisor(self, name: str) -> Supervisor:
        """The nested supervisor ``name``."""
        c = self._child(name)
        if c.sup is None:
            raise NoSuchActor(f"{c.path} is a worker, not a supervisor")
        return c.sup

    def kill(self, path: str, note: str = "") -> bool:
        """Crash the actor (or supervisor) at ``path`` as if it raised ``ActorKilled``.

        ``path`` is absolute (``node/agents/agent-0``) or relative to this
        supervisor. Its supervisor then applies its policy. Returns False if
        it was not running (backing off, parked, stopping).
        """
        target = self._resolve(path)
        if not target.running or target.terminating or target.scope is None:
            return False
        target.kill_reason = ActorKilled(target.path, note)
        target.scope.cancel()
        return True

    def subscribe(self, buffer: int = 10_000) -> EventStream:
        """A stream of the supervision events of this supervisor's subtree.

        Use it as ``with sup.subscribe() as events: ... async for ev in events``
        (or call ``close()``); events emitted before subscribing are not seen.
        """
        return self._tree.bus.subscribe(self.path, buffer)

    def statistics(self) -> SupervisorStatistics:
        now = trio.current_time()
        statuses = [c.status for c in self._children.values()]
        return SupervisorStatistics(
            path=self.path,
            children=len(statuses),
            running=statuses.count(Status.RUNNING),
            backing_off=statuses.count(Status.BACKING_OFF),
            parked=statuses.count(Status.PARKED),
            restarts=self._restarts_total,
            parks=self._parks_total,
            restarts_in_window=self._window.count(now),
            intensity=self.policy.intensity,
            period=self.policy.period,
        )

    def tree_statistics(self) -> list[SupervisorStatistics]:
        """``statistics()`` of this supervisor and every supervisor below it, parents first.

        Called on the root, that is the whole tree: sum ``restarts`` and
        ``parks`` for totals, or read each subtree's own.
        """
        return [sup.statistics() for sup in self._subtree()]

    def walk(self) -> list[tuple[str, ChildState]]:
        """Every child of this subtree, nested supervisors' children included.

        ``(path, state)`` pairs, depth first: a nested supervisor is listed
        just before its own children.
        """
        now = trio.current_time()
        out: list[tuple[str, ChildState]] = []
        for c in list(self._children.values()):
            out.append((c.path, c.state(now)))
            if c.sup is not None:
                out.extend(c.sup.walk())
        return out

    def _subtree(self) -> list[Supervisor]:
        out: list[Supervisor] = [self]
        for c in list(self._children.values()):
            if c.sup is not None:
                out.extend(c.sup._subtree())
        return out

    async def aclose(self) -> None:
        """Stop this supervisor for good: children stop in reverse start order.

        For a nested supervisor this is ``parent.terminate_child(name)``, so
        its parent does not take the stop for a crash and restart it.
        """
        parent = self.parent
        if parent is not None:
            if parent._children.get(self.name) is not None:
                await parent.terminate_child(self.name)
            return
        if not self._running:
            self._finalize()
            return
        self._request_stop(for_good=True)
        served = self._served
        if served is not None:
            await served.wait()

    # --- children records --------------------------------------------------

    def _child(self, name: str) -> _Child:
        c = self._children.get(name)
        if c is None:
            raise NoSuchActor(f"{self.path} has no child named {name!r}")
        return c

    def _resolve(self, path: str) -> _Child:
        parts = [p for p in path.split("/") if p]
        own = [p for p in self.path.split("/")]
        if parts[: len(own)] == own:
            parts = parts[len(own):]
        if not parts:
            raise NoSuchActor(f"{path!r} names {self.path} itself; kill it from its parent")
        sup: Supervisor = self
        for i, part in enumerate(parts):
            c = sup._children.get(part)
            if c is None:
                raise NoSuchActor(f"no actor at {path!r} ({sup.path} has no child {part!r})")
            if i == len(parts) - 1:
                return c
            if c.sup is None:
                raise NoSuchActor(f"no actor at {path!r} ({c.path} is a worker)")
            sup = c.sup
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_child(self, spec: ChildSpec | SupervisorSpec, dynamic: bool) -> _Child:
        path = f"{self.path}/{spec.name}"
        policy = self._tree.policy_for(path, spec._policy)  # type: ignore[union-attr]
        c = _Child(spec.name, path, spec, policy, next(self._order), dynamic)
        if isinstance(spec, SupervisorSpec):
            c.sup = Supervisor(spec, path, policy, self._tree, self)
        else:
            c.mailbox = Mailbox(path, policy.mailbox_capacity, policy.overflow, self._on_drop)
            c.address = Address(path, c.mailbox, policy.call_timeout, self._tree.deadlines, c)
            self._tree.registry._add_path(c.address)
        self._children[spec.name] = c
        return c

    def _ensure_static_children(self) -> None:
        """Create records (and so addresses) for static children that have none yet."""
        missing = [s for s in self._spec.children if s.name not in self._children]
        if not missing:
            return
        for spec in missing:
            self._new_child(spec, dynamic=False)
        # Keep static children first, in spec order, then dynamic ones.
        static = {s.name: self._children[s.name] for s in self._spec.children}
        rest = {n: c for n, c in self._children.items() if n not in static}
        self._children = {**static, **rest}

    def _on_drop(self, path: str, reason: str, msg: Any) -> None:
        self._tree.log.warning("message dropped", actor=path, reason=reason)
        self._tree.emit(MessageDropped(path, trio.current_time(), reason, msg))

    # --- incarnations ------------------------------------------------------

    def _prepare(self, c: _Child, now: float) -> None:
        """Make ``c`` ready for a new incarnation (the task may already exist)."""
        c.status = Status.RUNNING
        c.scope = trio.CancelScope()
        c.running = True
        c.terminating = False
        c.kill_reason = None
        c.retry_at = None
        c.timer_token += 1
        c.started_at = now
        if c.mailbox is not None:
            c.mailbox.resume()

    def _spawn(self, c: _Child) -> None:
        """Start ``c`` at the next scheduling point (a single child: order is moot)."""
        assert self._nursery is not None
        self._prepare(c, trio.current_time())
        self._nursery.start_soon(self._child_task, c, name=c.path)

    async def _spawn_in_order(self, children: Sequence[_Child], event: Any = None) -> None:
        """Start several children one after the other, as OTP does.

        Each child's task runs until its first checkpoint (a nested
        supervisor: until its own children are started) before the next one
        is spawned, so start order is observable and shutdown can mirror it.
        ``event(c)`` is emitted for each.
        """
        assert self._nursery is not None
        for c in children:
            if c.running or self._children.get(c.name) is not c:
                continue
            if event is not None:
                self._tree.emit(event(c))
            self._prepare(c, trio.current_time())
            await self._nursery.start(self._child_task, c, name=c.path)

    async def _child_task(self, c: _Child, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        once = _StartedOnce(task_status) if task_status is not trio.TASK_STATUS_IGNORED else _NOT_WATCHED
        _set_actor_path(c.path)
        try:
            while True:
                scope = c.scope
                assert scope is not None
                reason: BaseException | None = None
                ctx: ActorContext | None = None
                try:
                    with scope:
                        if c.sup is not None:
                            await c.sup._serve(once)
                        else:
                            assert c.address is not None and c.mailbox is not None
                            ctx = ActorContext(c.address, c.name, c.mailbox, self, c.attempt)
                            c.reader = ctx.mailbox
                            once.started()
                            await c.spec.fn(ctx, *c.spec.args)
                except Exception as exc:
                    reason = exc
                except BaseException:
                    # Cancelled from outside the tree: no decision to make,
                    # but callers must not wait on a dead incarnation.
                    self._abort_requests(c, None)
                    self._ended(c, ctx, SHUTDOWN)
                    raise
                if reason is None and scope.cancelled_caught and not c.terminating:
                    reason = c.kill_reason or ActorKilled(c.path)
                self._abort_requests(c, reason)
                self._ended(c, ctx, down_reason(reason, c.terminating))
                if not self._after_exit(c, reason):
                    return
        finally:
            once.started()
            c.running = False
            if c.done is not None:
                c.done.set()
                c.done = None

    @staticmethod
    def _ended(c: _Child, ctx: ActorContext | None, why: str) -> None:
        """An incarnation ended: its own monitors go, and its watchers hear of it."""
        if ctx is not None and ctx._watching is not None:
            ctx._release_monitors()
        if c.watchers is not None:
            c.notify_down(why)

    @staticmethod
    def _abort_requests(c: _Child, reason: BaseException | None) -> None:
        reader = c.reader
        if reader is not None:
            c.reader = None
            reader._abort_inflight(c.path, reason)

    def _after_exit(self, c: _Child, reason: BaseException | None) -> bool:
        """Decide what follows an exit; True means run a new incarnation in this task."""
        now = trio.current_time()
        tree = self._tree
        shutdown = c.terminating
        tree.emit(Exited(c.path, now, reason, shutdown))
        if reason is not None and not shutdown:
            tree.log.warning("actor crashed", actor=c.path, reason=repr(reason))
        if shutdown or not self._running or self._stop_requested or self._escalation is not None:
            # Whoever is stopping it (or this supervisor) takes it from here.
            c.status = Status.STOPPING
            return False
        policy = c.policy
        if policy.restart is Restart.TEMPORARY or (policy.restart is Restart.TRANSIENT and reason is None):
            self._remove(c)
            return False

        if self.policy.strategy is not Strategy.ONE_FOR_ONE:
            # As in OTP, exits are handled one at a time by the supervisor's
            # loop, which ignores an exit of an incarnation that an earlier
            # group restart has already replaced.
            c.status = Status.STOPPING
            self._group_jobs.append((c, c.scope, reason, now))
            self._lot.unpark_all()
            return False
        delay = self._count_restart(c, now, reason)
        if delay is None:
            return False
        if delay <= 0:
            tree.emit(Restarted(c.path, now, c.attempt))
            self._prepare(c, now)
            return True
        self._schedule(c, now + delay, Status.BACKING_OFF)
        tree.log.info("backing off", actor=c.path, delay=round(delay, 3), attempt=c.attempt)
        tree.emit(BackingOff(c.path, now, delay, now + delay))
        return False

    def _count_restart(self, c: _Child, now: float, reason: BaseException | None) -> float | None:
        """Charge a restart of ``c`` to the intensity; its backoff delay, or None if
        that went over (``c`` is then parked, or this supervisor escalates)."""
        tree = self._tree
        mine = self.policy
        if mine.on_exhausted is OnExhausted.PARK:
            if c.window is None:
                c.window = RestartWindow(mine.intensity, mine.period)
            window = c.window
        else:
            window = self._window
        if not window.record(now):
            if mine.on_exhausted is OnExhausted.PARK:
                self._park(c, now, reason)
            else:
                self._escalation = IntensityExceeded(self.path, c.name, reason, mine.intensity, mine.period)
                tree.log.error("supervisor escalating", actor=self.path, child=c.name, reason=repr(reason))
                tree.emit(Escalated(self.path, now, c.name, reason))
                c.status = Status.STOPPING
                self._lot.unpark_all()
            return None
        if now - c.started_at >= c.policy.backoff.reset_after:
            c.attempt = 0
        c.attempt += 1
        c.restarts += 1
        self._restarts_total += 1
        return c.policy.backoff.delay(c.attempt, tree.rng)

    def _park(self, c: _Child, now: float, reason: BaseException | None) -> None:
        self._parks_total += 1
        retry_at = now + self.policy.cool_down
        self._schedule(c, retry_at, Status.PARKED)
        self._tree.log.warning("actor parked", actor=c.path, cool_down=self.policy.cool_down,
                               reason=repr(reason))
        self._tree.emit(Parked(c.path, now, retry_at, reason))

    def _schedule(self, c: _Child, when: float, status: Status) -> None:
        c.status = status
        c.retry_at = when
        c.timer_token += 1
        heapq.heappush(self._timers, (when, next(self._timer_seq), c, c.timer_token))
        self._lot.unpark_all()

    def _remove(self, c: _Child) -> None:
        """Forget ``c`` for good: close its address (held messages are dropped, requests fail)."""
        c.status = Status.STOPPED
        c.retry_at = None
        c.timer_token += 1
        # Watching a next incarnation that will now never run.
        c.notify_down(NOPROC)
        if self._children.get(c.name) is c:
            del self._children[c.name]
        if c.sup is not None:
            c.sup._finalize()
        else:
            assert c.mailbox is not None and c.address is not None
            c.mailbox.close()
            c.mailbox.discard_held("stopped")
            self._tree.registry._forget(c.address)

    async def _wait_task(self, c: _Child) -> None:
        if c.running:
            if c.done is None:
                c.done = trio.Event()
            await c.done.wait()

    async def _stop_child(self, c: _Child, for_good: bool) -> None:
        """Stop ``c``'s incarnation: ask politely, wait ``shutdown`` seconds, then cancel."""
        c.timer_token += 1  # a pending restart or unpark no longer applies
        if c.running:
            c.terminating = True
            c.status = Status.STOPPING
            shutdown = c.policy.shutdown
            if shutdown > 0:
                if c.sup is not None:
                    c.sup._request_stop(for_good)
                elif for_good:
                    assert c.mailbox is not None
                    c.mailbox.close()
                else:
                    assert c.mailbox is not None
                    c.mailbox.halt()
                with trio.move_on_after(shutdown):
                    await self._wait_task(c)
            if c.running:
                assert c.scope is not None
                c.scope.cancel()
                await self._wait_task(c)
        if for_good or c.policy.restart is Restart.TEMPORARY:
            c.notify_down(SHUTDOWN)  # watchers of a next incarnation that will not come
            self._remove(c)
        else:
            c.status = Status.STOPPING
            c.retry_at = None

    # --- the supervisor's own loop -----------------------------------------

    def _request_stop(self, for_good: bool) -> None:
        self._stop_requested = True
        self._stop_for_good = self._stop_for_good or for_good
        self._lot.unpark_all()

    async def _serve(self, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one incarnation of this supervisor until stopped or escalating."""
        if self._finalized:
            raise ActorStopped(self.path)
        self._stop_requested = False
        self._stop_for_good = False
        self._escalation = None
        self._window.clear()
        self._served = trio.Event()
        self._ensure_static_children()
        # A new incarnation starts its children afresh, as OTP does: no
        # backoff or intensity history carries over from the last one.
        for c in self._children.values():
            c.attempt = 0
            c.window = None
        escalation: IntensityExceeded | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._running = True
                if self.parent is None:
                    nursery.start_soon(self._tree.deadlines.run)
                await self._spawn_in_order(
                    list(self._children.values()),
                    lambda c: Started(c.path, trio.current_time()) if c.scope is None
                    else Restarted(c.path, trio.current_time(), c.attempt),
                )
                task_status.started(self)
                escalation = await self._loop()
                await self._stop_all(for_good=self._stop_for_good)
                self._running = False
                if self.parent is None:
                    self._tree.deadlines.stop()
        finally:
            self._running = False
            self._nursery = None
            self._timers.clear()
            self._group_jobs.clear()
            # After a cancellation nobody ran _stop_all: tidy up the same way.
            for c in list(self._children.values()):
                if c.dynamic:
                    self._remove(c)
                elif c.status is not Status.STOPPED:
                    c.status = Status.STOPPING
                    c.retry_at = None
            self._served.set()
        if self._stop_for_good:
            self._finalize()
        if escalation is not None:
            raise escalation

    async def _loop(self) -> IntensityExceeded | None:
        timers = self._timers
        while True:
            if self._escalation is not None:
                return self._escalation
            if self._stop_requested:
                return None
            if self._group_jobs:
                await self._restart_group(*self._group_jobs.popleft())
                continue
            now = trio.current_time()
            if timers and timers[0][0] <= now:
                await self._fire_timers(now)
                continue
            deadline = timers[0][0] if timers else math.inf
            with trio.move_on_at(deadline):
                await self._lot.park()

    async def _fire_timers(self, now: float) -> None:
        timers = self._timers
        due: list[_Child] = []
        while timers and timers[0][0] <= now:
            _, _, c, token = heapq.heappop(timers)
            if token == c.timer_token and self._children.get(c.name) is c and not c.running:
                due.append(c)
        due.sort(key=lambda c: c.order)
        for c in due:
            if c.status is Status.PARKED:
                if c.window is not None:
                    c.window.clear()
                c.attempt = 0
                self._tree.log.info("actor unparked", actor=c.path)
        await self._spawn_in_order(
            due,
            lambda c: Unparked(c.path, now) if c.status is Status.PARKED else Restarted(c.path, now, c.attempt),
        )

    async def _restart_group(
        self, failed: _Child, scope: Any, reason: BaseException | None, when: float
    ) -> None:
        """one_for_all / rest_for_one: stop the group in reverse order, restart it in order."""
        if self._children.get(failed.name) is not failed or failed.scope is not scope or failed.running:
            return  # that incarnation was already replaced by an earlier group restart
        delay = self._count_restart(failed, when, reason)
        if delay is None:
            return
        members = list(self._children.values())
        if self.policy.strategy is Strategy.REST_FOR_ONE:
            members = [c for c in members if c.order >= failed.order]
        for c in reversed(members):
            if c is not failed:
                await self._stop_child(c, for_good=False)
        now = trio.current_time()
        survivors = [c for c in members if self._children.get(c.name) is c and not c.running]
        if delay <= 0:
            await self._spawn_in_order(survivors, lambda c: Restarted(c.path, now, c.attempt))
        else:
            self._tree.emit(BackingOff(failed.path, now, delay, now + delay))
            for c in survivors:
                self._schedule(c, now + delay, Status.BACKING_OFF)

    async def _stop_all(self, for_good: bool) -> None:
        for c in reversed(list(self._children.values())):
            await self._stop_child(c, for_good=for_good or c.dynamic)
        self._timers.clear()

    def _finalize(self) -> None:
        """Stopped for good: every address in this subtree refuses messages from now on."""
        if self._finalized:
            return
        self._finalized = True
        for c in reversed(list(self._children.values())):
            self._remove(c)
        if self._tree.registry._supervisors.get(self.path) is self:
            del self._tree.registry._supervisors[self.path]


class _StartedOnce:
    """Reports a child task as started exactly once, however its first incarnation ends."""

    __slots__ = ("_status",)

    def __init__(self, status: trio.TaskStatus[Any] | None) -> None:
        self._status = status

    def started(self, value: Any = None) -> None:
        status = self._status
        if status is not None:
            self._status = None
            status.started(value)


_NOT_WATCHED = _StartedOnce(None)  # type: ignore[arg-type]


def _make_root(
    spec: SupervisorSpec, config: SupervisionConfig | str | Path | None, rng: random.Random | None
) -> Supervisor:
    if isinstance(config, (str, Path)):
        from .supervision_config import load_supervision_config

        config = load_supervision_config(config)
    tree = _Tree(config, rng)
    root = Supervisor(spec, spec.name, tree.policy_for(spec.name, spec._policy), tree, None)  # type: ignore[attr-defined]
    tree.root = root
    return root


@asynccontextmanager
async def open_supervisor(
    name: str = "root",
    children: Sequence[ChildSpec | SupervisorSpec] = (),
    *,
    config: SupervisionConfig | str | Path | None = None,
    rng: random.Random | None = None,
    **policy: Any,
) -> AsyncIterator[Supervisor]:
    """Run a supervision tree inside any Trio program.

    ``children`` start in order before the body runs (their addresses are
    usable at once). ``config`` is a ``SupervisionConfig`` or the path of a
    supervision.toml; ``policy`` keywords (``strategy``, ``intensity``, ...)
    set the root's own policy. ``rng`` makes backoff jitter reproducible.

    Leaving the block normally stops the tree in reverse start order, each
    child within its ``shutdown`` timeout. If the root escalates, every
    child is stopped and ``IntensityExceeded`` is raised out of the block.
    """
    root = _make_root(SupervisorSpec(name, children, **policy), config, rng)
    body_exc: BaseException | None = None
    failure: IntensityExceeded | None = None

    async def serve_root(task_status: trio.TaskStatus[Supervisor]) -> None:
        nonlocal failure
        try:
            await root._serve(task_status)
        except IntensityExceeded as exc:
            failure = exc
            root._finalize()
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_root)
            try:
                yield root
            except BaseException as exc:
                body_exc = exc
                nursery.cancel_scope.cancel()
            else:
                await root.aclose()
    finally:
        root._finalize()
    if failure is not None:
        raise failure from None
    if body_exc is not None:
        raise body_exc


async def serve_supervisor(
    spec: SupervisorSpec,
    config: SupervisionConfig | str | Path | None = None,
    rng: random.Random | None = None,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``sup = await nursery.start(serve_supervisor, SupervisorSpec("node", children))``.

    The tree as a task of your own nursery (arguments are positional, as
    ``nursery.start`` wants). It runs until cancelled (its children are
    cancelled with it) or until the root escalates, raising
    ``IntensityExceeded``. ``await sup.aclose()`` stops it in order.
    """
    root = _make_root(spec, config, rng)
    try:
        await root._serve(task_status)
    finally:
        root._finalize()
