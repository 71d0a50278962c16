"""Benchmark of the Matrix bot on loopback, against a bare client in the same run.

    .venv/bin/python benchmarks/bot.py            # full run: a table (a few minutes)
    .venv/bin/python benchmarks/bot.py --quick    # under a minute
    .venv/bin/python benchmarks/bot.py --json     # one JSON object

One run starts a throwaway Synapse, two fake agents, 20 users, and the bot
*in this process* (``LoopbackStack.start_bot``: the production tree, the
repository's ``supervision.toml``, default timings, INFO logging to a file as
``lambda-actors run`` does). Everything but Synapse shares this process's one
Trio thread: the bot, the fake agents, the users' clients and the baseline.

**Added latency.** From the moment the bot's ``/sync`` long-poll returns the
batch holding a user's message (``MatrixClient.sync_json`` returning, JSON
already parsed) to the moment the fake agent has read the USER_MESSAGE off
its WebSocket. Both ends are stamped with ``time.perf_counter`` by wrappers
installed here (the bot's code is not changed): one around the bot client's
``sync_json`` (per event id), one on the fake agent's ``received`` list (per
message text). Messages are sent one at a time, round robin over the 20
rooms, each waiting for its answer, so the figure is the bot's own path
(inbox commit, room actor, connection actor, WebSocket) with nothing queued
in front. For scale, the table also shows a bare WebSocket hop (trio-websocket
client to server on loopback, in this process) and where the time goes.

**Reply throughput over 20 rooms.** 20 users, one room each, all at once; each
sends a message, waits until its answer is marked done (``org.lambda.done``)
in its own sync, then sends the next. Replies per second = messages / (first
send → last done). The **bare client** baseline does the same thing with the
same users against the same Synapse, in 20 rooms of its own: one Matrix
account whose loop long-polls ``/sync`` (the bot's filter) and, for every
``m.room.message`` from someone else, at once sends one reply (``"echo: " +``
the text, marked done, transaction id from the event id), with no agent, no
database, no typing notices. The bot and the baseline run in alternating
rounds (bot first in even rounds, bare first in odd ones); both stay
connected throughout, so whichever is idle costs the same in both phases.
``throughput_ratio`` is the median bot rate over the median bare rate.

Diagnostics per reply (the table, and ``phases`` in the JSON): CPU seconds
used by Synapse and by this process, and the HTTP requests each party made.

This is a benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio_websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lambda_actors.actors.services import DONE_KEY, SOURCE_KEY, Timing  # noqa: E402
from lambda_actors.agent.client import AgentConnection  # noqa: E402
from lambda_actors.agent.protocol import UserMessage  # noqa: E402
from lambda_actors.bot.logs import SecretMask, configure_logging  # noqa: E402
from lambda_actors.bot.store import Store  # noqa: E402
from lambda_actors.homeserver import register_user  # noqa: E402
from lambda_actors.loopback.stack import open_loopback_stack  # noqa: E402
from lambda_actors.loopback.user import ScriptedUser  # noqa: E402
from lambda_actors.matrix import content as contents  # noqa: E402
from lambda_actors.matrix.client import MatrixClient  # noqa: E402
from lambda_actors.matrix.transport import Transport  # noqa: E402

ROOMS = 20
ANSWER_TIMEOUT = 120.0


# --- stamps: wrappers installed around the bot's code, for this process only ---


@dataclass
class Probe:
    """Timestamps (``perf_counter``) and request counts gathered by the wrappers."""

    bot_user_id: str = ""
    #: event id -> when the bot's sync returned the batch holding it
    synced: dict[str, float] = field(default_factory=dict)
    #: event id -> when Store.ingest had committed it
    ingested: dict[str, float] = field(default_factory=dict)
    #: message text -> when the connection actor started sending it to the agent
    sending: dict[str, float] = field(default_factory=dict)
    #: message text -> when the fake agent had read it off its socket
    at_agent: dict[str, float] = field(default_factory=dict)
    #: id(Transport) -> who it belongs to ("bot", "bare"; anything else is a user)
    owners: dict[int, str] = field(default_factory=dict)
    #: (owner, what) -> completed requests
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (owner, what) -> requests cancelled before their answer
    cancelled: Counter[tuple[str, str]] = field(default_factory=Counter)


PROBE = Probe()


def install_probes() -> None:
    """Wrap the few methods whose timing we read. Only this process is affected."""
    sync_json = MatrixClient.sync_json
    ingest = Store.ingest
    send_user_message = AgentConnection.send_user_message
    request = Transport.request

    async def stamped_sync_json(self: MatrixClient, *args: Any, **kwargs: Any) -> dict[str, Any]:
        body = await sync_json(self, *args, **kwargs)
        if self.user_id == PROBE.bot_user_id:
            now = time.perf_counter()
            PROBE.owners[id(self._transport)] = "bot"
            for room in body.get("rooms", {}).get("join", {}).values():
                for event in room.get("timeline", {}).get("events", []):
                    PROBE.synced.setdefault(event.get("event_id"), now)
        return body

    def stamped_ingest(self: Store, events: Any, next_batch: str) -> list[str]:
        events = list(events)
        rooms = ingest(self, events, next_batch)
        now = time.perf_counter()
        for event_id, *_ in events:
            PROBE.ingested.setdefault(event_id, now)
        return rooms

    async def stamped_send_user_message(self: AgentConnection, text: str, *args: Any, **kwargs: Any) -> None:
        PROBE.sending.setdefault(text, time.perf_counter())
        await send_user_message(self, text, *args, **kwargs)

    async def counted_request(self: Transport, *args: Any, what: str, **kwargs: Any) -> Any:
        key = (PROBE.owners.get(id(self), "users"), what)
        try:
            result = await request(self, *args, what=what, **kwargs)
        except trio.Cancelled:
            PROBE.cancelled[key] += 1
            raise
        PROBE.requests[key] += 1
        return result

    MatrixClient.sync_json = stamped_sync_json  # type: ignore[method-assign]
    Store.ingest = stamped_ingest  # type: ignore[method-assign]
    AgentConnection.send_user_message = stamped_send_user_message  # type: ignore[method-assign]
    Transport.request = counted_request  # type: ignore[method-assign]


class StampedFrames(list):
    """Stands in for ``FakeAgent.received``: stamps each USER_MESSAGE as it is recorded
    (the fake agent records a frame right after reading and parsing it)."""

    def append(self, item: Any) -> None:
        if isinstance(item.frame, UserMessage):
            PROBE.at_agent.setdefault(item.frame.text, time.perf_counter())
        super().append(item)


# --- users and the bare client --------------------------------------------------------


class BenchUser(ScriptedUser):
    """A scripted user that notes when each answer is marked done (in O(1), so the
    waiting costs the same however long the run)."""

    def __init__(self, client: MatrixClient, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.done_at: dict[str, float] = {}
        self._waiting: dict[str, trio.Event] = {}
        self.room: str = ""
        self.bare_room: str = ""

    def _record(self, body: dict[str, Any]) -> str:
        now = time.perf_counter()
        for room in body.get("rooms", {}).get("join", {}).values():
            for event in room.get("timeline", {}).get("events", []):
                content = event.get("content")
                if isinstance(content, dict) and content.get(DONE_KEY) and isinstance(content.get(SOURCE_KEY), str):
                    source = content[SOURCE_KEY]
                    self.done_at.setdefault(source, now)
                    if (waiter := self._waiting.pop(source, None)) is not None:
                        waiter.set()
        token = super()._record(body)
        # The base class keeps every event for its own waits; this benchmark
        # does not use them, and a long run would make them grow for nothing.
        self.seen.clear()
        return token

    async def done(self, event_id: str, timeout: float = ANSWER_TIMEOUT) -> float:
        if event_id not in self.done_at:
            waiter = self._waiting.setdefault(event_id, trio.Event())
            with trio.fail_after(timeout):
                await waiter.wait()
        return self.done_at[event_id]


async def bare_client(client: MatrixClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The baseline: sync, and answer every message from someone else at once with one reply."""
    filter_id = await client.create_filter()
    body = await client.sync_json(None, timeout_ms=0, filter_id=filter_id)
    token = body["next_batch"]
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            body = await client.sync_json(token, timeout_ms=30_000, filter_id=filter_id)
            token = body["next_batch"]
            for room_id, room in body.get("rooms", {}).get("join", {}).items():
                for event in room.get("timeline", {}).get("events", []):
                    if event.get("type") == "m.room.message" and event.get("sender") != client.user_id:
                        nursery.start_soon(_bare_reply, client, room_id, event)


