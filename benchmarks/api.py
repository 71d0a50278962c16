"""Benchmark of the node's HTTP API (SPEC 7.1, issue 13's figures), each against a bare baseline in the same run.

    .venv/bin/python benchmarks/api.py            # a table (about 3 minutes)
    .venv/bin/python benchmarks/api.py --json     # one JSON object on stdout (the table goes to stderr)

One run starts a throwaway Synapse (``open_loopback_stack``: one fake agent,
three users), and the node as a real process: ``lambda-actors run`` with
the repository's ``supervision.toml``, production timings, ``--http`` on a
free loopback port and a ``node.toml`` holding the SHA-256 of a token this
run makes. The approver (alice) onboards as a person would and gets "Chat
1"; everything else lives in this process: alice's syncing client, a bare
poster (a plain account alice invites into Chat 1, which the bot ignores:
it is not the room's owner), a bare relay receiver (a plain account in a
room of its own with alice), the callback receiver (hypercorn + starlette,
loopback) and the HTTP clients. One more process serves the bare ASGI app.
Every time is ``time.monotonic()`` in this process, except the split of the
decision path, which reads the record's ``decided_at`` (wall clock, the
same machine).

- **Prompt** (``prompt_p50_ms``): the approval-request POST is sent -> alice's
  sync returns the prompt (``org.lambda.approval.id``). **Bare post**
  (``bare_post_p50_ms``): the bare poster PUTs a message into Chat 1 ->
  alice's sync returns it.
- **Decision** (``decision_to_callback_p50_ms``): alice's ✅ reaction on the
  prompt is sent -> the callback POST reaches the receiver. **Bare relay**
  (``bare_relay_p50_ms``): alice PUTs a message into the relay room -> the
  relay receiver's sync (the bot's filter, 30 s long-poll) returns it.
  Prompts and bare posts run in alternating rounds (node first in even
  rounds, bare first in odd ones), one at a time, each waiting for the
  previous to be seen (and a decided prompt's edit to arrive) before the next.
- **GET throughput** (``get_per_s``): ``GET /api/v1/delivery/approval-request/{id}``
  of a decided record (through the approvals actor: a call), 8 concurrent
  workers sharing one keep-alive httpx client, a fixed count. **Bare**
  (``bare_get_per_s``): the same client settings against a minimal starlette
  JSON route returning the same record's JSON, on hypercorn's Trio worker
  in a process of its own (as the node has its own process; served from
  this process, the server would share one thread with the client, which
  would halve its rate and flatter the ratio; that figure is shown too, as
  "bare, in this process"). Alternating rounds again; the server processes'
  CPU per request says where the time goes.
- **Deadline** (``deadline_late_p99_ms``): requests with ``timeout_s=10`` (the
  minimum), sent one every few seconds from the start of the prompt rounds,
  so they expire during the benchmark's own load; lateness is the record's
  ``decided_at - expires_at``.

This is a benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lambda_actors.approvals.prompt import APPROVAL_KEY  # noqa: E402
from lambda_actors.loopback.stack import open_loopback_stack  # noqa: E402
from lambda_actors.loopback.user import ScriptedUser  # noqa: E402
from lambda_actors.matrix import content as contents  # noqa: E402
from lambda_actors.matrix.client import MatrixClient  # noqa: E402
from lambda_actors.loopback.homeserver import free_port  # noqa: E402
from lambda_actors.node.config import new_token  # noqa: E402
from bot import cpu_seconds, percentile  # noqa: E402  (benchmarks/bot.py, beside this file)

GOALS = {"prompt_ratio": 1.5, "decision_ratio": 1.5, "get_ratio": 0.7, "deadline_late_p99_ms": 1000.0}
WAIT = 60.0  # longest wait for any one observation
START_TIMEOUT = 90.0
CONCURRENCY = 8
MIN_TIMEOUT_S = 10


# --- small helpers ---------------------------------------------------------------------


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


_QUIET = False
_STARTED = time.monotonic()


def progress(message: str) -> None:
    if not _QUIET:
        print(f"... {time.monotonic() - _STARTED:5.1f} s  {message}", file=sys.stderr, flush=True)


class Stamps:
    """Key -> when first seen (monotonic), with a wait that does not poll."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self._changed = trio.Event()

    def stamp(self, key: str, now: float, extra: Any = None) -> None:
        if key not in self.at:
            self.at[key] = now
            if extra is not None:
                self.extra[key] = extra
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, key: str, timeout: float = WAIT) -> float:
        with trio.fail_after(timeout):
            while key not in self.at:
                await self._changed.wait()
        return self.at[key]


