"""Benchmark of the Matrix bot on loopback, against a bare client in the same run.

    .venv/bin/python benchmarks/bot.py            # full run, a table (about 4 minutes)
    .venv/bin/python benchmarks/bot.py --quick    # about a minute
    .venv/bin/python benchmarks/bot.py --json     # one JSON object

One run starts a throwaway Synapse and, each in a process of its own, the
bot, two fake agents and the bare client; the 20 scripted users live in this
process. The bot process is ``lambda-actors run`` as an operator starts it
(the repository's ``supervision.toml``, default timings, INFO logs to a
file), plus a few timing probes (below). Separate processes matter: in one
Trio thread, whatever the bot does right after handing a message to the
agent (its log line, the typing request) would delay the *fake agent's*
read of it, and the users' own sync handling would delay the bot, so the
harness would be measured along with the bot.

**Added latency.** From the moment the bot's ``/sync`` long-poll returns the
batch holding a user's message (``MatrixClient.sync`` returning, JSON
already parsed) to the moment the fake agent has read and parsed the
USER_MESSAGE off its WebSocket. Both ends are stamped with
``time.monotonic()`` (one clock for every process on Linux) by wrappers
installed in those processes only; the bot's code is not changed. Messages
go one at a time, round robin over the 20 rooms, each waiting for its
answer, so this is the bot's own path (inbox commit, room actor, connection
actor, WebSocket write) with nothing queued in front of it. The same legs are
also reported for the messages of the throughput phase, under load.

**Reply throughput over 20 rooms.** 20 users, one room each, all at once:
each sends a message, waits until its answer marked done
(``org.lambda.done``) reaches its own sync, then sends the next. Replies per
second = messages / (first send -> last answer done). The **bare client**
baseline does the same with the same users against the same Synapse, in 20
rooms of its own with a plain account: its loop long-polls ``/sync`` (the
bot's filter) and, for every ``m.room.message`` from someone else, at once
sends one reply (``"echo: " + text``, marked done, transaction id from the
event id) from a task of its own: no agent, no database, no typing notices.
The bot and the bare client run in alternating rounds (bot first in even
rounds, bare first in odd ones); both stay connected all the time, so the
idle one costs the same in either phase. ``throughput_ratio`` is the median
bot rate over the median bare rate; the per-round ratios show the spread.

Per phase the table also shows the CPU each process used per reply and the
HTTP requests each party made per reply (``phases`` in the JSON), which is
what says where the time goes. ``--profile FILE`` runs the bot process under
cProfile and writes its stats to FILE.

This is a benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Sequence, TextIO, cast

import structlog
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lambda_actors.bot.actors.services import DONE_KEY, SOURCE_KEY  # noqa: E402
from lambda_actors.loopback.homeserver import register_user  # noqa: E402
from lambda_actors.loopback.stack import agents_yaml, open_loopback_stack  # noqa: E402
from lambda_actors.loopback.user import ScriptedUser  # noqa: E402
from lambda_actors.matrix import content as contents  # noqa: E402
from lambda_actors.matrix.client import MatrixClient  # noqa: E402
from lambda_actors.matrix.transport import Transport  # noqa: E402

if TYPE_CHECKING:
    from lambda_actors.agent.fake import FakeAgent

ROOMS = 20
AGENTS = 2
ANSWER_TIMEOUT = 120.0
START_TIMEOUT = 60.0


# --- probes: stamps written by the processes under test --------------------------
#
# One line per observation, "kind <TAB> time.monotonic() <TAB> key", in a
# block-buffered file closed at exit: a probe on the measured path costs one
# formatted write into a buffer, no system call.
#
#   S  the bot's sync returned the batch holding event `key`
#   I  the bot's inbox committed event `key` (Store.ingest returned)
#   U  the bot's connection actor starts sending text `key` to the agent
#   W  ... send_user_message returned (the socket write happens inside it,
#      between two of Trio's scheduling turns, so W - U is an upper bound)
#   A  the fake agent has read and parsed USER_MESSAGE text `key`
#   R  a Matrix request `key` (its "what") completed;  C  it was cancelled


class ProbeFile:
    def __init__(self, path: str | Path) -> None:
        self._file: TextIO = open(path, "w", buffering=1 << 16)

    def write(self, kind: str, key: str) -> None:
        self._file.write(f"{kind}\t{time.monotonic()!r}\t{key}\n")

    def close(self) -> None:
        self._file.close()


def read_probes(path: Path) -> list[tuple[str, float, str]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            kind, stamp, key = line.split("\t", 2)
            rows.append((kind, float(stamp), key))
    return rows


def count_requests(probe: Any) -> None:
    """Wrap Transport.request (in the calling process) to record each request."""
    request = Transport.request

    async def counted(self: Transport, *args: Any, what: str, **kwargs: Any) -> Any:
        try:
            result = await request(self, *args, what=what, **kwargs)
        except trio.Cancelled:
            probe.write("C", what)
            raise
        probe.write("R", what)
        return result

    Transport.request = counted  # type: ignore[method-assign]  # a probe, patched into this process's class on purpose


# --- the processes under test ------------------------------------------------------------


def serve_bot(args: argparse.Namespace) -> int:
    """The bot process: ``lambda-actors run`` with probes installed."""
    from lambda_actors.agent.client import AgentConnection
    from lambda_actors.bot import run as bot_run
    from lambda_actors.bot.store import Store

    probe = ProbeFile(args.probe_file)
    sync_json, ingest, send_user_message = MatrixClient.sync, Store.ingest, AgentConnection.send_user_message

    async def stamped_sync_json(self: MatrixClient, *a: Any, **kw: Any) -> dict[str, Any]:
        body = await sync_json(self, *a, **kw)
        for room in body.get("rooms", {}).get("join", {}).values():
            for event in room.get("timeline", {}).get("events", []):
                probe.write("S", str(event.get("event_id")))
        return body

    def stamped_ingest(self: Store, events: Any, next_batch: str) -> list[str]:
        events = list(events)
        rooms = ingest(self, events, next_batch)
        for event_id, *_ in events:
            probe.write("I", event_id)
        return rooms

    async def stamped_send(self: AgentConnection, text: str, *a: Any, **kw: Any) -> None:
        probe.write("U", text)
        await send_user_message(self, text, *a, **kw)
        probe.write("W", text)

    async def no_typing(self: MatrixClient, *a: Any, **kw: Any) -> None:
        await trio.lowlevel.checkpoint()

    if args.no_typing:
        MatrixClient.typing = no_typing  # type: ignore[method-assign]  # a probe, patched into this process's class on purpose

    MatrixClient.sync = stamped_sync_json  # type: ignore[method-assign]  # a probe, patched into this process's class on purpose
    Store.ingest = stamped_ingest  # type: ignore[method-assign]  # a probe, patched into this process's class on purpose
    AgentConnection.send_user_message = stamped_send  # type: ignore[method-assign]  # a probe, patched into this process's class on purpose
    count_requests(probe)
    # Parsed by the command's own argument definitions, so its defaults apply.
    run_parser = argparse.ArgumentParser()
    bot_run.add_arguments(run_parser)
    run_args = run_parser.parse_args(
        ["--config", args.config, "--supervision", str(ROOT / "lambda_actors" / "bot" / "supervision.toml"), "--data-dir", args.data_dir,
         "--log-level", args.log_level]
    )
    try:
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            code = profiler.runcall(bot_run.run, run_args)
            profiler.dump_stats(args.profile)
            return code
        return bot_run.run(run_args)
    finally:
        probe.close()


def serve_agents(args: argparse.Namespace) -> int:
    """The fake agents' process: the real FakeAgent, its USER_MESSAGE arrivals stamped."""
    from lambda_actors.agent.fake import FakeAgent
    from lambda_actors.agent.protocol import UserMessage

    quiet_logs()
    probe = ProbeFile(args.probe_file)

    class StampedFrames(list[Any]):
        # Stands in for FakeAgent.received, which the agent appends to right
        # after reading and parsing a frame. Nothing is kept: a long run
        # would only grow the list.
        def append(self, item: Any) -> None:
            if isinstance(item.frame, UserMessage):
                probe.write("A", item.frame.text)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                agents = []
                for n in range(args.agents):
                    agent = FakeAgent(Path(args.workdir) / f"agent-{n}")
                    agent.received = StampedFrames()
                    await nursery.start(agent.serve)
                    agents.append({"base_url": agent.base_url, "workspace": str(agent.workspace)})
                ready = Path(args.ready_file)
                ready.with_suffix(".tmp").write_text(json.dumps(agents))
                ready.with_suffix(".tmp").rename(ready)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        probe.close()
    return 0