async def _bare_reply(client: MatrixClient, room_id: str, event: dict[str, Any]) -> None:
    text = str(event.get("content", {}).get("body", ""))
    content = {**contents.text(f"echo: {text}"), SOURCE_KEY: event["event_id"], DONE_KEY: True}
    txn = "bare." + hashlib.sha256(event["event_id"].encode()).hexdigest()[:32]
    await client.send(room_id, "m.room.message", content, txn)


# --- measurements -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


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
    seconds: float
    send_to_done_ms: list[float]
    synapse_cpu_s: float
    process_cpu_s: float
    requests: Counter[tuple[str, str]]
    cancelled: Counter[tuple[str, str]]

    @property
    def rate(self) -> float:
        return self.replies / self.seconds


async def closed_loop(users: list[BenchUser], per_room: int, kind: str, synapse_pid: int) -> tuple[Phase, dict[str, str]]:
    """Each user: send, wait for the answer marked done, repeat ``per_room`` times; all at once."""
    sent: dict[str, str] = {}  # event id -> text
    latencies: list[float] = []
    nonce = secrets.token_hex(3)
    requests_before, cancelled_before = PROBE.requests.copy(), PROBE.cancelled.copy()
    synapse_before, process_before = cpu_seconds(synapse_pid), time.process_time()

    async def one_user(n: int, user: BenchUser) -> None:
        room = user.room if kind == "bot" else user.bare_room
        for k in range(per_room):
            text = f"{kind} {nonce} u{n} m{k}"
            begin = time.perf_counter()
            event_id = await user.say(room, text)
            sent[event_id] = text
            latencies.append((await user.done(event_id) - begin) * 1000)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n, user in enumerate(users):
            nursery.start_soon(one_user, n, user)
    elapsed = time.perf_counter() - start
    phase = Phase(
        kind,
        len(users) * per_room,
        elapsed,
        latencies,
        cpu_seconds(synapse_pid) - synapse_before,
        time.process_time() - process_before,
        PROBE.requests - requests_before,
        PROBE.cancelled - cancelled_before,
    )
    return phase, sent