class Watcher(ScriptedUser):
    """A scripted user whose sync stamps every event id, every prompt and every edit on arrival."""

    def __init__(self, client: MatrixClient, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.events = Stamps()  # event id
        self.prompts = Stamps()  # approval id -> arrival, extra: the prompt's event id
        self.edits = Stamps()  # edited event id
        self.forget_seen = False

    def _record(self, body: dict[str, Any]) -> str:
        now = time.monotonic()
        for room in body.get("rooms", {}).get("join", {}).values():
            for event in room.get("timeline", {}).get("events", []):
                event_id = str(event.get("event_id", ""))
                self.events.stamp(event_id, now)
                content = event.get("content")
                if not isinstance(content, dict):
                    continue
                relates = content.get("m.relates_to") or {}
                if relates.get("rel_type") == "m.replace":
                    self.edits.stamp(str(relates.get("event_id")), now)
                elif isinstance(mark := content.get(APPROVAL_KEY), dict) and "m.relates_to" not in content:
                    self.prompts.stamp(str(mark.get("id")), now, event_id)
        token = super()._record(body)
        if self.forget_seen:
            self.seen.clear()
        return token


# --- the bare ASGI app (its own process, and in this one for comparison) --------------------


def bare_app(record: dict[str, Any]) -> Starlette:
    async def read(request: Request) -> JSONResponse:
        return JSONResponse(record)

    return Starlette(routes=[Route("/api/v1/delivery/approval-request/{id}", read, methods=["GET"])])


def hypercorn_config(port: int) -> Config:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    return config


def serve_bare(args: argparse.Namespace) -> int:
    """The bare server process: hypercorn's Trio worker on a one-route starlette app."""
    record = json.loads(Path(args.body_file).read_text())

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, bare_app(record), hypercorn_config(args.port))
                Path(args.ready_file).write_text("ready")
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


# --- the benchmark -------------------------------------------------------------------------


async def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(START_TIMEOUT):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the node exited ({process.returncode}); see {log}")
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)


