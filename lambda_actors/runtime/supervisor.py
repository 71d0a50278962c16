"""Supervisors: start children, watch them exit, restart them by policy.

The semantics are OTP's ``supervisor`` (restart types, strategies,
intensity over a sliding window, shutdown with per-child timeouts), with
three additions for a long-running service:

* **Stable addresses.** A child's ``Address`` and mailbox belong to the
  supervisor, so messages sent while it restarts are held, not lost.
* **Backoff.** Each child waits ``min * multiplier ** (n-1)`` (capped,
  jittered, reset after a quiet period) before its n-th restart in a row.
* **Parking.** With ``on_exhausted = "park"`` a child that exceeds the
  intensity is stopped on its own and retried after ``cool_down``, while
  its siblings keep running. Intensity is then counted per child, so one
  flapping child cannot use up its siblings' budget.

Held to OTP, deliberately:

* **Specs are kept** until ``delete_child``: ``terminate_child`` stops a
  child and keeps its spec (status ``stopped``; its address refuses
  messages with ``ActorStopped``); ``restart_child`` starts it again at the
  same address; a transient child that returns normally is kept the same
  way. Temporary children are forgotten when they end or are terminated.
  Dynamic children do not survive a restart of their supervisor.
* **The intensity window** keeps a restart exactly ``period`` old (OTP's
  ``add_restart`` keeps ``t >= now - period``); see ``decision.py``.
* **Shutdown**: dynamic children stop concurrently, each within its own
  ``shutdown`` timeout (as OTP stops a simple_one_for_one supervisor's
  children); static ones then stop one by one in reverse start order.
* **Restart storms yield**: every restart passes a Trio checkpoint.

What follows an exit is decided by one pure function (``decision.decide``);
every status change goes through the transition table of ``state.py``.
Monitors (``ctx.monitor``) are told of an incarnation's end from the same
exit path (``monitors.py``).

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
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence, overload

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
from .decision import Action, Decision, History, decide
from .log import _set_actor_path
from .mailbox import Mailbox
from .monitors import NOPROC, SHUTDOWN, Down, Watchers, down_reason
from .policy import OnExhausted, Policy, Restart, Strategy
from .registry import Registry
from .spec import ChildSpec, SupervisorSpec
from .state import ChildState, Status, transition

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
        if self.bus.active:  # most trees have no subscriber: skip the call
            self.bus.emit(event)


class _Child:
    """The supervisor's record of one child; it outlives the child's incarnations.

    It is the ``ChildHandle`` of the child's ``Address`` (``state``,
    ``watch``, ``unwatch``): the only part of the supervisor an address sees.
    """

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
        self.status = Status.NOT_STARTED
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
        # Restart times charged to this child's own intensity (park mode only;
        # made on its first restart there).
        self.window: deque[float] | None = None
        # Monitors on this child (made on first use: most children are never watched).
        self.watchers: Watchers | None = None

    def set(self, status: Status) -> None:
        """The one way a status changes: through the transition table."""
        self.status = transition(self.path, self.status, status)

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


def _describe(reason: BaseException | None) -> str:
    """An exit reason for a log line: short, and without advice meant for someone else."""
    if reason is None:
        return "normal"
    if isinstance(reason, IntensityExceeded):
        return reason.summary
    return repr(reason)


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
        # Restart times charged to this supervisor's intensity (escalate mode).
        self._window: deque[float] = deque()
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
        tree.registry._add_supervisor(self)
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
        ``ActorStopped`` if this supervisor has been removed from its tree.
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
        self._start_now_or_later(c, Started(c.path, trio.current_time()))
        return self._handle_of(c)

    async def terminate_child(self, name: str) -> None:
        """Stop a child, keeping its spec (OTP's ``terminate_child``).

        Its mailbox closes, it drains what is held, then it is cancelled
        after its ``shutdown`` timeout. Senders then get ``ActorStopped``
        until ``restart_child``; ``delete_child`` forgets it. A temporary
        child is forgotten at once, as in OTP.
        """
        c = self._child(name)
        await self._stop_child(c, Status.STOPPED)

    def restart_child(self, name: str) -> Address | Supervisor:
        """Start a stopped child again (OTP's ``restart_child``); its address is the same.

        Synchronous, like ``start_child``. Raises ``ChildSpecError`` if the
        child is not stopped (running, backing off, parked: it already has,
        or will have, an incarnation).
        """
        c = self._child(name)
        if c.status is not Status.STOPPED:
            raise ChildSpecError(
                f"{c.path} is {c.status}, not stopped; only a terminated child can be "
                "restarted (use kill() to make a running one restart)"
            )
        if self._finalized:
            raise ActorStopped(self.path)
        c.attempt = 0
        c.window = None
        # Messages are held again from now on, even before it runs.
        self._revive(c)
        self._start_now_or_later(c, Started(c.path, trio.current_time()))
        return self._handle_of(c)

    def delete_child(self, name: str) -> None:
        """Forget a stopped child and its spec (OTP's ``delete_child``).

        Its address is closed for good and leaves the registry. Raises
        ``ChildSpecError`` if it is not stopped (``terminate_child`` first).
        A static child comes back when this supervisor next restarts, as in OTP.
        """
        c = self._child(name)
        if c.status is not Status.STOPPED:
            raise ChildSpecError(f"{c.path} is {c.status}; terminate_child it first, then delete it")
        self._remove(c)

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
        """Its status (with ``retry_at`` when backing off or parked); ``NoSuchActor`` if unknown."""
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
        it was not running (backing off, parked, stopping, stopped).
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
        threshold = now - self.policy.period
        return SupervisorStatistics(
            path=self.path,
            children=len(statuses),
            running=statuses.count(Status.RUNNING),
            backing_off=statuses.count(Status.BACKING_OFF),
            parked=statuses.count(Status.PARKED),
            restarts=self._restarts_total,
            parks=self._parks_total,
            restarts_in_window=sum(1 for t in self._window if t >= threshold),
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

    async def aclose(self) -> None:
        """Stop this supervisor: children stop (dynamic ones together, then the
        others in reverse start order), each within its ``shutdown`` timeout.

        For a nested supervisor this is ``parent.terminate_child(name)``, so
        its parent does not take the stop for a crash; it can be started
        again with ``parent.restart_child(name)``. The root is stopped for good.
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

    @staticmethod
    def _handle_of(c: _Child) -> Address | Supervisor:
        if c.sup is not None:
            return c.sup
        assert c.address is not None
        return c.address

    def _subtree(self) -> list[Supervisor]:
        out: list[Supervisor] = [self]
        for c in list(self._children.values()):
            if c.sup is not None:
                out.extend(c.sup._subtree())
        return out

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
        policy = self._tree.policy_for(path, spec.explicit_policy())
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

    def _accepting(self) -> bool:
        """This supervisor's incarnation runs and is not being stopped."""
        return self._running and not self._stop_requested and self._escalation is None

    def _start_now_or_later(self, c: _Child, event: SupervisionEvent) -> None:
        if self._accepting():
            self._spawn(c)
            self._tree.emit(event)
        else:
            c.set(Status.NOT_STARTED)  # the next incarnation of this supervisor starts it

    def _prepare(self, c: _Child, now: float) -> None:
        """Make ``c`` ready for a new incarnation (the task may already exist)."""
        c.set(Status.RUNNING)
        c.scope = trio.CancelScope()
        c.running = True
        c.terminating = False
        c.kill_reason = None
        c.retry_at = None
        c.timer_token += 1
        c.started_at = now
        if c.mailbox is not None:
            c.mailbox.reopen()

    def _spawn(self, c: _Child) -> None:
        """Start ``c`` at the next scheduling point (a single child: order is moot)."""
        assert self._nursery is not None
        self._prepare(c, trio.current_time())
        self._nursery.start_soon(self._child_task, c, name=c.path)

    async def _spawn_in_order(
        self, children: Sequence[_Child], event: Callable[[_Child], SupervisionEvent] | None = None
    ) -> None:
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
                    c.set(Status.STOPPING)
                    raise
                if reason is None and scope.cancelled_caught and not c.terminating:
                    reason = c.kill_reason or ActorKilled(c.path)
                self._abort_requests(c, reason)
                self._ended(c, ctx, down_reason(reason, c.terminating))
                if not self._after_exit(c, reason):
                    return
                # A restart in place. A child that crashes before its first
                # checkpoint would otherwise restart back to back without
                # letting any other task run until its intensity is used up
                # (OTP's supervisor also handles each restart as a message).
                await trio.lowlevel.checkpoint()
                if c.terminating or not self._accepting():
                    # Stopped during that checkpoint: whoever stops it takes it from here.
                    c.set(Status.STOPPING)
                    return
                self._prepare(c, trio.current_time())
        finally:
            once.started()
            c.running = False
            if c.done is not None:
                c.done.set()
                c.done = None

    @staticmethod
    def _ended(c: _Child, ctx: ActorContext | None, why: str) -> None:
        """An incarnation ended: its own monitors go, and its watchers hear of it."""
        if ctx is not None:
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
        if shutdown or not self._accepting():
            # Whoever is stopping it (or this supervisor) takes it from here.
            if reason is not None and not shutdown:
                tree.log.warning("actor crashed", actor=c.path, reason=_describe(reason), then="stopping")
            c.set(Status.STOPPING)
            return False
        policy = c.policy
        group = self.policy.strategy is not Strategy.ONE_FOR_ONE
        if group and not (policy.restart is Restart.TEMPORARY
                          or (policy.restart is Restart.TRANSIENT and reason is None)):
            # As in OTP, exits are handled one at a time by the supervisor's
            # loop, which ignores an exit of an incarnation that an earlier
            # group restart has already replaced.
            c.set(Status.WAITING)
            self._group_jobs.append((c, c.scope, reason, now))
            self._lot.unpark_all()
            return False
        return self._apply(c, self._decide(c, reason, now), reason, now, group=False)

    def _decide(self, c: _Child, reason: BaseException | None, now: float) -> Decision:
        if self.policy.on_exhausted is OnExhausted.PARK:
            window = c.window
            if window is None:
                window = c.window = deque()
        else:
            window = self._window
        decision = decide(History(c.attempt, c.started_at, window), c.policy.restart, c.policy.backoff,
                          self.policy, reason, now, self._tree.rng)
        decision.update(window)
        return decision

    def _apply(self, c: _Child, d: Decision, reason: BaseException | None, now: float, group: bool) -> bool:
        """Carry out a decision about ``c``; True means restart it now, in its own task.

        For a group (``group=True``) only the bookkeeping and the log line are
        done here for RESTART and BACK_OFF; the caller restarts the group.
        """
        tree = self._tree
        log = tree.log
        action = d.action
        if action is Action.REMOVE:
            self._remove(c)
            return False
        if action is Action.STOP:
            self._retire(c)
            return False
        if action is Action.ESCALATE:
            self._escalation = IntensityExceeded(self.path, c.name, reason, self.policy.intensity,
                                                 self.policy.period)
            log.error("supervisor escalating", actor=self.path, child=c.name, reason=_describe(reason))
            tree.emit(Escalated(self.path, now, c.name, reason))
            if c.status is not Status.STOPPING:
                c.set(Status.STOPPING)
            self._lot.unpark_all()
            return False
        if action is Action.PARK:
            assert d.retry_at is not None
            self._parks_total += 1
            c.attempt = 0
            self._schedule(c, d.retry_at, Status.PARKED)
            log.warning("actor parked", actor=c.path, reason=_describe(reason),
                        retry_in=round(d.delay, 3))
            tree.emit(Parked(c.path, now, d.retry_at, reason))
            return False
        c.attempt = d.attempt
        c.restarts += 1
        self._restarts_total += 1
        if action is Action.RESTART:
            if reason is not None:
                log.warning("actor crashed", actor=c.path, reason=_describe(reason), then="restart")
            else:
                log.info("actor exited", actor=c.path, then="restart")
            if group:
                return False
            tree.emit(Restarted(c.path, now, c.attempt))
            c.set(Status.RUNNING)
            return True
        assert d.retry_at is not None
        log.warning("backing off", actor=c.path, reason=_describe(reason),
                    delay=round(d.delay, 3), attempt=c.attempt)
        if not group:  # a group's BackingOff is emitted once the group is stopped
            tree.emit(BackingOff(c.path, now, d.delay, d.retry_at))
            self._schedule(c, d.retry_at, Status.BACKING_OFF)
        return False

    def _schedule(self, c: _Child, when: float, status: Status) -> None:
        c.set(status)
        c.retry_at = when
        c.timer_token += 1
        heapq.heappush(self._timers, (when, next(self._timer_seq), c, c.timer_token))
        self._lot.unpark_all()

    def _retire(self, c: _Child) -> None:
        """Stopped, spec kept: the address refuses messages until ``restart_child``."""
        c.set(Status.STOPPED)
        c.retry_at = None
        c.timer_token += 1
        c.notify_down(SHUTDOWN)  # watchers of a next incarnation that will not come
        if c.sup is not None:
            c.sup._retire_all()
        else:
            assert c.mailbox is not None
            c.mailbox.close()
            c.mailbox.discard_held("stopped")

    def _revive(self, c: _Child) -> None:
        """Undo ``_retire``: ``c`` (and a nested supervisor's static children) hold messages again."""
        c.set(Status.NOT_STARTED)
        if c.mailbox is not None:
            c.mailbox.reopen()
        if c.sup is not None:
            for child in c.sup._children.values():
                if child.status is Status.STOPPED:
                    c.sup._revive(child)

    def _retire_all(self) -> None:
        """This supervisor is stopped (not removed): dynamic children go, static ones are retired."""
        for c in reversed(list(self._children.values())):
            if c.dynamic or c.policy.restart is Restart.TEMPORARY:
                self._remove(c)
            elif c.status is not Status.STOPPED:
                self._retire(c)

    def _remove(self, c: _Child) -> None:
        """Forget ``c`` for good: close its address (held messages are dropped, requests fail)."""
        if c.status is not Status.STOPPED:
            c.set(Status.STOPPED)
        c.retry_at = None
        c.timer_token += 1
        c.notify_down(SHUTDOWN)
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

    async def _stop_child(self, c: _Child, after: Status, remove: bool = False) -> None:
        """Stop ``c``'s incarnation (ask politely, wait ``shutdown`` seconds, then
        cancel), and leave it ``after``: STOPPED (spec kept), WAITING (for its
        group) or NOT_STARTED (for this supervisor's next incarnation).
        ``remove`` (and a temporary child, always) forgets it instead."""
        c.timer_token += 1  # a pending restart or unpark no longer applies
        c.retry_at = None
        for_good = after is Status.STOPPED
        if c.running:
            c.terminating = True
            if c.status is not Status.STOPPING:
                c.set(Status.STOPPING)
            shutdown = c.policy.shutdown
            if shutdown > 0:
                if c.sup is not None:
                    c.sup._request_stop(for_good or remove)
                elif for_good or remove:
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
        if self._children.get(c.name) is not c:
            return  # removed meanwhile (its supervisor was removed)
        if remove or c.policy.restart is Restart.TEMPORARY:
            self._remove(c)
        elif for_good:
            if c.status is not Status.STOPPED:
                self._retire(c)
        else:
            c.set(after)

    async def _stop_members(self, members: Sequence[_Child], after: Status, remove_dynamic: bool) -> None:
        """Stop several children: dynamic ones concurrently, then the static ones
        in reverse start order (OTP stops a simple_one_for_one supervisor's
        children together; each still gets its own shutdown timeout)."""
        dynamic = [c for c in members if c.dynamic]
        if dynamic:
            async with trio.open_nursery() as nursery:
                for c in dynamic:
                    nursery.start_soon(self._stop_child, c, after, remove_dynamic)
        for c in reversed([c for c in members if not c.dynamic]):
            await self._stop_child(c, after)

    # --- the supervisor's own loop -----------------------------------------

    def _request_stop(self, for_good: bool) -> None:
        self._stop_requested = True
        self._stop_for_good = self._stop_for_good or for_good
        self._lot.unpark_all()

    async def _serve(self, task_status: trio.TaskStatus[Supervisor] | _StartedOnce = trio.TASK_STATUS_IGNORED) -> None:
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
                await self._stop_members(
                    list(self._children.values()),
                    Status.STOPPED if self._stop_for_good else Status.NOT_STARTED,
                    remove_dynamic=True,
                )
                self._timers.clear()
                self._running = False
                if self.parent is None:
                    self._tree.deadlines.stop()
        finally:
            self._running = False
            self._nursery = None
            self._timers.clear()
            self._group_jobs.clear()
            # After a cancellation nobody ran _stop_members: tidy up the same way.
            for c in list(self._children.values()):
                if c.dynamic:
                    self._remove(c)
                elif self._stop_for_good:
                    if c.status is not Status.STOPPED:
                        self._retire(c)
                elif c.status is not Status.STOPPED:
                    if c.status is Status.RUNNING:
                        c.set(Status.STOPPING)
                    c.set(Status.NOT_STARTED)
                    c.retry_at = None
            self._served.set()
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
        d = self._decide(failed, reason, when)
        self._apply(failed, d, reason, when, group=True)
        if d.action not in (Action.RESTART, Action.BACK_OFF):
            return
        members = list(self._children.values())
        if self.policy.strategy is Strategy.REST_FOR_ONE:
            members = [c for c in members if c.order >= failed.order]
        await self._stop_members([c for c in members if c is not failed], Status.WAITING, remove_dynamic=False)
        now = trio.current_time()
        survivors = [c for c in members if self._children.get(c.name) is c and not c.running]
        if d.action is Action.RESTART:
            await self._spawn_in_order(survivors, lambda c: Restarted(c.path, now, c.attempt))
        else:
            self._tree.emit(BackingOff(failed.path, now, d.delay, now + d.delay))
            for c in survivors:
                self._schedule(c, now + d.delay, Status.BACKING_OFF)

    def _finalize(self) -> None:
        """Removed from its tree: every address in this subtree refuses messages from now on."""
        if self._finalized:
            return
        self._finalized = True
        for c in reversed(list(self._children.values())):
            self._remove(c)
        self._tree.registry._forget_supervisor(self)


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


_NOT_WATCHED = _StartedOnce(None)


def _make_root(
    spec: SupervisorSpec, config: SupervisionConfig | str | Path | None, rng: random.Random | None
) -> Supervisor:
    if isinstance(config, (str, Path)):
        from .supervision_config import load_supervision_config

        config = load_supervision_config(config)
    tree = _Tree(config, rng)
    root = Supervisor(spec, spec.name, tree.policy_for(spec.name, spec.explicit_policy()), tree, None)
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
