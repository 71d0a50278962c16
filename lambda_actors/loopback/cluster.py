"""Several node processes on one loopback Synapse (issue 15): the harness of ``chaos --nodes`` and the e2e tests.

A :class:`ClusterStack` holds one homeserver (delayed events enabled, as
every loopback Synapse is: ``homeserver.py``), fake agents answering after a
set delay (agent ``i`` stalls ``agent_delays[i]`` seconds in every answer,
so a task is running when its node is killed), and N nodes, each a real
``lambda-actors run --node-config node.toml`` process with its own Matrix
account, node.toml, supervision file, log, API port (below the ephemeral
range, so a restarted node gets its port back) and data directory; all
share the agents.yaml. What it does to the nodes is logged
(:attr:`ClusterStack.log`, wall-clock ms as Synapse stamps events):

- :meth:`~ClusterStack.kill_node` (SIGKILL: nothing of the node runs any
  more, its delayed ``offline`` fires 10 s later), :meth:`~ClusterStack.start_node`
  again;
- :meth:`~ClusterStack.pause_node` / :meth:`~ClusterStack.resume_node`: a
  partition from the homeserver, simulated with SIGSTOP / SIGCONT. To the
  homeserver and the other nodes a stopped process is exactly a node cut
  off (it restarts no delayed event, sends nothing, reads nothing; its TCP
  connections stay open, as through a partition that drops packets); when
  it continues it finds the time passed and the timeline it missed, as a
  node whose network comes back does. Its fake-agent sockets live in this
  process, so the agent's answer waits in the node's socket buffer and the
  node may post a late result;
- :meth:`~ClusterStack.restart_homeserver` (SIGTERM, down for a while, the
  same directory and port).

The truth is the cluster room's timeline, read by a scripted observer
account (:class:`ClusterTimeline`: ``/messages`` forwards from the room's
start, woken by a long-polled ``/sync``), never the nodes' logs. Runs are
submitted to a live node's HTTP API (publish, then confirm; ``workers`` for
federation) with a token of scope ``dag``; :meth:`~ClusterStack.wait_run_end`
waits for the run's end in the room; :meth:`~ClusterStack.report` folds
the room into :class:`~.cluster_report.ClusterReport`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import trio

from ..agent.fake import FakeAgent
from ..matrix.client import MatrixClient
from ..matrix.errors import MatrixFailure
from ..node.config import new_token
from .cluster_report import RUN_ENDS, ClusterReport, HarnessEvent, HarnessKind, TimelineEvent, cluster_report
from .homeserver import Homeserver, RegisteredUser, register_user, stop_synapse
from .profiles import LOOPBACK
from .stack import agents_yaml, restart_homeserver, spawn_node_process, stable_ports, start_stable_synapse, stop_homeserver

__all__ = ["ClusterError", "ClusterNode", "ClusterOptions", "ClusterStack", "ClusterTimeline", "open_cluster"]

#: ``hybrid`` runs nodes that share nothing (each its own runs): the harness without the cluster driver.
Mode = Literal["matrix", "federation", "hybrid"]
#: How long a node process may take to answer on its API after a start.
NODE_READY_TIMEOUT = 90.0
#: The pause between two tries of the observer while the homeserver is away.
OBSERVER_RETRY_S = 0.5
NODE_STATUS = "cis.node.status"


class ClusterError(Exception):
    """The harness could not do what was asked (a node would not start, a run was refused, ...)."""


@dataclass(frozen=True)
class ClusterOptions:
    nodes: int = 3
    mode: Mode = "matrix"
    #: ``[dag.local] max_workers`` of every node.
    max_workers: int = 2
    #: Seconds each fake agent stalls in every answer (one agent per entry).
    agent_delays: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    #: ``[dag.cluster] room`` / ``[matrix.node_heartbeat] room`` aliases; ""
    #: for the defaults. A cluster on a shared homeserver (the test suite's)
    #: names its own, so it never meets another's runs.
    cluster_room: str = ""
    heartbeat_room: str = ""
    #: A mode per node (node ``i`` runs ``modes[i]``), for a cluster where both
    #: modes meet; the nodes past its end run ``mode``. A run's mode is that of
    #: the node it is confirmed on.
    modes: tuple[Mode, ...] = ()

    def mode_of(self, index: int) -> Mode:
        return self.modes[index] if index < len(self.modes) else self.mode

    def problems(self) -> list[str]:
        found = []
        if self.nodes < 2:
            found.append("--nodes must be at least 2 (one node alone has nobody to take over)")
        if self.nodes > 26:
            found.append("--nodes must be at most 26 (nodes are named node-a .. node-z)")
        if self.max_workers < 1:
            found.append("--max-workers must be at least 1")
        if not self.agent_delays or any(d < 0 for d in self.agent_delays):
            found.append("agent delays must be at least one number of seconds, none negative")
        return found


@dataclass
class ClusterNode:
    """One node process and everything of its own."""

    index: int
    node_id: str
    account: RegisteredUser
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def node_toml(self) -> Path:
        return self.directory / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ClusterTimeline:
    """The cluster and heartbeat rooms, read in timeline order by an observer account.

    ``events`` (the cluster room) and ``heartbeats`` grow as the rooms do;
    :meth:`wait_for` waits for an event without sleeping. The observer
    pages ``/messages`` forwards from each room's start (so nothing before
    it joined is missed) and long-polls ``/sync`` only to learn when to
    page again. While the homeserver is away it tries again every
    :data:`OBSERVER_RETRY_S`.
    """

    def __init__(self, homeserver_url: str, account: RegisteredUser, cluster_room: str, heartbeat_room: str) -> None:
        self.client = MatrixClient(homeserver_url, access_token=account.access_token, user_id=account.user_id)
        self.aliases = {"cluster": cluster_room, "heartbeat": heartbeat_room}
        self.room_ids: dict[str, str] = {}
        self.events: list[TimelineEvent] = []
        self.heartbeats: list[TimelineEvent] = []
        self._seen: set[str] = set()
        self._tokens: dict[str, str | None] = {}
        self._changed = trio.Event()
        self.failures = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        since: str | None = None
        try:
            while True:
                try:
                    await self._join_missing()
                    for name, room_id in self.room_ids.items():
                        await self._drain(name, room_id)
                    waiting = 10_000 if len(self.room_ids) == len(self.aliases) else 1_000
                    body = await self.client.sync(since, timeout_ms=waiting, filter_id=None)
                    since = body["next_batch"]
                except MatrixFailure:
                    self.failures += 1
                    await trio.sleep(OBSERVER_RETRY_S)
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    async def _join_missing(self) -> None:
        for name, alias in self.aliases.items():
            if name in self.room_ids:
                continue
            try:
                self.room_ids[name] = await self.client.join(alias)
            except MatrixFailure as exc:
                if getattr(exc, "errcode", None) in ("M_NOT_FOUND", "M_FORBIDDEN", "M_UNKNOWN"):
                    continue  # no node created it yet
                raise

    async def _drain(self, name: str, room_id: str) -> None:
        target = self.events if name == "cluster" else self.heartbeats
        added = False
        while True:
            page = await self.client.messages(room_id, start=self._tokens.get(room_id), direction="f", limit=200)
            chunk = page.get("chunk") or []
            for raw in chunk:
                event = TimelineEvent.from_raw(raw) if isinstance(raw, dict) else None
                if event is None or event.event_id in self._seen:
                    continue
                self._seen.add(event.event_id)
                target.append(event)
                added = True
            end = page.get("end")
            # At the edge Synapse gives no ``end``: the next page starts where this one did.
            self._tokens[room_id] = end if isinstance(end, str) else page["start"]
            if not chunk or not isinstance(end, str):
                break
        if added:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[TimelineEvent], bool], *, within: float,
                       heartbeat: bool = False, after: int = 0) -> TimelineEvent:
        """The first event (from index ``after`` of the room's list) matching ``predicate``."""
        with trio.fail_after(within):
            while True:
                events = self.heartbeats if heartbeat else self.events
                for event in events[after:]:
                    if predicate(event):
                        return event
                await self._changed.wait()

    def run_end(self, run_id: str) -> str | None:
        """How the run ended (completed, failed, cancelled) as the room says, or None."""
        for event in self.events:
            if event.type in RUN_ENDS and event.content.get("run_id") == run_id:
                return RUN_ENDS[event.type]
        return None


@dataclass
class ClusterStack:
    homeserver: Homeserver
    own_homeserver: bool
    options: ClusterOptions
    workdir: Path
    nodes: list[ClusterNode]
    agents: list[FakeAgent]
    observer: RegisteredUser
    timeline: ClusterTimeline
    token: str
    config_path: Path
    nursery: trio.Nursery
    supervision_path: Path
    log: list[HarnessEvent] = field(default_factory=list)
    #: run id -> its task ids, for every run submitted.
    submitted: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def accounts(self) -> dict[str, str]:
        """Matrix user id -> node id."""
        return {node.account.user_id: node.node_id for node in self.nodes}

    def node(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def note(self, kind: HarnessKind, node_id: str | None = None) -> None:
        self.log.append(HarnessEvent(kind, int(time.time() * 1000), node_id))

    # -- nodes -------------------------------------------------------------------------------

    async def start_node(self, index: int, *, wait_online: bool = True) -> None:
        """Start node ``index`` (again); return once its API answers and, with
        ``wait_online``, its ``online`` status of this start is in the heartbeat room."""
        node = self.nodes[index]
        if node.alive:
            raise ClusterError(f"{node.node_id} is already running")
        after = len(self.timeline.heartbeats)
        restarted = node.starts > 0
        node.process = spawn_node_process(
            self.homeserver.url, node.account, self.config_path, self.supervision_path, node.directory / "data",
            node.log_path, http=f"127.0.0.1:{node.port}", node_config=node.node_toml,
        )
        node.starts += 1
        node.paused = False
        if restarted:
            self.note("restart", node.node_id)
        await self._wait_api(node)
        if wait_online:
            await self.timeline.wait_for(
                lambda e: e.type == NODE_STATUS and e.state_key == node.node_id and e.content.get("status") == "online",
                within=NODE_READY_TIMEOUT, heartbeat=True, after=after,
            )

    async def _wait_api(self, node: ClusterNode) -> None:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(NODE_READY_TIMEOUT):
                while True:
                    if not node.alive:
                        raise ClusterError(
                            f"{node.node_id} exited with status {node.process.returncode if node.process else None} "
                            f"while starting; its log: {node.log_path}"
                        )
                    try:
                        await client.get(f"{node.url}/healthz")
                        return
                    except httpx.TransportError:
                        pass  # not listening yet
                    # Polling a child process that gives no readiness signal of its own.
                    await trio.sleep(0.1)

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``: no clean-up of any kind runs."""
        node = self.nodes[index]
        if node.process is None or node.process.poll() is not None:
            raise ClusterError(f"{node.node_id} is not running")
        node.process.send_signal(signal.SIGKILL)
        self.note("kill", node.node_id)
        node.process.wait()
        node.paused = False

    def pause_node(self, index: int) -> None:
        """Cut node ``index`` off (SIGSTOP): see the module's docstring."""
        node = self.nodes[index]
        if not node.alive or node.process is None:
            raise ClusterError(f"{node.node_id} is not running")
        node.process.send_signal(signal.SIGSTOP)
        node.paused = True
        self.note("pause", node.node_id)

    def resume_node(self, index: int) -> None:
        node = self.nodes[index]
        if node.process is None or not node.paused:
            raise ClusterError(f"{node.node_id} is not paused")
        node.process.send_signal(signal.SIGCONT)
        node.paused = False
        self.note("resume", node.node_id)

    async def stop_node(self, index: int, timeout: float = 30.0) -> int | None:
        """SIGTERM node ``index`` and wait for its exit status (in a thread: the agents keep answering)."""
        node = self.nodes[index]
        process, node.process = node.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        if node.paused:
            process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            return await trio.to_thread.run_sync(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None

    # -- the homeserver ------------------------------------------------------------------------

    async def restart_homeserver(self, down_s: float = 0.0) -> None:
        """Stop the homeserver (SIGTERM), keep it down ``down_s`` seconds, start it again (same port)."""
        if not self.own_homeserver:
            raise ClusterError("only a homeserver the cluster started itself is restarted")
        self.note("homeserver_down")
        await trio.to_thread.run_sync(stop_homeserver, self.homeserver)
        await trio.sleep(down_s)
        self.homeserver = await trio.to_thread.run_sync(restart_homeserver, self.homeserver)
        self.note("homeserver_up")

    # -- runs --------------------------------------------------------------------------------------

    def api(self, node: ClusterNode) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{node.url}/api/v1/dag", headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    async def submit(self, spec: str, task_ids: Sequence[str], *, via: int | None = None,
                     workers: Sequence[str] | None = None) -> str:
        """Publish ``spec`` (a DAG file's text) on a live node (``via``, or the
        first live one) and confirm a run of it; return the run id."""
        candidates = [self.nodes[via]] if via is not None else [n for n in self.nodes if n.alive and not n.paused]
        if not candidates:
            raise ClusterError("no live node to submit a run to")
        node = candidates[0]
        try:
            return await self._submit(node, spec, task_ids, workers)
        except httpx.TransportError as exc:
            raise ClusterError(f"{node.node_id} did not answer ({type(exc).__name__}: {exc})") from exc

    async def _submit(self, node: ClusterNode, spec: str, task_ids: Sequence[str], workers: Sequence[str] | None) -> str:
        async with self.api(node) as client:
            published = await client.post("/publish", content=spec, headers={"Content-Type": "application/toml"})
            if published.status_code != 200:
                raise ClusterError(f"{node.node_id} refused the DAG: HTTP {published.status_code} {published.text[:300]}")
            dag_id = published.json()["dag_id"]
            body: dict[str, Any] = {"version": published.json()["version"]}
            if workers is not None:
                body["workers"] = list(workers)
            with trio.move_on_after(NODE_READY_TIMEOUT):
                while True:
                    confirmed = await client.post(f"/{dag_id}/confirm", json=body)
                    if confirmed.status_code != 503:
                        break
                    # "Catching up with the cluster room; retry in a few
                    # seconds": a node just (re)started answers this until its
                    # driver has read the room, which nothing outside shows.
                    await trio.sleep(0.5)
            if confirmed.status_code not in (200, 201):
                raise ClusterError(f"{node.node_id} refused the run: HTTP {confirmed.status_code} {confirmed.text[:300]}")
        run_id = str(confirmed.json()["run_id"])
        self.submitted[run_id] = tuple(task_ids)
        return run_id

    async def wait_run_end(self, run_id: str, *, within: float) -> str:
        """How the run ended (completed, failed, cancelled), once its end is in the cluster room."""
        event = await self.timeline.wait_for(
            lambda e: e.type in RUN_ENDS and e.content.get("run_id") == run_id, within=within
        )
        return RUN_ENDS[event.type]

    def report(self, runs: Sequence[str] | None = None) -> ClusterReport:
        """The figures of the runs submitted (or of ``runs``), from the room."""
        chosen = self.submitted if runs is None else {r: self.submitted.get(r, ()) for r in runs}
        return cluster_report(self.timeline.events, self.log, runs=chosen, accounts=self.accounts)

    async def aclose(self) -> None:
        for index, node in enumerate(self.nodes):
            if node.alive:
                await self.stop_node(index)
        self.dump()

    def dump(self) -> None:
        """Write what was seen and done to the work directory: ``timeline.json``
        (the cluster room as read), ``heartbeats.json``, ``harness.json``."""

        def rows(events: Sequence[TimelineEvent]) -> list[dict[str, Any]]:
            return [{"type": e.type, "content": dict(e.content), "sender": e.sender, "ts": e.ts_ms, "state_key": e.state_key}
                    for e in events]

        (self.workdir / "timeline.json").write_text(json.dumps(rows(self.timeline.events), indent=1))
        (self.workdir / "heartbeats.json").write_text(json.dumps(rows(self.timeline.heartbeats), indent=1))
        (self.workdir / "harness.json").write_text(json.dumps([vars(h) for h in self.log], indent=1))


def node_toml(node_id: str, token_sha256: str, options: ClusterOptions, mode: Mode) -> str:
    lines = [
        f'node_id = "{node_id}"',
        "[[api.clients]]",
        'name = "harness"',
        f'token_sha256 = "{token_sha256}"',
        'scopes = ["dag"]',
        "[dag]",
        f'execution_mode = "{mode}"',
        "accept_remote_tasks = true",
        "[dag.local]",
        f"max_workers = {options.max_workers}",
    ]
    if options.cluster_room:
        lines += ["[dag.cluster]", f'room = "{options.cluster_room}"']
    if options.heartbeat_room:
        lines += ["[matrix.node_heartbeat]", f'room = "{options.heartbeat_room}"']
    return "\n".join(lines) + "\n"


def node_ids(count: int) -> list[str]:
    return [f"node-{chr(ord('a') + n)}" for n in range(count)]


@asynccontextmanager
async def open_cluster(
    workdir: Path,
    options: ClusterOptions = ClusterOptions(),
    *,
    homeserver: Homeserver | None = None,
    start: bool = True,
) -> AsyncIterator[ClusterStack]:
    """The homeserver (its own on a stable port, unless ``homeserver`` is
    given), the fake agents, the accounts, the observer and (``start``)
    every node, started one after another. Everything stops on the way out."""
    if problems := options.problems():
        raise ClusterError("; ".join(problems))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    own = homeserver is None
    synapse_dir = workdir / "synapse"
    if own:
        # Synapse on SQLite waits for every commit to reach the disk; on tmpfs it does not stall.
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            synapse_dir = Path(tempfile.mkdtemp(prefix="lambda-actors-cluster-synapse-", dir=shm))
        homeserver = await trio.to_thread.run_sync(start_stable_synapse, synapse_dir)
    assert homeserver is not None
    server = homeserver
    suffix = secrets.token_hex(3)

    def register(localpart: str) -> RegisteredUser:
        return register_user(server.url, server.registration_shared_secret, f"{localpart}-{suffix}", secrets.token_urlsafe(12))

    try:
        async with trio.open_nursery() as nursery:
            agents = []
            for n, delay in enumerate(options.agent_delays):
                # Every answer stalls ``delay`` seconds after its first chunk.
                agent = FakeAgent(workdir / f"agent-{n}", stall_seconds=delay, misbehave=["stall"])
                await nursery.start(agent.serve)
                agents.append(agent)
            config_path = workdir / "agents.yaml"
            config_path.write_text(agents_yaml(agents, {}))
            supervision_path = LOOPBACK.write(workdir / "supervision.toml")
            token, digest = new_token()
            ids = node_ids(options.nodes)
            ports = stable_ports(options.nodes)
            nodes = []
            for index, (node_id, port) in enumerate(zip(ids, ports)):
                account = await trio.to_thread.run_sync(register, node_id)
                directory = workdir / node_id
                (directory / "data").mkdir(parents=True, exist_ok=True)
                (directory / "node.toml").write_text(node_toml(node_id, digest, options, options.mode_of(index)))
                nodes.append(ClusterNode(index, node_id, account, directory, port))
            observer = await trio.to_thread.run_sync(register, "observer")
            cluster_room = options.cluster_room or f"#dag-cluster-default:{server.server_name}"
            heartbeat_room = options.heartbeat_room or f"#node-heartbeat-default:{server.server_name}"
            timeline = ClusterTimeline(server.url, observer, cluster_room, heartbeat_room)
            await nursery.start(timeline.run)
            stack = ClusterStack(
                server, own, options, workdir, nodes, agents, observer, timeline, token, config_path, nursery, supervision_path
            )
            try:
                if start:
                    for index in range(len(nodes)):
                        await stack.start_node(index)
                yield stack
            finally:
                with trio.CancelScope(shield=True):
                    await stack.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if own:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stop_synapse, synapse_dir)
                if synapse_dir != workdir / "synapse":
                    # Its log and database are kept with the rest of the run.
                    await trio.to_thread.run_sync(_move, synapse_dir, workdir / "synapse")


def _move(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(source), str(target))