def added_latencies(sent: dict[str, str]) -> dict[str, list[float]]:
    """Per message, in ms: sync → agent (the figure), and its three legs."""
    legs: dict[str, list[float]] = {"added": [], "sync_to_ingested": [], "ingested_to_sending": [], "sending_to_agent": []}
    for event_id, text in sent.items():
        synced, ingested = PROBE.synced.get(event_id), PROBE.ingested.get(event_id)
        sending, at_agent = PROBE.sending.get(text), PROBE.at_agent.get(text)
        if None in (synced, ingested, sending, at_agent):
            continue
        legs["added"].append((at_agent - synced) * 1000)
        legs["sync_to_ingested"].append((ingested - synced) * 1000)
        legs["ingested_to_sending"].append((sending - ingested) * 1000)
        legs["sending_to_agent"].append((at_agent - sending) * 1000)
    return legs


async def sequential(users: list[BenchUser], count: int) -> tuple[dict[str, str], list[float]]:
    """``count`` messages one at a time, round robin over the users' rooms."""
    sent: dict[str, str] = {}
    round_trips: list[float] = []
    nonce = secrets.token_hex(3)
    for k in range(count):
        user = users[k % len(users)]
        text = f"latency {nonce} m{k}"
        begin = time.perf_counter()
        event_id = await user.say(user.room, text)
        sent[event_id] = text
        round_trips.append((await user.done(event_id) - begin) * 1000)
    return sent, round_trips


async def websocket_hop(count: int) -> list[float]:
    """The floor under the last leg: one trio-websocket message, client → server, in this process."""
    hops: list[float] = []
    received = trio.Event()
    stamps: list[float] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal received
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
                stamps.append(time.perf_counter())
                received.set()
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as ws:
            frame = json.dumps({"type": "USER_MESSAGE", "text": "latency abcdef m0", "attachments": []})
            for _ in range(count):
                received = trio.Event()
                begin = time.perf_counter()
                await ws.send_message(frame)
                await received.wait()
                hops.append((stamps[-1] - begin) * 1000)
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    return hops


# --- the run ----------------------------------------------------------------------------------