async def get_phase(client: httpx.AsyncClient, path: str, per_worker: int) -> tuple[float, int, int]:
    """CONCURRENCY workers, ``per_worker`` GETs each: (seconds, ok, errors)."""
    ok = errors = 0

    async def worker() -> None:
        nonlocal ok, errors
        for _ in range(per_worker):
            response = await client.get(path)
            if response.status_code == 200:
                ok += 1
            else:
                errors += 1

    begin = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker)
    return time.monotonic() - begin, ok, errors


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    token, digest = new_token()
    node_toml = workdir / "node.toml"
    node_toml.write_text(f'[[api.clients]]\nname = "bench"\ntoken_sha256 = "{digest}"\nscopes = ["approvals"]\n')
    auth = {"Authorization": f"Bearer {token}"}
    node_port = free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    log = workdir / "node.log"

    async with AsyncExitStack() as exits:
        progress("starting Synapse, registering users")
        stack = await exits.enter_async_context(open_loopback_stack(workdir / "stack", agents=1, users=["alice", "poster", "relay"]))
        hs = stack.homeserver
        progress("starting the node (lambda-actors run --http)")
        process = stack.start_bot_process(
            ROOT / "lambda_actors" / "bot" / "supervision.toml", log, http=f"127.0.0.1:{node_port}", node_config=node_toml
        )
        await wait_healthy(node_url, process, log)

        clients: list[MatrixClient] = []

        async def close_clients() -> None:
            for c in clients:
                await c.aclose()

        # Exits run last first: the syncs and servers are cancelled, then
        # their nursery ends, then the clients close, then the stack stops.
        exits.push_async_callback(close_clients)
        tasks = await exits.enter_async_context(trio.open_nursery())
        exits.callback(tasks.cancel_scope.cancel)

        def client_for(name: str) -> MatrixClient:
            registered = stack.users[name]
            c = MatrixClient(hs.url, access_token=registered.access_token, user_id=registered.user_id)
            clients.append(c)
            return c

        alice = Watcher(client_for("alice"), sync_timeout_ms=30_000)
        relay = Watcher(client_for("relay"), sync_timeout_ms=30_000)
        poster = client_for("poster")
        await tasks.start(alice.run)

        progress("onboarding alice (direct chat, Space, Chat 1)")
        dm = await alice.start_dm(stack.bot_id)
        await alice.notice(dm, "Hello! I connect you to", timeout=WAIT)
        chat1 = await alice.accept_invite("Chat 1", timeout=WAIT)
        await alice.notice(chat1, 'This is "Chat 1"', timeout=WAIT)
        await alice.client.invite(chat1, poster.user_id or "")
        await poster.join(chat1)
        relay_room = await alice.client.create_room(invite=[relay.client.user_id or ""])
        await relay.client.join(relay_room)
        filter_id = await relay.client.create_filter()  # the bot's own sync filter

        async def relay_run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            token_ = relay._record(await relay.client.sync(None, timeout_ms=0, filter_id=filter_id))
            task_status.started()
            while True:
                token_ = relay._record(await relay.client.sync(token_, timeout_ms=30_000, filter_id=filter_id))

        await tasks.start(relay_run)
        alice.forget_seen = relay.forget_seen = True

        # The callback receiver: stamps each callback on arrival.
        callbacks = Stamps()

        async def callback(request: Request) -> Response:
            now = time.monotonic()
            record = json.loads(await request.body())
            callbacks.stamp(str(record.get("id")), now, record)
            return Response(status_code=204)

        cb_port = free_port()
        await tasks.start(serve, Starlette(routes=[Route("/cb", callback, methods=["POST"])]), hypercorn_config(cb_port))
        callback_url = f"http://127.0.0.1:{cb_port}/cb"

        api = httpx.AsyncClient(base_url=node_url, headers=auth, timeout=90)
        exits.push_async_callback(api.aclose)
        nonce = secrets.token_hex(3)
        counter = iter(range(1_000_000))

        # --- prompts and decisions vs bare posts and relays -------------------------------
        prompt_ms: list[float] = []
        post_ms: list[float] = []  # the POST's own answer time
        decision_ms: list[float] = []
        react_to_decided_ms: list[float] = []
        decided_to_callback_ms: list[float] = []
        bare_post_ms: list[float] = []
        bare_relay_ms: list[float] = []
        decided_ids: list[str] = []

        async def one_approval(record_it: bool) -> None:
            n = next(counter)
            body = {"request_id": f"bench-{nonce}-{n}", "approver": alice.user_id, "agent_id": "agent-0",
                    "action": f"Benchmark action {n}", "details": "rm -rf build/", "timeout_s": 600, "callback_url": callback_url}
            begin = time.monotonic()
            response = await api.post("/api/v1/delivery/approval-request", json=body)
            answered = time.monotonic()
            if response.status_code != 201:
                raise RuntimeError(f"approval-request answered {response.status_code}: {response.text}")
            approval_id = response.json()["id"]
            seen = await alice.prompts.wait(approval_id)
            prompt_event = alice.prompts.extra[approval_id]
            react_wall, react_at = time.time(), time.monotonic()
            await alice.react(chat1, prompt_event, "✅")
            called = await callbacks.wait(approval_id)
            await alice.edits.wait(prompt_event)  # the prompt's edit: the node's work for it is done
            record = callbacks.extra[approval_id]
            if record.get("status") != "approved":
                raise RuntimeError(f"callback for {approval_id} says {record.get('status')}")
            decided_ids.append(approval_id)
            if record_it:
                prompt_ms.append((seen - begin) * 1000)
                post_ms.append((answered - begin) * 1000)
                decision_ms.append((called - react_at) * 1000)
                decided_wall = wall(record["decided_at"])
                react_to_decided_ms.append((decided_wall - react_wall) * 1000)
                decided_to_callback_ms.append(((called - react_at) - (decided_wall - react_wall)) * 1000)

        async def one_bare(record_it: bool) -> None:
            n = next(counter)
            begin = time.monotonic()
            event_id = await poster.send(chat1, "m.room.message", contents.text(f"bare post {n}"), f"bench-{nonce}-{n}")
            seen = await alice.events.wait(event_id)
            relay_begin = time.monotonic()
            relay_event = await alice.client.send(relay_room, "m.room.message", contents.text(f"relay {n}"), f"bench-{nonce}-{n}")
            relayed = await relay.events.wait(relay_event)
            if record_it:
                bare_post_ms.append((seen - begin) * 1000)
                bare_relay_ms.append((relayed - relay_begin) * 1000)

        progress("warming up")
        for _ in range(2):
            await one_approval(False)
            await one_bare(False)

        # --- deadlines: spread over the rest of the run ---------------------------------------
        deadline_ids: list[str] = []

        async def deadlines() -> None:
            async with httpx.AsyncClient(base_url=node_url, headers=auth, timeout=90) as own:
                for n in range(args.deadlines):
                    body = {"request_id": f"bench-{nonce}-deadline-{n}", "approver": alice.user_id, "agent_id": "agent-0",
                            "action": f"Benchmark deadline {n}", "timeout_s": MIN_TIMEOUT_S}
                    response = await own.post("/api/v1/delivery/approval-request", json=body)
                    if response.status_code != 201:
                        raise RuntimeError(f"approval-request answered {response.status_code}: {response.text}")
                    deadline_ids.append(response.json()["id"])
                    # Spaced, with a sub-second offset that differs each time.
                    await trio.sleep(args.deadline_every + (n * 0.37) % 1.0)

        tasks.start_soon(deadlines)

        per_round = max(1, args.count // args.rounds)
        for r in range(args.rounds):
            for kind in ("node", "bare") if r % 2 == 0 else ("bare", "node"):
                progress(f"latency round {r + 1}/{args.rounds}: {kind}, {per_round} one at a time")
                for _ in range(per_round):
                    await (one_approval(True) if kind == "node" else one_bare(True))
                    await trio.sleep(0.1)

        # --- GET throughput ---------------------------------------------------------------------
        target = decided_ids[-1]
        record = (await api.get(f"/api/v1/delivery/approval-request/{target}")).json()
        body_file = workdir / "record.json"
        body_file.write_text(json.dumps(record))
        bare_port = free_port()
        ready = workdir / "bare.ready"
        bare_process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--port", str(bare_port),
             "--body-file", str(body_file), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "bare.log", "wb"),
        )

        async def stop_bare() -> None:
            if bare_process.poll() is None:
                bare_process.send_signal(signal.SIGTERM)
                try:
                    await trio.to_thread.run_sync(bare_process.wait, 10)
                except subprocess.TimeoutExpired:
                    bare_process.kill()
                    bare_process.wait()

        exits.push_async_callback(stop_bare)
        with trio.fail_after(START_TIMEOUT):
            while not ready.exists():
                if bare_process.poll() is not None:
                    raise RuntimeError(f"the bare server exited; see {workdir / 'bare.log'}")
                await trio.sleep(0.05)
        local_port = free_port()
        await tasks.start(serve, bare_app(record), hypercorn_config(local_port))

        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        targets = {
            "node": (node_url, process.pid),
            "bare": (f"http://127.0.0.1:{bare_port}", bare_process.pid),
            "bare, in this process": (f"http://127.0.0.1:{local_port}", None),
        }
        get_clients = {}
        for name, (url, _) in targets.items():
            client = httpx.AsyncClient(base_url=url, headers=auth, timeout=30, limits=limits)
            exits.push_async_callback(client.aclose)
            get_clients[name] = client
        path = f"/api/v1/delivery/approval-request/{target}"
        progress("GET warm-up")
        for client in get_clients.values():
            await get_phase(client, path, 5)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu_ms: dict[str, list[float]] = {name: [] for name in targets}
        client_cpu_ms: dict[str, list[float]] = {name: [] for name in targets}
        get_errors = 0
        for r in range(args.get_rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                progress(f"GET round {r + 1}/{args.get_rounds}: {name}, {CONCURRENCY} x {args.gets}")
                pid = targets[name][1]
                cpu0 = cpu_seconds(pid) if pid else float("nan")
                own0 = cpu_seconds(os.getpid())
                seconds, ok, errors = await get_phase(get_clients[name], path, args.gets)
                client_cpu_ms[name].append((cpu_seconds(os.getpid()) - own0) / max(ok, 1) * 1000)
                get_errors += errors
                rates[name].append(ok / seconds)
                if pid:
                    cpu_ms[name].append((cpu_seconds(pid) - cpu0) / max(ok, 1) * 1000)

        # --- deadlines: read the records ---------------------------------------------------------
        progress("waiting for the last deadline")
        while len(deadline_ids) < args.deadlines:
            await trio.sleep(0.2)
        late_ms: list[float] = []
        for approval_id in deadline_ids:
            got = (await api.get(f"/api/v1/delivery/approval-request/{approval_id}?wait=30")).json()
            if got.get("status") != "expired":
                raise RuntimeError(f"deadline request {approval_id} is {got.get('status')}, not expired")
            late_ms.append((wall(got["decided_at"]) - wall(got["expires_at"])) * 1000)
        progress("stopping")

    get_per_s = statistics.median(rates["node"])
    bare_get_per_s = statistics.median(rates["bare"])
    prompt_p50, bare_post_p50 = percentile(prompt_ms, 50), percentile(bare_post_ms, 50)
    decision_p50, bare_relay_p50 = percentile(decision_ms, 50), percentile(bare_relay_ms, 50)
    result = {
        "prompt_p50_ms": round(prompt_p50, 1),
        "bare_post_p50_ms": round(bare_post_p50, 1),
        "prompt_ratio": round(prompt_p50 / bare_post_p50, 2),
        "decision_to_callback_p50_ms": round(decision_p50, 1),
        "bare_relay_p50_ms": round(bare_relay_p50, 1),
        "decision_ratio": round(decision_p50 / bare_relay_p50, 2),
        "get_per_s": round(get_per_s, 1),
        "bare_get_per_s": round(bare_get_per_s, 1),
        "get_ratio": round(get_per_s / bare_get_per_s, 2),
        "deadline_late_p99_ms": round(percentile(late_ms, 99), 1),
        "counts": {
            "prompts": len(prompt_ms), "bare_posts": len(bare_post_ms), "decisions": len(decision_ms),
            "bare_relays": len(bare_relay_ms), "latency_rounds": args.rounds,
            "gets_per_round": CONCURRENCY * args.gets, "get_rounds": args.get_rounds, "get_concurrency": CONCURRENCY,
            "get_errors": get_errors, "deadlines": len(late_ms),
        },
    }
    details = {
        "load_before": load_before, "load_after": os.getloadavg(),
        "p90": {"prompt": percentile(prompt_ms, 90), "bare_post": percentile(bare_post_ms, 90),
                "decision": percentile(decision_ms, 90), "bare_relay": percentile(bare_relay_ms, 90)},
        "post_answer_p50_ms": percentile(post_ms, 50),
        "react_to_decided_p50_ms": percentile(react_to_decided_ms, 50),
        "decided_to_callback_p50_ms": percentile(decided_to_callback_ms, 50),
        "rates": rates, "cpu_ms": cpu_ms, "client_cpu_ms": client_cpu_ms, "late_ms": late_ms,
        "bare_inprocess_get_per_s": statistics.median(rates["bare, in this process"]),
    }
    return {"result": result, "details": details}


async def bounded(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with trio.fail_after(args.time_limit):  # bounded whatever happens; every exit still runs
        return await bench(args, workdir)


def report(out: dict[str, Any], file: Any) -> None:
    r, d = out["result"], out["details"]
    c = r["counts"]

    def mark(ok: bool) -> str:
        return "holds" if ok else "MISSED"

    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"api benchmark: load average {d['load_before'][0]:.2f} before, {d['load_after'][0]:.2f} after (1 min)")
    p()
    p(f"{'':40}{'node':>9}{'bare':>9}{'ratio':>7}  goal")
    p(f"{'prompt seen, p50 ms':40}{r['prompt_p50_ms']:>9.1f}{r['bare_post_p50_ms']:>9.1f}{r['prompt_ratio']:>7.2f}  "
      f"<= 1.5 {mark(r['prompt_ratio'] <= GOALS['prompt_ratio'])}   ({c['prompts']} + {c['bare_posts']})")
    p(f"{'  p90 ms':40}{d['p90']['prompt']:>9.1f}{d['p90']['bare_post']:>9.1f}")
    p(f"{'reaction -> callback, p50 ms':40}{r['decision_to_callback_p50_ms']:>9.1f}{r['bare_relay_p50_ms']:>9.1f}"
      f"{r['decision_ratio']:>7.2f}  <= 1.5 {mark(r['decision_ratio'] <= GOALS['decision_ratio'])}   ({c['decisions']} + {c['bare_relays']})")
    p(f"{'  p90 ms':40}{d['p90']['decision']:>9.1f}{d['p90']['bare_relay']:>9.1f}")
    p(f"{'GET approval-request, per s (median)':40}{r['get_per_s']:>9.1f}{r['bare_get_per_s']:>9.1f}{r['get_ratio']:>7.2f}  "
      f">= 0.7 {mark(r['get_ratio'] >= GOALS['get_ratio'])}   ({c['get_rounds']} rounds x {c['gets_per_round']}, {c['get_errors']} errors)")
    p(f"{'deadline late, p99 ms':40}{r['deadline_late_p99_ms']:>9.1f}{'':16}  <= 1000 "
      f"{mark(r['deadline_late_p99_ms'] <= GOALS['deadline_late_p99_ms'])}   ({c['deadlines']} requests)")
    p()
    p(f"where the prompt's time goes: the POST answered after p50 {d['post_answer_p50_ms']:.1f} ms")
    p(f"where the decision's time goes: reaction sent -> record decided p50 {d['react_to_decided_p50_ms']:.1f} ms, "
      f"decided -> callback received p50 {d['decided_to_callback_p50_ms']:.1f} ms")
    for name, rates in d["rates"].items():
        cpu = d["cpu_ms"].get(name) or []
        cpu_text = f"; server process CPU per request {statistics.median(cpu):.2f} ms" if cpu else ""
        cpu_text += f"; this process (client{'' if cpu else ' and server'}) {statistics.median(d['client_cpu_ms'][name]):.2f} ms"
        p(f"GET {name}: " + ", ".join(f"{x:.0f}" for x in rates) + f" per s{cpu_text}")
    p("deadline lateness (ms): " + ", ".join(f"{x:.0f}" for x in d["late_ms"]))


def main() -> int:
    global _QUIET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    parser.add_argument("--count", type=int, default=20, help="prompts+decisions, and bare posts+relays (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating latency rounds per side (default 4)")
    parser.add_argument("--gets", type=int, default=50, help=f"GETs per worker per round ({CONCURRENCY} workers; default 50)")
    parser.add_argument("--get-rounds", type=int, default=4, help="alternating GET rounds (default 4)")
    parser.add_argument("--deadlines", type=int, default=10, help="requests left to expire (default 10)")
    parser.add_argument("--deadline-every", type=float, default=5.0, help="seconds between them (default 5)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="give up after this many seconds (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (the node's log)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--port", "--body-file", "--ready-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        args.port = int(args.port)
        return serve_bare(args)
    _QUIET = args.json
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        out = trio.run(bounded, args, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(out["result"]))
        report(out, sys.stderr)
    else:
        report(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