def serve_bare(args: argparse.Namespace) -> int:
    """The bare client's process: sync, and answer each message from someone else at once."""
    quiet_logs()
    probe = ProbeFile(args.probe_file)
    count_requests(probe)

    async def reply(client: MatrixClient, room_id: str, event: dict[str, Any]) -> None:
        text = str(event.get("content", {}).get("body", ""))
        content = {**contents.text(f"echo: {text}"), SOURCE_KEY: event["event_id"], DONE_KEY: True}
        txn = "bare." + hashlib.sha256(event["event_id"].encode()).hexdigest()[:32]
        await client.send(room_id, "m.room.message", content, txn)

    async def loop(client: MatrixClient) -> None:
        filter_id = await client.create_filter()
        # Start from now: what is already in the rooms is not ours to answer.
        token = (await client.sync(None, timeout_ms=0, filter_id=filter_id))["next_batch"]
        Path(args.ready_file).write_text("ready")
        async with trio.open_nursery() as nursery:
            while True:
                body = await client.sync(token, timeout_ms=30_000, filter_id=filter_id)
                token = body["next_batch"]
                for room_id, room in body.get("rooms", {}).get("join", {}).items():
                    for event in room.get("timeline", {}).get("events", []):
                        if event.get("type") == "m.room.message" and event.get("sender") != client.user_id:
                            nursery.start_soon(reply, client, room_id, event)

    async def main() -> None:
        client = MatrixClient(
            os.environ["MATRIX_HOMESERVER"], access_token=os.environ["MATRIX_ACCESS_TOKEN"],
            user_id=os.environ["MATRIX_USER_ID"],
        )
        async with client:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(loop, client)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        probe.close()
    return 0


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