async def onboard(stack: Any, user: BenchUser) -> None:
    """Invite the bot to a direct chat, join "Chat 1" (the room used from then on)."""
    dm = await user.start_dm(stack.bot_id)
    await user.notice(dm, "Hello! I connect you to", timeout=ANSWER_TIMEOUT)
    user.room = await user.accept_invite("Chat 1", timeout=ANSWER_TIMEOUT)
    await user.notice(user.room, 'This is "Chat 1"', timeout=ANSWER_TIMEOUT)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    install_probes()
    names = [f"user{n:02d}" for n in range(ROOMS)]
    log_file = open(workdir / "bot.log", "w")
    result: dict[str, Any] = {}
    async with AsyncExitStack() as exits:
        exits.callback(log_file.close)
        stack = await exits.enter_async_context(
            open_loopback_stack(
                workdir / "stack", agents=2, users=names, timing=Timing(), supervision=ROOT / "supervision.toml"
            )
        )
        PROBE.bot_user_id = stack.bot_id
        configure_logging(SecretMask([stack.bot_user.password]), level=args.log_level, stream=log_file)
        for agent in stack.agents:
            agent.received = StampedFrames(agent.received)
        await stack.start_bot()

        clients: list[MatrixClient] = []

        async def close_clients() -> None:
            for client in clients:
                await client.aclose()

        exits.push_async_callback(close_clients)
        users: list[BenchUser] = []
        for name in names:
            registered = stack.users[name]
            client = MatrixClient(stack.homeserver.url, access_token=registered.access_token, user_id=registered.user_id)
            clients.append(client)
            user = BenchUser(client, sync_timeout_ms=30_000)
            await stack.nursery.start(user.run)
            users.append(user)

        # The baseline's account, in rooms of its own with the same users.
        bare_registered = await trio.to_thread.run_sync(
            lambda: register_user(
                stack.homeserver.url,
                stack.homeserver.registration_shared_secret,
                f"bare-{secrets.token_hex(3)}",
                secrets.token_urlsafe(12),
            )
        )
        bare = MatrixClient(stack.homeserver.url, access_token=bare_registered.access_token, user_id=bare_registered.user_id)
        clients.append(bare)
        PROBE.owners[id(bare._transport)] = "bare"

        progress("onboarding 20 users")
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(onboard, stack, user)
        for user in users:
            user.bare_room = await user.client.create_room(invite=[bare.user_id], is_direct=True)
            await bare.join(user.bare_room)
        await stack.nursery.start(bare_client, bare)

        # Warm-up: every chat's agent socket is open, every connection pool is
        # filled, and both sides have answered once before anything is timed.
        progress("warming up")
        await closed_loop(users, 2, "bot", stack.homeserver.pid)
        await closed_loop(users, 2, "bare", stack.homeserver.pid)

        progress(f"added latency: {args.latency} messages, one at a time")
        sent, round_trips = await sequential(users, args.latency)
        legs = added_latencies(sent)
        hops = await websocket_hop(args.latency)

        phases: list[Phase] = []
        loaded: dict[str, str] = {}
        for r in range(args.rounds):
            order = ("bot", "bare") if r % 2 == 0 else ("bare", "bot")
            for kind in order:
                progress(f"round {r + 1}/{args.rounds}: {kind}, {ROOMS} rooms x {args.per_room} messages")
                phase, phase_sent = await closed_loop(users, args.per_room, kind, stack.homeserver.pid)
                phases.append(phase)
                if kind == "bot":
                    loaded.update(phase_sent)
        loaded_legs = added_latencies(loaded)

        bot_rates = [p.rate for p in phases if p.kind == "bot"]
        bare_rates = [p.rate for p in phases if p.kind == "bare"]
        replies_per_s = statistics.median(bot_rates)
        bare_replies_per_s = statistics.median(bare_rates)
        per_round = [b / a for b, a in zip(bot_rates, bare_rates)]
        result = {
            "added_latency_p50_ms": percentile(legs["added"], 50),
            "added_latency_p99_ms": percentile(legs["added"], 99),
            "added_latency_samples": len(legs["added"]),
            "added_latency_goal_p50_ms": 5.0,
            "latency_legs_p50_ms": {k: percentile(v, 50) for k, v in legs.items() if k != "added"},
            "websocket_hop_p50_ms": percentile(hops, 50),
            "websocket_hop_p99_ms": percentile(hops, 99),
            "send_to_done_p50_ms_one_at_a_time": percentile(round_trips, 50),
            "loaded_added_latency_p50_ms": percentile(loaded_legs["added"], 50),
            "loaded_added_latency_p99_ms": percentile(loaded_legs["added"], 99),
            "replies_per_s": replies_per_s,
            "bare_replies_per_s": bare_replies_per_s,
            "throughput_ratio": replies_per_s / bare_replies_per_s,
            "throughput_ratio_goal": 0.8,
            "throughput_ratio_per_round": per_round,
            "rooms": ROOMS,
            "messages_per_room": args.per_room,
            "rounds": args.rounds,
            "bot": "in-process (LoopbackStack.start_bot)",
            "phases": [phase_summary(p) for p in phases],
        }
        progress("stopping")
    return result


