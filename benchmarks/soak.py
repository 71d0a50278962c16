"""Soak: many messages through the bot on loopback; does its memory and its
database level off?

    .venv/bin/python benchmarks/soak.py                    # 20,000 messages, light driver, a table
    .venv/bin/python benchmarks/soak.py --messages 2000    # a short run
    .venv/bin/python benchmarks/soak.py --json             # one JSON object
    .venv/bin/python benchmarks/soak.py --driver synapse   # through a real Synapse (slow: hours on 2 busy cores)

Two drivers. Both use two real fake agents (one post per answer, no edits:
the soak is about growth, not streaming) and the bot's own code with a short
compaction horizon (``--horizon``, ``--compaction-interval``), so that what a
day of traffic does to the store shows within the run.

``light`` (the default) runs the bot's supervision tree (``serve_node``) in
this process against an in-memory homeserver (:class:`MemoryHomeserver`, an
``httpx.MockTransport``): ``--users`` rooms already bound, each sending its
next message when the previous one's answer (marked done) was posted. No
Synapse, so 20,000 messages take minutes; the RSS is this one process's (bot,
fake agents and driver; the fake agents' record of frames is cleared at each
sample, the driver keeps nothing).

``synapse`` starts a throwaway Synapse and the fake agents in this process,
and the bot as a process of its own: this script run again with ``_bot``,
which is ``run_bot`` with the package's supervision policy and the short
compaction horizon. ``--users`` users
each open a direct chat with the bot and then, all at once, send messages
one after the other, each waiting for its answer marked done
(``org.lambda.done``) before the next. The users are lean clients that keep
nothing of what they see but the answers they wait for.

Every ``--sample-every`` messages the run records the bot process's RSS
(``VmRSS``), the database's file size (main file and WAL apart) and the rows
of its growing tables (read through a second, read-only connection). Levelled
off means: after the first samples (start-up, first compaction) the curves
stay flat while the message count keeps growing.

This is a benchmark, not a test: nothing here asserts, and it is not part of
the timed suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lambda_actors.bot.actors.services import DONE_KEY, SOURCE_KEY  # noqa: E402
from lambda_actors.bot.agents_directory import AgentDirectory  # noqa: E402
from lambda_actors.matrix import content as contents  # noqa: E402
from lambda_actors.matrix import events as ev  # noqa: E402
from lambda_actors.matrix.client import MatrixClient  # noqa: E402


# -- the bot process ------------------------------------------------------------------


def bot_main(argv: list[str]) -> None:
    """``soak.py _bot CONFIG DATA_DIR INTERVAL HORIZON``: the bot, until SIGTERM."""
    from lambda_actors.bot.actors.node import run_bot
    from lambda_actors.bot.actors.services import Timing
    from lambda_actors.bot.config import MatrixSettings, load_agents_config

    config, data_dir, interval, horizon = argv
    settings = MatrixSettings.from_env()
    agents = load_agents_config(config)
    shipped = ROOT / "lambda_actors" / "bot" / "supervision.toml"
    timing = Timing(compaction_interval=float(interval), compaction_horizon=float(horizon))

    async def main() -> None:
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        stop.set()
                        return

                nursery.start_soon(on_signal)
                await run_bot(settings, agents, shipped if shipped.exists() else None, Path(data_dir), stop, timing=timing)
                nursery.cancel_scope.cancel()

    trio.run(main)


# -- measuring --------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def db_figures(db_path: Path) -> dict[str, Any]:
    wal = db_path.with_name(db_path.name + "-wal")
    figures: dict[str, Any] = {
        "db_bytes": db_path.stat().st_size if db_path.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            figures["rows"] = {
                table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("inbox", "outbox", "turns")
            }
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            figures["free_pages"] = free
            figures["used_pages"] = pages - free
        finally:
            db.close()
    except sqlite3.Error as exc:
        figures["rows"] = {"error": str(exc)}
    return figures


# -- the users --------------------------------------------------------------------------


class LeanUser:
    """A user who sends and waits for answers, remembering nothing else."""

    def __init__(self, client: MatrixClient) -> None:
        self.client = client
        self.token: str | None = None
        self.done: set[str] = set()
        self.bot_spoke: set[str] = set()

    async def sync(self, timeout_ms: int) -> None:
        body = await self.client.sync(self.token, timeout_ms=timeout_ms)
        self.token = body["next_batch"]
        for membership, room_id, room in ev.sync_rooms(body):
            if membership != "join":
                continue
            for event in ev.raw_timeline(room).events:
                if event["sender"] != self.client.user_id:
                    self.bot_spoke.add(room_id)
                source = (event.get("content") or {}).get(SOURCE_KEY)
                if isinstance(source, str) and (event.get("content") or {}).get(DONE_KEY):
                    self.done.add(source)

    async def wait_for(self, check) -> None:
        while not check():
            await self.sync(30_000)


async def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    from lambda_actors.loopback.stack import open_loopback_stack

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    names = [f"user{n}" for n in range(args.users)]
    per_user = args.messages // args.users
    samples: list[dict[str, Any]] = []
    async with open_loopback_stack(
        work, agents=2, users=names, agent_options={"chunks": 1, "slow_interval": 0.0}
    ) as stack:
        env = {
            **os.environ,
            "MATRIX_HOMESERVER": stack.homeserver.url,
            "MATRIX_USER_ID": stack.bot_user.user_id,
            "MATRIX_PASSWORD": stack.bot_user.password,
        }
        env.pop("MATRIX_ACCESS_TOKEN", None)
        log = open(work / "bot.log", "ab")
        bot = subprocess.Popen(
            [sys.executable, __file__, "_bot", str(stack.config_path), str(stack.data_dir),
             str(args.compaction_interval), str(args.horizon)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        db_path = stack.data_dir / "bot.sqlite3"
        users: list[LeanUser] = []
        rooms: list[str] = []
        try:
            for name in names:
                registered = stack.users[name]
                client = MatrixClient(stack.homeserver.url, access_token=registered.access_token, user_id=registered.user_id)
                user = LeanUser(client)
                await user.sync(0)
                room = await client.create_room(invite=[stack.bot_id], is_direct=True)
                users.append(user)
                rooms.append(room)
            for user, room in zip(users, rooms):
                with trio.fail_after(120):
                    await user.wait_for(lambda: room in user.bot_spoke)

            sent = 0
            started = time.monotonic()

            def sample() -> None:
                figures = {"messages": sent, "elapsed_s": round(time.monotonic() - started, 1), "rss_kb": rss_kb(bot.pid)}
                figures.update(db_figures(db_path))
                samples.append(figures)
                if not args.json:
                    print(_row(figures), flush=True)

            if not args.json:
                print(f"soak: {per_user * args.users} messages, {args.users} users, horizon {args.horizon}s, "
                      f"compaction every {args.compaction_interval}s; bot pid {bot.pid}", flush=True)
            sample()

            async def talk(user: LeanUser, room: str, number: int) -> None:
                nonlocal sent
                for n in range(per_user):
                    txn = f"soak-{number}-{n}-{os.getpid()}"
                    event_id = await user.client.send(room, "m.room.message", contents.text(f"soak {n}"), txn)
                    await user.wait_for(lambda: event_id in user.done)
                    user.done.discard(event_id)
                    sent += 1
                    if sent % args.sample_every == 0:
                        sample()

            async with trio.open_nursery() as nursery:
                for number, (user, room) in enumerate(zip(users, rooms)):
                    nursery.start_soon(talk, user, room, number)
            duration = time.monotonic() - started
            if samples[-1]["messages"] != sent:
                sample()
        finally:
            bot.send_signal(signal.SIGTERM)
            try:
                await trio.to_thread.run_sync(bot.wait, 60)
            except subprocess.TimeoutExpired:
                bot.kill()
                bot.wait()
            for user in users:
                await user.client.aclose()
    return {
        "driver": "synapse",
        "messages": sent,
        "users": args.users,
        "duration_s": round(duration, 1),
        "replies_per_s": round(sent / duration, 2) if duration else None,
        "compaction_horizon_s": args.horizon,
        "compaction_interval_s": args.compaction_interval,
        "samples": samples,
        "workdir": str(work),
    }


# -- the light driver: an in-memory homeserver -------------------------------------------


class MemoryHomeserver:
    """Just enough of a homeserver for the bot's steady state, in this process
    (an ``httpx.MockTransport`` handler): ``/sync`` long-polls hand over the
    events posted since, sends are acknowledged and appear in the room's
    timeline (the bot sees its own messages, as from Synapse), account data
    is kept. Anything else is answered ``{}``, and counted."""

    def __init__(self, bot_id: str) -> None:
        self.bot_id = bot_id
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.batch = 0
        self.arrived = trio.Event()
        self.answered: dict[str, trio.Event] = {}
        self.account_data: dict[str, Any] = {}
        self.counter = 0
        self.other_requests: dict[str, int] = {}

    def post(self, room_id: str, sender: str, content: dict[str, Any]) -> str:
        self.counter += 1
        event_id = f"$m{self.counter}"
        event = {"event_id": event_id, "sender": sender, "type": "m.room.message", "content": content,
                 "origin_server_ts": int(time.time() * 1000), "room_id": room_id}
        self.pending.setdefault(room_id, []).append(event)
        self.arrived.set()
        return event_id

    async def handle(self, request: Any) -> Any:
        import httpx
        from urllib.parse import unquote

        path = unquote(request.url.path)
        if path.endswith("/sync"):
            timeout = int(request.url.params.get("timeout", "0")) / 1000
            if not self.pending:
                self.arrived = trio.Event()
                with trio.move_on_after(timeout):
                    await self.arrived.wait()
            rooms = {room: {"timeline": {"events": events, "limited": False}} for room, events in self.pending.items()}
            self.pending = {}
            self.batch += 1
            return httpx.Response(200, json={"next_batch": str(self.batch), "rooms": {"join": rooms}})
        if "/send/" in path and request.method == "PUT":
            room_id = path.split("/rooms/", 1)[1].split("/", 1)[0]
            content = json.loads(request.content)
            event_id = self.post(room_id, self.bot_id, content)
            source = content.get(SOURCE_KEY)
            if content.get(DONE_KEY) and isinstance(source, str) and source in self.answered:
                self.answered[source].set()
            return httpx.Response(200, json={"event_id": event_id})
        if path.endswith("/filter"):
            return httpx.Response(200, json={"filter_id": "1"})
        if "/account_data/" in path:
            kind = path.rsplit("/", 1)[1]
            if request.method == "PUT":
                self.account_data[kind] = json.loads(request.content)
                return httpx.Response(200, json={})
            if kind in self.account_data:
                return httpx.Response(200, json=self.account_data[kind])
            return httpx.Response(404, json={"errcode": "M_NOT_FOUND", "error": "not set"})
        key = f"{request.method} {path.split('/')[-1] if '/typing/' not in path else 'typing'}"
        self.other_requests[key] = self.other_requests.get(key, 0) + 1
        return httpx.Response(200, json={})


async def run_light(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from lambda_actors.agent.fake import FakeAgent
    from lambda_actors.bot.actors.node import serve_node
    from lambda_actors.bot.actors.services import BotServices, Timing
    from lambda_actors.bot.config import parse_agents_config
    from lambda_actors.bot.store import RoomBinding, Store
    from lambda_actors.loopback.stack import agents_yaml

    work = Path(tempfile.mkdtemp(prefix="soak-light-"))
    bot_id = "@lambda:soak"
    owners = [f"@user{n}:soak" for n in range(args.users)]
    rooms = [f"!room{n}:soak" for n in range(args.users)]
    per_user = args.messages // args.users
    homeserver = MemoryHomeserver(bot_id)
    samples: list[dict[str, Any]] = []
    db_path = work / "bot-data" / "bot.sqlite3"
    async with trio.open_nursery() as nursery:
        fakes = []
        for n in range(2):
            fake = FakeAgent(work / f"agent-{n}", chunks=1, slow_interval=0.0)
            await nursery.start(fake.serve)
            fakes.append(fake)
        agents = parse_agents_config(
            agents_yaml(fakes, {owner: f"agent-{i % 2}" for i, owner in enumerate(owners)}), base_dir=work
        )
        store = Store.open(db_path)
        # The steady state: rooms already bound, a sync token stored (no rebuild).
        for i, (owner, room) in enumerate(zip(owners, rooms)):
            store.bind_room(RoomBinding(room, owner, f"agent-{i % 2}", store.new_chat_id(room), f"Chat {i}"))
        store.ingest([], "0")
        http = httpx.AsyncClient(transport=httpx.MockTransport(homeserver.handle))
        client = MatrixClient("http://soak.invalid", access_token="soak", user_id=bot_id, http=http)
        timing = Timing(compaction_interval=args.compaction_interval, compaction_horizon=args.horizon)
        bot = BotServices(store, client, AgentDirectory(agents), bot_id, timing)
        shipped = ROOT / "lambda_actors" / "bot" / "supervision.toml"
        sup = await nursery.start(serve_node, bot, shipped if shipped.exists() else None)

        sent = 0
        started = time.monotonic()

        def sample() -> None:
            for fake in fakes:
                fake.received.clear()  # the fake agents' own record; not the bot's memory
            figures = {"messages": sent, "elapsed_s": round(time.monotonic() - started, 1), "rss_kb": rss_kb(os.getpid())}
            figures.update(db_figures(db_path))
            samples.append(figures)
            if not args.json:
                print(_row(figures), flush=True)

        if not args.json:
            print(f"soak (light driver): {per_user * args.users} messages, {args.users} rooms, horizon "
                  f"{args.horizon}s, compaction every {args.compaction_interval}s", flush=True)
        sample()

        async def talk(owner: str, room: str) -> None:
            nonlocal sent
            for n in range(per_user):
                event_id = homeserver.post(room, owner, contents.text(f"soak {n}"))
                homeserver.answered[event_id] = done = trio.Event()
                with trio.fail_after(120):
                    await done.wait()
                del homeserver.answered[event_id]
                sent += 1
                if sent % args.sample_every == 0:
                    sample()

        async with trio.open_nursery() as users:
            for owner, room in zip(owners, rooms):
                users.start_soon(talk, owner, room)
        duration = time.monotonic() - started
        if samples[-1]["messages"] != sent:
            sample()
        await sup.aclose()
        store.close()
        await client.aclose()
        nursery.cancel_scope.cancel()
    return {
        "driver": "light",
        "messages": sent,
        "users": args.users,
        "duration_s": round(duration, 1),
        "replies_per_s": round(sent / duration, 2) if duration else None,
        "compaction_horizon_s": args.horizon,
        "compaction_interval_s": args.compaction_interval,
        "rss_note": "RSS of the one process: bot, fake agents and driver",
        "other_requests": homeserver.other_requests,
        "samples": samples,
        "workdir": str(work),
    }


def _row(s: dict[str, Any]) -> str:
    rows = s.get("rows", {})
    return (
        f"{s['messages']:>7} msgs {s['elapsed_s']:>8.1f}s  rss {s['rss_kb'] / 1024:7.1f} MiB  "
        f"db {s['db_bytes'] / 1024:8.1f} KiB  wal {s['wal_bytes'] / 1024:7.1f} KiB  "
        f"rows inbox {rows.get('inbox', '?')} outbox {rows.get('outbox', '?')} turns {rows.get('turns', '?')}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_bot":
        bot_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--horizon", type=float, default=60.0, help="compaction horizon in seconds (default 60)")
    parser.add_argument("--compaction-interval", type=float, default=30.0)
    parser.add_argument("--driver", choices=("synapse", "light"), default="light",
                        help="synapse: the loopback stack, the bot as a process; light: an in-memory homeserver "
                        "in this process (the bot's own code and real fake agents, no Synapse)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.driver == "light":
        # Everything runs in this process: the bot's INFO log lines would
        # flood the table (and cost time that is not the bot's).
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = trio.run(run_light if args.driver == "light" else run_soak, args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['messages']} messages in {result['duration_s']} s ({result['replies_per_s']}/s)")


if __name__ == "__main__":
    main()