# --- the users (this process) ------------------------------------------------------------


class BenchUser(ScriptedUser):
    """A scripted user that notes when each answer marked done reaches its sync."""

    def __init__(self, client: MatrixClient, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.done_at: dict[str, float] = {}
        self._waiting: dict[str, trio.Event] = {}
        self.room = ""
        self.bare_room = ""
        #: room id -> who the homeserver last said is typing there
        self.typing_now: dict[str, list[str]] = {}
        #: Set once onboarded: from then on only ``done_at`` is read.
        self.forget_seen = False

    def _record(self, body: dict[str, Any]) -> str:
        now = time.monotonic()
        for room_id, room in body.get("rooms", {}).get("join", {}).items():
            for event in room.get("ephemeral", {}).get("events", []):
                if event.get("type") == "m.typing":
                    self.typing_now[room_id] = list(event.get("content", {}).get("user_ids", []))
            for event in room.get("timeline", {}).get("events", []):
                content = event.get("content")
                if isinstance(content, dict) and content.get(DONE_KEY) and isinstance(content.get(SOURCE_KEY), str):
                    self.done_at.setdefault(content[SOURCE_KEY], now)
                    if (waiter := self._waiting.pop(content[SOURCE_KEY], None)) is not None:
                        waiter.set()
        token = super()._record(body)
        if self.forget_seen:
            # The base class keeps every event for its own waits (onboarding
            # uses them); past that they would only grow and cost time.
            self.seen.clear()
        return token

    async def done(self, event_id: str, timeout: float = ANSWER_TIMEOUT) -> float:
        """When the answer to ``event_id``, marked done, arrived (waits for it)."""
        if event_id not in self.done_at:
            waiter = self._waiting.setdefault(event_id, trio.Event())
            with trio.fail_after(timeout):
                await waiter.wait()
        return self.done_at[event_id]


async def onboard(bot_id: str, user: BenchUser) -> None:
    """Invite the bot to a direct chat, join "Chat 1" (the room used from then on)."""
    dm = await user.start_dm(bot_id)
    await user.notice(dm, "Hello! I connect you to", timeout=ANSWER_TIMEOUT)
    user.room = await user.accept_invite("Chat 1", timeout=ANSWER_TIMEOUT)
    await user.notice(user.room, 'This is "Chat 1"', timeout=ANSWER_TIMEOUT)
    user.forget_seen = True


# --- measurements ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    kind: str  # "bot" or "bare"
    replies: int
    start: float
    end: float
    send_to_done_ms: list[float]
    cpu_s: dict[str, float]
    sent: dict[str, str]  # event id -> text
    #: rooms whose user still saw the bot typing 2 s after the phase (bot phases)
    typing_left: int | None = None

    @property
    def rate(self) -> float:
        return self.replies / (self.end - self.start)


@dataclass
class Run:
    """What the processes measured, and the pids whose CPU is read."""

    pids: dict[str, int]
    user_probe: list[tuple[str, float, str]] = field(default_factory=list)

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}