def phase_summary(p: Phase) -> dict[str, Any]:
    per_reply = {f"{who} {what}": round(n / p.replies, 3) for (who, what), n in sorted(p.requests.items())}
    cancelled = {f"{who} {what}": round(n / p.replies, 3) for (who, what), n in sorted(p.cancelled.items())}
    return {
        "kind": p.kind,
        "replies": p.replies,
        "seconds": round(p.seconds, 3),
        "replies_per_s": round(p.rate, 2),
        "send_to_done_p50_ms": round(percentile(p.send_to_done_ms, 50), 2),
        "send_to_done_p99_ms": round(percentile(p.send_to_done_ms, 99), 2),
        "synapse_cpu_ms_per_reply": round(p.synapse_cpu_s / p.replies * 1000, 2),
        "process_cpu_ms_per_reply": round(p.process_cpu_s / p.replies * 1000, 2),
        "requests_per_reply": per_reply,
        "cancelled_per_reply": cancelled,
    }


_QUIET = False


def progress(message: str) -> None:
    if not _QUIET:
        print(f"... {message}", file=sys.stderr, flush=True)


def report(r: dict[str, Any]) -> None:
    f = lambda x: f"{x:.2f}"  # noqa: E731
    print(f"bot benchmark: {r['rooms']} rooms x {r['messages_per_room']} messages x {r['rounds']} round(s); bot {r['bot']}")
    print()
    print(f"added latency (sync -> USER_MESSAGE at the agent), {r['added_latency_samples']} messages one at a time")
    print(f"  p50 {f(r['added_latency_p50_ms'])} ms   p99 {f(r['added_latency_p99_ms'])} ms   goal p50 <= 5 ms")
    legs = r["latency_legs_p50_ms"]
    print(
        f"  p50 legs: sync -> inbox committed {f(legs['sync_to_ingested'])} ms, "
        f"-> connection sends {f(legs['ingested_to_sending'])} ms, -> agent has it {f(legs['sending_to_agent'])} ms"
    )
    print(f"  bare WebSocket hop in this process: p50 {f(r['websocket_hop_p50_ms'])} ms, p99 {f(r['websocket_hop_p99_ms'])} ms")
    print(
        f"  under the 20-room load: p50 {f(r['loaded_added_latency_p50_ms'])} ms, p99 {f(r['loaded_added_latency_p99_ms'])} ms"
    )
    print(f"  user send -> answer done, one at a time: p50 {f(r['send_to_done_p50_ms_one_at_a_time'])} ms")
    print()
    print(f"{'':20}{'bot':>12}{'bare client':>14}{'ratio':>8}  goal")
    print(
        f"{'replies/s':20}{r['replies_per_s']:>12.1f}{r['bare_replies_per_s']:>14.1f}"
        f"{r['throughput_ratio']:>8.2f}  >= {r['throughput_ratio_goal']}"
    )
    print("  ratio per round: " + ", ".join(f"{x:.2f}" for x in r["throughput_ratio_per_round"]))
    print()
    print(f"{'phase':6}{'replies/s':>10}{'done p50':>10}{'p99':>9}{'Synapse CPU':>13}{'our CPU':>9}  requests per reply")
    for p in r["phases"]:
        requests = ", ".join(f"{k} {v:g}" for k, v in p["requests_per_reply"].items())
        if p["cancelled_per_reply"]:
            requests += "; cancelled: " + ", ".join(f"{k} {v:g}" for k, v in p["cancelled_per_reply"].items())
        print(
            f"{p['kind']:6}{p['replies_per_s']:>10.1f}{p['send_to_done_p50_ms']:>8.1f}ms{p['send_to_done_p99_ms']:>7.0f}ms"
            f"{p['synapse_cpu_ms_per_reply']:>10.1f} ms{p['process_cpu_ms_per_reply']:>6.1f} ms  {requests}"
        )


def main() -> None:
    global _QUIET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer messages: under a minute")
    parser.add_argument("--latency", type=int, help="messages for the added latency (default 300; quick 100)")
    parser.add_argument("--per-room", type=int, help="messages per room per round (default 25; quick 5)")
    parser.add_argument("--rounds", type=int, help="bot/bare round pairs (default 3; quick 1)")
    parser.add_argument("--log-level", default="INFO", help="the bot's log level (to a file in the work dir; default INFO)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (Synapse's and the bot's logs)")
    args = parser.parse_args()
    args.latency = args.latency or (100 if args.quick else 300)
    args.per_room = args.per_room or (5 if args.quick else 25)
    args.rounds = args.rounds or (1 if args.quick else 3)
    _QUIET = args.json
    workdir = Path(tempfile.mkdtemp(prefix="bench-bot-"))
    try:
        result = trio.run(bench, args, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
