"""pytest fixtures: three node processes on one Synapse (``lambda_actors/loopback/cluster.py``), shared by a module.

Starting a cluster (its own Synapse, four fake agents, three
``lambda-actors run`` processes, an observer) takes seconds, so one serves
every test of a module: ``cluster`` is module-scoped. pytest-trio gives each
test a Trio loop of its own, which a module-scoped cluster cannot live in;
so the cluster runs in a Trio loop on a thread of its own
(:class:`ClusterThread`) and the tests, plain functions, call into it with
:meth:`ClusterThread.call` (``trio.from_thread``). Its agents keep
answering, and its observer keeps reading, between tests.

The cluster has its own Synapse (on tmpfs, a port below the ephemeral
range) rather than the session's: its tests restart the homeserver.

Import the fixture into the test module: ``from harness.cluster import cluster``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from lambda_actors.loopback.cluster import ClusterOptions, ClusterStack, open_cluster
from lambda_actors.loopback.cluster_report import TimelineEvent

T = TypeVar("T")

#: Agent delays (s): quick ones for plain runs, an 8 s one for a task a kill
#: lands in, a 22 s one for a task that must outlast a homeserver restart's
#: grace or a partition's takeover.
QUICK_AGENT, KILLED_AGENT, LONG_AGENT = "agent-0", "agent-2", "agent-3"
AGENT_DELAYS = (1.0, 1.0, 8.0, 22.0)


class ClusterThread:
    """A :class:`ClusterStack` living in a Trio loop on its own thread."""

    def __init__(self, workdir: Path, options: ClusterOptions) -> None:
        self.workdir = workdir
        self.options = options
        self.stack: ClusterStack | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="cluster", daemon=True)

    def start(self, timeout: float = 240.0) -> ClusterStack:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the cluster did not start in {timeout:g} s; see {self.workdir}")
        if self._failure is not None:
            raise self._failure
        assert self.stack is not None
        return self.stack

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_cluster(self.workdir, self.options) as stack:
            self.stack = stack
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the cluster's loop; return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.call_sync(self._stop.set)
        self._thread.join(120)

    # -- reading the cluster room -------------------------------------------------------------

    def events(self, run_id: str, kind: str | None = None) -> list[TimelineEvent]:
        """The run's events in the cluster room so far (of one type, if given)."""
        assert self.stack is not None
        return [
            e for e in self.call_sync(list, self.stack.timeline.events)
            if (e.content.get("run_id") == run_id or e.state_key == run_id) and (kind is None or e.type == kind)
        ]

    def wait_for(self, predicate: Callable[[TimelineEvent], bool], within: float) -> TimelineEvent:
        assert self.stack is not None
        stack = self.stack

        async def wait() -> TimelineEvent:
            return await stack.timeline.wait_for(predicate, within=within)

        return self.call(wait)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    """Three nodes: node-a and node-c in mode matrix, node-b in mode federation
    (a run takes the mode of the node it is confirmed on); all accept remote tasks."""
    workdir = tmp_path_factory.mktemp("cluster")
    options = ClusterOptions(nodes=3, modes=("matrix", "federation", "matrix"), max_workers=2, agent_delays=AGENT_DELAYS)
    thread = ClusterThread(workdir, options)
    try:
        thread.start()
        yield thread
    finally:
        thread.close()