class UserRequests:
    """Request counting for the users' clients (this process), stamped like the probes."""

    def __init__(self, rows: list[tuple[str, float, str]]) -> None:
        self.rows = rows

    def write(self, kind: str, key: str) -> None:
        self.rows.append((kind, time.monotonic(), key))


async def closed_loop(users: list[BenchUser], per_room: int, kind: str, run: Run) -> Phase:
    """Every user at once: send, wait for the answer marked done, ``per_room`` times."""
    sent: dict[str, str] = {}
    latencies: list[float] = []
    nonce = secrets.token_hex(3)

    async def one_user(n: int, user: BenchUser) -> None:
        room = user.room if kind == "bot" else user.bare_room
        for k in range(per_room):
            text = f"{kind} {nonce} u{n} m{k}"
            begin = time.monotonic()
            event_id = await user.say(room, text)
            sent[event_id] = text
            latencies.append((await user.done(event_id) - begin) * 1000)

    cpu_before = run.cpu()
    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n, user in enumerate(users):
            nursery.start_soon(one_user, n, user)
    end = time.monotonic()
    cpu = {name: after - cpu_before[name] for name, after in run.cpu().items()}
    return Phase(kind, len(users) * per_room, start, end, latencies, cpu, sent)


async def one_at_a_time(users: list[BenchUser], count: int) -> tuple[dict[str, str], list[float]]:
    """``count`` messages one at a time, round robin over the users' chat rooms."""
    sent: dict[str, str] = {}
    round_trips: list[float] = []
    nonce = secrets.token_hex(3)
    for k in range(count):
        user = users[k % len(users)]
        text = f"latency {nonce} m{k}"
        begin = time.monotonic()
        event_id = await user.say(user.room, text)
        sent[event_id] = text
        round_trips.append((await user.done(event_id) - begin) * 1000)
    return sent, round_trips


async def agent_hop(base_url: str, count: int) -> dict[str, str]:
    """The floor under the last leg, without the bot: this process sends USER_MESSAGE
    over the bot's own agent client to the same fake agent process, one at a
    time (waiting for each answer). Returns text -> send stamp."""
    from lambda_actors.agent import protocol
    from lambda_actors.agent.client import open_agent_connection

    sent: dict[str, str] = {}
    nonce = secrets.token_hex(3)
    async with open_agent_connection(base_url, f"hop{nonce}") as conn:
        for k in range(count):
            text = f"hop {nonce} m{k}"
            sent[text] = repr(time.monotonic())
            await conn.send_user_message(text)
            while not isinstance(await conn.receive(), protocol.End):
                pass
    return sent


