"""The scheduler against a model: random DAGs, random events in random order.

Whatever happens, every task ends in exactly one final state, no task starts
before all its deps completed, no attempt starts while the run is paused,
a final state never changes, and the run ends once with the status its
tasks imply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_actors.dag.scheduler import (
    Action,
    CancelAttempt,
    RunFinished,
    RunStatus,
    RunStatusChanged,
    Scheduler,
    StartAttempt,
    TaskFacts,
    TaskStatus,
    TaskStatusChanged,
    WakeAt,
)
from lambda_actors.dag.spec import DagSpec, parse_dag


@st.composite
def dags(draw: st.DrawFn) -> DagSpec:
    n = draw(st.integers(1, 8))
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        tasks.append(
            {
                "id": f"t{i}",
                "deps": [f"t{d}" for d in deps],
                "agent": "a",
                "prompt": "p",
                "retries": draw(st.integers(0, 2)),
                "timeout": draw(st.integers(10, 100)),
            }
        )
    max_workers = draw(st.none() | st.integers(1, 3))
    doc: dict[str, Any] = {"dag_id": "model", "tasks": tasks}
    if max_workers is not None:
        doc["max_workers"] = max_workers
    return parse_dag(doc)


@dataclass
class Observer:
    """Checks every action against the rules, as it comes."""

    spec: DagSpec
    status: dict[str, TaskStatus] = field(default_factory=dict)
    finals: dict[str, int] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)  # task -> attempt running (or blocked)
    blocked: set[str] = field(default_factory=set)
    abandoned: list[tuple[str, int]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    run: RunStatus = RunStatus.CREATED
    finished: list[RunStatus] = field(default_factory=list)
    wake: float | None = None

    def see(self, actions: list[Action]) -> None:
        for a in actions:
            assert not self.finished, f"{a} after the run finished"
            if isinstance(a, TaskStatusChanged):
                before = self.status.get(a.task_id, TaskStatus.PENDING)
                assert not before.final, f"{a.task_id}: {before} -> {a.status}"
                self.status[a.task_id] = a.status
                if a.status.final:
                    self.finals[a.task_id] = self.finals.get(a.task_id, 0) + 1
                    self.live.pop(a.task_id, None)
                if a.status is TaskStatus.BLOCKED:
                    self.blocked.add(a.task_id)
                else:
                    self.blocked.discard(a.task_id)
                if a.status is TaskStatus.PENDING:
                    self.live.pop(a.task_id, None)
            elif isinstance(a, StartAttempt):
                assert self.run is RunStatus.RUNNING, f"{a.task_id} started while the run is {self.run}"
                for dep in self.spec.task(a.task_id).deps:
                    assert self.status.get(dep) is TaskStatus.COMPLETED, f"{a.task_id} started before {dep}"
                assert self.status.get(a.task_id) is TaskStatus.RUNNING
                assert a.attempt == self.attempts.get(a.task_id, 0) + 1
                self.attempts[a.task_id] = a.attempt
                self.live[a.task_id] = a.attempt
            elif isinstance(a, CancelAttempt):
                # Only the latest attempt is ever cancelled (its status was just written).
                assert self.attempts.get(a.task_id) == a.attempt
                self.live.pop(a.task_id, None)
                self.blocked.discard(a.task_id)
                self.abandoned.append((a.task_id, a.attempt))
            elif isinstance(a, RunStatusChanged):
                assert not self.run.final
                self.run = a.status
            elif isinstance(a, RunFinished):
                assert a.status is self.run and self.run.final
                self.finished.append(a.status)
            elif isinstance(a, WakeAt):
                self.wake = a.at
        # A running task's attempt is known to the observer.
        for task_id, status in self.status.items():
            if status in (TaskStatus.RUNNING, TaskStatus.BLOCKED):
                assert task_id in self.live


OPS = ("succeed", "fail", "block", "unblock", "tick", "pause", "resume", "cancel", "late", "restart")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=dags(), data=st.data())
def test_random_runs_keep_the_rules(spec: DagSpec, data: st.DataObject) -> None:
    machine = Scheduler(spec)
    seen = Observer(spec)
    now = 0.0
    seen.see(machine.start(now))
    cancelled = False
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        if seen.finished:
            break
        op = data.draw(st.sampled_from(OPS), label="op")
        now += data.draw(st.floats(0, 30), label="dt")
        running = sorted(t for t in seen.live if t not in seen.blocked)
        if op in ("succeed", "fail", "block") and running:
            t = data.draw(st.sampled_from(running), label="task")
            attempt = seen.live[t]
            if op == "succeed":
                seen.see(machine.succeeded(t, attempt, f"out-{t}", now))
            elif op == "fail":
                seen.see(machine.failed(t, attempt, "boom", now))
            else:
                seen.see(machine.blocked(t, attempt, "confirm?", now))
        elif op == "unblock" and seen.blocked:
            t = data.draw(st.sampled_from(sorted(seen.blocked)), label="task")
            seen.see(machine.unblocked(t, seen.live[t], now))
        elif op == "tick":
            seen.see(machine.tick(now))
        elif op == "pause" and seen.run is RunStatus.RUNNING:
            seen.see(machine.pause(now))
        elif op == "resume" and seen.run is RunStatus.PAUSED:
            seen.see(machine.resume(now))
        elif op == "cancel" and not seen.run.final:
            cancelled = True
            seen.see(machine.cancel(now))
        elif op == "late" and seen.abandoned:
            t, attempt = data.draw(st.sampled_from(seen.abandoned), label="late report")
            assert machine.succeeded(t, attempt, "late", now) == []
        elif op == "restart":
            # The node dies and comes back: the machine is rebuilt from the facts it had written.
            facts = {
                t: TaskFacts(s, attempts=seen.attempts.get(t, 0), output=machine.outputs.get(t))
                for t, s in seen.status.items()
            }
            machine = Scheduler.restore(spec, seen.run, facts)
            seen.live.clear()
            seen.blocked.clear()
            seen.abandoned.clear()  # the old process's attempts died with it
            seen.see(machine.start(now))
    # Drive the run to its end: resume, answer everything, let time pass.
    for _ in range(10_000):
        if seen.finished:
            break
        now += 1.0
        if seen.run is RunStatus.PAUSED:
            seen.see(machine.resume(now))
        elif seen.blocked:
            t = min(seen.blocked)
            seen.see(machine.unblocked(t, seen.live[t], now))
        elif seen.live:
            t = min(seen.live)
            seen.see(machine.succeeded(t, seen.live[t], f"out-{t}", now))
        else:
            assert seen.wake is not None, "nothing running, nothing due, and the run is not over"
            now = max(now, seen.wake)
            seen.see(machine.tick(now))
    assert seen.finished and len(seen.finished) == 1
    for task in spec.tasks:
        assert seen.status.get(task.id, TaskStatus.PENDING).final, task.id
        assert seen.finals[task.id] == 1, task.id
        assert machine.task_status(task.id) is seen.status[task.id]
    final = seen.finished[0]
    if cancelled:
        assert final is RunStatus.CANCELLED
    elif any(s is TaskStatus.FAILED for s in seen.status.values()):
        assert final is RunStatus.FAILED
    else:
        assert final is RunStatus.COMPLETED
        assert all(s is TaskStatus.COMPLETED for s in seen.status.values())
    # A skipped task lies downstream of a failure; a completed one's deps all completed.
    for task in spec.tasks:
        if seen.status[task.id] is TaskStatus.COMPLETED:
            assert all(seen.status[d] is TaskStatus.COMPLETED for d in task.deps)
        if seen.status[task.id] is TaskStatus.SKIPPED:
            assert any(seen.status[d] in (TaskStatus.FAILED, TaskStatus.SKIPPED) for d in task.deps)