def latency_legs(sent: dict[str, str], stamps: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Per message, in ms: sync -> agent (the figure), and its three legs."""
    legs: dict[str, list[float]] = {"added": [], "sync_to_inbox": [], "inbox_to_send": [], "send_to_agent": [], "sync_to_written": []}
    for event_id, text in sent.items():
        s, i = stamps["S"].get(event_id), stamps["I"].get(event_id)
        u, a = stamps["U"].get(text), stamps["A"].get(text)
        if s is None or i is None or u is None or a is None:
            continue
        legs["added"].append((a - s) * 1000)
        legs["sync_to_inbox"].append((i - s) * 1000)
        legs["inbox_to_send"].append((u - i) * 1000)
        legs["send_to_agent"].append((a - u) * 1000)
        if (w := stamps["W"].get(text)) is not None:
            legs["sync_to_written"].append((w - s) * 1000)
    return legs


def requests_in(rows: list[tuple[str, float, str]], start: float, end: float) -> tuple[Counter[str], Counter[str]]:
    done: Counter[str] = Counter()
    cancelled: Counter[str] = Counter()
    for kind, stamp, what in rows:
        if start <= stamp <= end:
            if kind == "R":
                done[what] += 1
            elif kind == "C":
                cancelled[what] += 1
    return done, cancelled


# --- the run ---------------------------------------------------------------------------------


def spawn(role: str, workdir: Path, extra: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{role}.log", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", role, "--probe-file", str(workdir / f"{role}.probe"), *extra],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


async def wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str) -> None:
    with trio.fail_after(START_TIMEOUT):
        while not path.exists():
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}; see {path.parent / (what + '.log')}")
            await trio.sleep(0.05)


async def watch(processes: dict[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    """Fail the run at once (with the end of its log) if a process under test dies."""
    while True:
        for role, process in processes.items():
            if process.poll() is not None:
                log = (workdir / f"{role}.log").read_text(errors="replace").splitlines()[-25:]
                raise RuntimeError(f"the {role} process exited with {process.returncode}:\n" + "\n".join(log))
        await trio.sleep(0.5)


async def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await trio.to_thread.run_sync(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await trio.to_thread.run_sync(process.wait)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    quiet_logs()
    names = [f"user{n:02d}" for n in range(ROOMS)]
    user_rows: list[tuple[str, float, str]] = []
    async with AsyncExitStack() as exits:
        progress(f"starting Synapse, registering {ROOMS} users")
        stack = await exits.enter_async_context(open_loopback_stack(workdir / "stack", agents=1, users=names))
        hs = stack.homeserver

        progress("starting the fake agents, the bot and the bare client")
        agents_process = spawn("agents", workdir, ["--agents", str(AGENTS), "--workdir", str(workdir), "--ready-file", str(workdir / "agents.json")])
        exits.push_async_callback(stop, agents_process)
        await wait_for_file(workdir / "agents.json", agents_process, "agents")
        agents = [SimpleNamespace(**a) for a in json.loads((workdir / "agents.json").read_text())]
        users_map = {stack.users[name].user_id: f"agent-{n % AGENTS}" for n, name in enumerate(names)}
        # The agents live in the agents process; these records carry the two
        # attributes agents_yaml reads from a FakeAgent (base_url, workspace).
        stack.config_path.write_text(agents_yaml(cast("Sequence[FakeAgent]", agents), users_map))

        bot_env = {"MATRIX_HOMESERVER": hs.url, "MATRIX_USER_ID": stack.bot_id, "MATRIX_PASSWORD": stack.bot_user.password}
        bot_extra = ["--config", str(stack.config_path), "--data-dir", str(workdir / "bot-data"), "--log-level", args.log_level]
        if args.profile:
            bot_extra += ["--profile", str(Path(args.profile).resolve())]
        if args.no_typing:
            bot_extra += ["--no-typing"]
        bot_process = spawn("bot", workdir, bot_extra, bot_env)
        exits.push_async_callback(stop, bot_process)

        watched = {"agents": agents_process, "bot": bot_process}
        watcher = await exits.enter_async_context(trio.open_nursery())
        watcher.start_soon(watch, watched, workdir)
        # Stopping the processes is not dying: the watch ends first.
        exits.callback(watcher.cancel_scope.cancel)
        count_requests(UserRequests(user_rows))
        clients: list[MatrixClient] = []

        async def close_clients() -> None:
            for client in clients:
                await client.aclose()

        exits.push_async_callback(close_clients)
        # The users sync in a nursery of their own, stopped before their clients close.
        user_tasks = await exits.enter_async_context(trio.open_nursery())
        exits.callback(user_tasks.cancel_scope.cancel)
        users: list[BenchUser] = []
        for name in names:
            registered = stack.users[name]
            client = MatrixClient(hs.url, access_token=registered.access_token, user_id=registered.user_id)
            clients.append(client)
            user = BenchUser(client, sync_timeout_ms=30_000)
            await user_tasks.start(user.run)
            users.append(user)

        progress(f"onboarding {ROOMS} users")
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(onboard, stack.bot_id, user)

        # The bare client's account, in rooms of its own with the same users.
        bare_user = await trio.to_thread.run_sync(
            lambda: register_user(hs.url, hs.registration_shared_secret, f"bare-{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        )
        bare = MatrixClient(hs.url, access_token=bare_user.access_token, user_id=bare_user.user_id)
        clients.append(bare)
        progress("the bare client's rooms")

        async def bare_room(user: BenchUser) -> None:
            user.bare_room = await user.client.create_room(invite=[bare_user.user_id], is_direct=True)
            await bare.join(user.bare_room)

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(bare_room, user)
        bare_env = {"MATRIX_HOMESERVER": hs.url, "MATRIX_USER_ID": bare_user.user_id, "MATRIX_ACCESS_TOKEN": bare_user.access_token}
        bare_process = spawn("bare", workdir, ["--ready-file", str(workdir / "bare.ready")], bare_env)
        exits.push_async_callback(stop, bare_process)
        watched["bare"] = bare_process
        await wait_for_file(workdir / "bare.ready", bare_process, "bare")

        run = Run({"synapse": hs.pid, "bot": bot_process.pid, "agents": agents_process.pid, "bare": bare_process.pid, "users": os.getpid()})

        # Warm-up: every chat's agent socket open, every connection pool
        # filled, both sides have answered a few times before anything counts.
        progress("warming up")
        await closed_loop(users, 1, "bot", run)
        await closed_loop(users, 1, "bare", run)

        progress(f"added latency: {args.latency} messages, one at a time")
        latency_sent, round_trips = await one_at_a_time(users, args.latency)
        hop_sent = await agent_hop(agents[0].base_url, args.latency)

        phases: list[Phase] = []
        for r in range(args.rounds):
            for kind in ("bot", "bare") if r % 2 == 0 else ("bare", "bot"):
                progress(f"round {r + 1}/{args.rounds}: {kind}, {ROOMS} rooms x {args.per_room} messages")
                phase = await closed_loop(users, args.per_room, kind, run)
                if kind == "bot":
                    # Every answer is done: nobody should still see the bot typing.
                    await trio.sleep(2)
                    phase.typing_left = sum(stack.bot_id in u.typing_now.get(u.room, ()) for u in users)
                phases.append(phase)
        progress("stopping")
    # Every process has stopped now, so its probe file is complete.
    rows = {role: read_probes(workdir / f"{role}.probe") for role in ("bot", "agents", "bare")}
    rows["users"] = user_rows
    return summarise(args, rows, latency_sent, round_trips, hop_sent, phases)


def summarise(
    args: argparse.Namespace,
    rows: dict[str, list[tuple[str, float, str]]],
    latency_sent: dict[str, str],
    round_trips: list[float],
    hop_sent: dict[str, str],
    phases: list[Phase],
) -> dict[str, Any]:
    stamps: dict[str, dict[str, float]] = defaultdict(dict)
    for role_rows in rows.values():
        for kind, stamp, key in role_rows:
            if kind in "SIUWA":
                stamps[kind].setdefault(key, stamp)
    by_party = {role: [r for r in rows[role] if r[0] in "RC"] for role in ("bot", "bare", "users")}

    legs = latency_legs(latency_sent, stamps)
    hops = [(stamps["A"][text] - float(sent)) * 1000 for text, sent in hop_sent.items() if text in stamps["A"]]
    loaded = {}
    for p in phases:
        if p.kind == "bot":
            loaded.update(p.sent)
    loaded_legs = latency_legs(loaded, stamps)

    bot_rates = [p.rate for p in phases if p.kind == "bot"]
    bare_rates = [p.rate for p in phases if p.kind == "bare"]
    replies_per_s, bare_replies_per_s = statistics.median(bot_rates), statistics.median(bare_rates)

    def phase_summary(p: Phase) -> dict[str, Any]:
        requests: dict[str, float] = {}
        cancelled: dict[str, float] = {}
        for party, party_rows in by_party.items():
            done, gone = requests_in(party_rows, p.start, p.end)
            requests.update({f"{party}: {what}": round(n / p.replies, 2) for what, n in sorted(done.items())})
            cancelled.update({f"{party}: {what}": round(n / p.replies, 2) for what, n in sorted(gone.items())})
        return {
            "kind": p.kind,
            "replies": p.replies,
            "seconds": round(p.end - p.start, 3),
            "replies_per_s": round(p.rate, 2),
            "send_to_done_p50_ms": round(percentile(p.send_to_done_ms, 50), 1),
            "send_to_done_p99_ms": round(percentile(p.send_to_done_ms, 99), 1),
            "cpu_ms_per_reply": {name: round(s / p.replies * 1000, 2) for name, s in p.cpu_s.items()},
            "requests_per_reply": requests,
            "cancelled_per_reply": cancelled,
            "rooms_still_showing_typing": p.typing_left,
        }

    return {
        "added_latency_p50_ms": percentile(legs["added"], 50),
        "added_latency_p99_ms": percentile(legs["added"], 99),
        "added_latency_samples": len(legs["added"]),
        "added_latency_legs_p50_ms": {k: percentile(v, 50) for k, v in legs.items() if k != "added"},
        "agent_hop_alone_p50_ms": percentile(hops, 50),
        "agent_hop_alone_p99_ms": percentile(hops, 99),
        "loaded_added_latency_p50_ms": percentile(loaded_legs["added"], 50),
        "loaded_added_latency_p99_ms": percentile(loaded_legs["added"], 99),
        "loaded_added_latency_legs_p50_ms": {k: percentile(v, 50) for k, v in loaded_legs.items() if k != "added"},
        "send_to_done_one_at_a_time_p50_ms": percentile(round_trips, 50),
        "replies_per_s": replies_per_s,
        "bare_replies_per_s": bare_replies_per_s,
        "throughput_ratio": replies_per_s / bare_replies_per_s,
        "throughput_ratio_per_round": [b / a for b, a in zip(bot_rates, bare_rates)],
        "goals": {"added_latency_p50_ms": 5.0, "throughput_ratio": 0.8},
        "rooms": ROOMS,
        "messages_per_room": args.per_room,
        "rounds": args.rounds,
        "bot": "subprocess (lambda-actors run, with probes)" + (", typing notices off" if args.no_typing else ""),
        "median_cpu_ms_per_reply": {
            kind: {
                "synapse": statistics.median(p.cpu_s["synapse"] / p.replies * 1000 for p in phases if p.kind == kind),
                "client": statistics.median(p.cpu_s[kind] / p.replies * 1000 for p in phases if p.kind == kind),
            }
            for kind in ("bot", "bare")
        },
        "phases": [phase_summary(p) for p in phases],
    }


_QUIET = False
_STARTED = time.monotonic()


def progress(message: str) -> None:
    if not _QUIET:
        print(f"... {time.monotonic() - _STARTED:5.1f} s  {message}", file=sys.stderr, flush=True)


def report(r: dict[str, Any]) -> None:
    def legs(d: dict[str, float]) -> str:
        return (
            f"sync -> inbox committed {d['sync_to_inbox']:.2f}, -> connection sends {d['inbox_to_send']:.2f}, "
            f"-> agent has it {d['send_to_agent']:.2f}"
        )

    print(f"bot benchmark: {r['rooms']} rooms, {r['messages_per_room']} messages per room per round, {r['rounds']} round(s); "
          f"bot: {r['bot']}")
    print()
    print(f"{'':34}{'p50 ms':>8}{'p99 ms':>8}  goal")
    print(f"{'added latency, one at a time':34}{r['added_latency_p50_ms']:>8.2f}{r['added_latency_p99_ms']:>8.2f}  p50 <= 5"
          f"   ({r['added_latency_samples']} messages)")
    print(f"{'added latency, under 20-room load':34}{r['loaded_added_latency_p50_ms']:>8.2f}{r['loaded_added_latency_p99_ms']:>8.2f}")
    print(f"  p50 legs, one at a time (ms): {legs(r['added_latency_legs_p50_ms'])}")
    print(f"  p50 legs, under load (ms):    {legs(r['loaded_added_latency_legs_p50_ms'])}")
    print(f"  sync -> send_user_message returned (the bot's own part, an upper bound): "
          f"p50 {r['added_latency_legs_p50_ms']['sync_to_written']:.2f} ms one at a time, "
          f"{r['loaded_added_latency_legs_p50_ms']['sync_to_written']:.2f} ms under load")
    print(f"  the last leg without the bot (this process -> agent process, same client code): "
          f"p50 {r['agent_hop_alone_p50_ms']:.2f} ms, p99 {r['agent_hop_alone_p99_ms']:.2f} ms")
    print(f"  user sends -> answer done, one at a time: p50 {r['send_to_done_one_at_a_time_p50_ms']:.1f} ms")
    print()
    print(f"{'':34}{'bot':>8}{'bare':>8}{'ratio':>8}  goal")
    print(f"{'replies/s over 20 rooms (median)':34}{r['replies_per_s']:>8.1f}{r['bare_replies_per_s']:>8.1f}"
          f"{r['throughput_ratio']:>8.2f}  >= 0.8")
    print("  ratio per round: " + ", ".join(f"{x:.2f}" for x in r["throughput_ratio_per_round"]))
    cpu = r["median_cpu_ms_per_reply"]
    print(f"{'Synapse CPU ms per reply':34}{cpu['bot']['synapse']:>8.1f}{cpu['bare']['synapse']:>8.1f}")
    print(f"{'bot / bare process CPU ms per reply':34}{cpu['bot']['client']:>8.1f}{cpu['bare']['client']:>8.1f}")
    print()
    print("per phase: replies/s, send -> done p50/p99 ms, CPU ms per reply (process), requests per reply")
    for p in r["phases"]:
        cpu = " ".join(f"{k} {v:.1f}" for k, v in p["cpu_ms_per_reply"].items())
        print(f"  {p['kind']:5}{p['replies_per_s']:7.1f}/s  {p['send_to_done_p50_ms']:7.0f}/{p['send_to_done_p99_ms']:.0f} ms  cpu: {cpu}")
        requests = ", ".join(f"{k} {v:g}" for k, v in p["requests_per_reply"].items())
        print(f"         requests: {requests}")
        if p["rooms_still_showing_typing"]:
            print(f"         rooms still showing the bot typing 2 s after the phase: {p['rooms_still_showing_typing']}/20")
        if p["cancelled_per_reply"]:
            print("         cancelled: " + ", ".join(f"{k} {v:g}" for k, v in p["cancelled_per_reply"].items()))


def main() -> int:
    global _QUIET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer messages (about a minute)")
    parser.add_argument("--latency", type=int, help="messages for the added latency (default 300; quick 60)")
    parser.add_argument("--per-room", type=int, help="messages per room per round (default 12; quick 5)")
    parser.add_argument("--rounds", type=int, help="bot/bare round pairs (default 4; quick 1)")
    parser.add_argument("--log-level", default="INFO", help="the bot's log level (its log is a file; default INFO)")
    parser.add_argument("--profile", help="run the bot under cProfile and write its stats to this file")
    parser.add_argument(
        "--no-typing", action="store_true",
        help="experiment: the bot process skips its typing notices (to measure what they cost)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (all logs)")
    # The processes under test are this same file, started with --serve.
    parser.add_argument("--serve", choices=["bot", "agents", "bare"], help=argparse.SUPPRESS)
    for hidden in ("--probe-file", "--ready-file", "--workdir", "--config", "--data-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--agents", type=int, default=AGENTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return {"bot": serve_bot, "agents": serve_agents, "bare": serve_bare}[args.serve](args)

    args.latency = args.latency or (60 if args.quick else 300)
    args.per_room = args.per_room or (5 if args.quick else 12)
    args.rounds = args.rounds or (1 if args.quick else 4)
    _QUIET = args.json
    workdir = Path(tempfile.mkdtemp(prefix="bench-bot-"))
    args.workdir = workdir
    try:
        result = trio.run(bench, args, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
