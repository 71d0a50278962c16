"""``lambda-actors subscribe ROOM``: watch a status or heartbeat room from a terminal (SPEC 8.4).

It reads the room with the user's own Matrix account (the variables of
``lambda-actors run``), prints the room's recent history, then follows it
live: as a table (rich), or with ``--format json`` one JSON line per
logical event (a ``cis.dag.batch`` is unpacked into its events). A
heartbeat room shows as a table of nodes and their liveness.

The parts that decide anything are pure and tested alone:
:func:`logical_events` (a room event to the logical events it carries),
:func:`json_line`, :class:`Watch` (the rows and node table built from
them) and :func:`parse_since`. The I/O loop (:func:`watch`) only pages,
syncs and prints.

Exit status: 0 on Ctrl-C (or SIGTERM); 1 when the room cannot be read
(unknown, or not allowed); 2 for a mistake in the command or the
environment; 3 when the homeserver refuses the credentials; 4 when it does
not answer.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import heartbeat as hb
from .status import RUN_CREATED, RUN_EVENTS, SESSION_BLOCKED, SESSION_RECOVERED, TASK_OUTPUT, TASK_STATUS, unpack

if TYPE_CHECKING:
    from ..bot.config import MatrixSettings

__all__ = ["Logical", "Watch", "add_arguments", "json_line", "logical_events", "parse_since", "run"]

EXIT_OK = 0
EXIT_ROOM = 1
EXIT_CONFIG = 2
EXIT_CREDENTIALS = 3
EXIT_UNREACHABLE = 4

HEARTBEAT_TYPES = frozenset({hb.HEARTBEAT, hb.DAG_ACTIVE, hb.NODE_STATUS})
#: Rows kept for the live table (older ones scroll away).
MAX_ROWS = 2_000

EPILOG = """\
environment (the same as 'lambda-actors run', but your own account):
  MATRIX_HOMESERVER, MATRIX_USER_ID, and MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD
  (or their _FILE variants). A password login is logged out again on exit.

exit status:
  0  stopped with Ctrl-C
  1  the room cannot be read (no such room, or you may not join it)
  2  a mistake in the command or the environment
  3  the homeserver refused the credentials
  4  the homeserver did not answer
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("room", metavar="ROOM", help="the room's id (!…) or alias (#dag-status-node-a:example.org)")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="a live table (default), or one JSON line per event")
    parser.add_argument(
        "--since",
        default="1h",
        metavar="DURATION",
        help="how far back the history goes, e.g. 30m, 2h, 1d (default: %(default)s)",
    )


# -- pure parts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Logical:
    """One logical event of the room: from a batch or an event of its own."""

    type: str
    content: Mapping[str, Any]
    origin_server_ts: int
    event_id: str
    sender: str
    state_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "type": self.type,
            "content": dict(self.content),
            "event_id": self.event_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
        }
        if self.state_key is not None:
            line["state_key"] = self.state_key
        return line


def logical_events(raw: Mapping[str, Any]) -> list[Logical]:
    """The DAG and heartbeat events one room event carries (none for anything
    else). Never raises: a room holds whatever anyone sent."""
    event_type, content = raw.get("type"), raw.get("content")
    event_id, sender, ts = raw.get("event_id"), raw.get("sender"), raw.get("origin_server_ts")
    if not isinstance(event_type, str) or not isinstance(content, Mapping):
        return []
    if not isinstance(event_id, str) or not isinstance(sender, str):
        return []
    ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    if event_type in HEARTBEAT_TYPES:
        state_key = raw.get("state_key")
        return [Logical(event_type, content, ts, event_id, sender, state_key if isinstance(state_key, str) else None)]
    return [Logical(t, c, ts, event_id, sender) for t, c in unpack(event_type, content)]


def json_line(event: Logical) -> str:
    return json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))


_SINCE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_since(text: str) -> int:
    """``--since``: ``30m``, ``2h``, ``1d``, ``1h30m`` or whole seconds -> seconds; ValueError with the fix."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        match = _SINCE.fullmatch(text)
        if not text or match is None:
            raise ValueError(f"--since: {text!r} is not a duration; write e.g. 30m, 2h, 1d or 1h30m")
        days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds <= 0:
        raise ValueError("--since: must be longer than zero; write e.g. 30m")
    return seconds


@dataclass(frozen=True)
class Row:
    """One line of the task table: SPEC 8.4's TIME, RUN_ID, TASK, STATUS, PROGRESS."""

    time: str
    run_id: str
    task: str
    status: str
    progress: str


class Watch:
    """What the watcher has seen of the room: the task table's rows, each
    task's latest status, and the heartbeat events for the node table."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.rows: deque[Row] = deque(maxlen=max_rows)
        #: (run_id, task_id) -> the latest status, attempt and progress seen.
        self.tasks: dict[tuple[str, str], dict[str, Any]] = {}
        #: run_id -> the latest run event's status (created, started, ...).
        self.runs: dict[str, str] = {}
        self._heartbeats: list[tuple[str, Mapping[str, Any], int, str | None]] = []
        self._seen: set[tuple[str, int]] = set()

    @property
    def is_heartbeat_room(self) -> bool:
        """Heartbeats seen and no run events: show nodes, not tasks."""
        return bool(self._heartbeats) and not self.tasks and not self.runs

    def add(self, event: Logical, index: int = 0) -> Row | None:
        """Take one logical event (``index``: its place in its room event, so a
        batch seen twice, in history and live, counts once); the row it adds,
        None for a repeat."""
        key = (event.event_id, index)
        if key in self._seen:
            return None
        self._seen.add(key)
        c = event.content
        when = _clock(c.get("timestamp"), event.origin_server_ts)
        if event.type in HEARTBEAT_TYPES:
            self._heartbeats.append((event.type, c, event.origin_server_ts, event.state_key))
            node_id = event.state_key if event.type == hb.NODE_STATUS else _text(c.get("node_id"))
            what = event.type.removeprefix("cis.node.")
            detail = f"{len(c['active_runs'])} runs" if isinstance(c.get("active_runs"), list) else ""
            beat = Row(when, node_id or "", what, _text(c.get("status")), detail)
            self.rows.append(beat)
            return beat
        run_id = _text(c.get("run_id"))
        row: Row | None = None
        if event.type == TASK_STATUS:
            task_id, status = _text(c.get("task_id")), _text(c.get("status"))
            self.tasks[(run_id, task_id)] = {"status": status, "attempt": c.get("attempt"), "progress": c.get("progress")}
            row = Row(when, run_id, task_id, status, "⚠️" if status == "blocked" else _progress(c.get("progress")))
        elif event.type in RUN_EVENTS or event.type == RUN_CREATED:
            status = event.type.rsplit(".", 1)[1]
            self.runs[run_id] = status
            row = Row(when, run_id, "(run)", status, _progress(c.get("progress")))
        elif event.type == SESSION_BLOCKED:
            row = Row(when, run_id, _text(c.get("task_id")), "blocked", "⚠️ " + _text(c.get("reason"))[:60])
        elif event.type == SESSION_RECOVERED:
            row = Row(when, run_id, _text(c.get("task_id")), "recovered", "")
        elif event.type == TASK_OUTPUT:
            size = c.get("size") if c.get("truncated") is True else len(_text(c.get("output")).encode())
            row = Row(when, run_id, _text(c.get("task_id")), "output", f"{size} bytes")
        if row is not None:
            self.rows.append(row)
        return row

    def nodes(self, now_ms: int, interval_secs: int = 30) -> list[hb.NodeRow]:
        table = hb.node_table(self._heartbeats, now_ms, interval_secs=interval_secs)
        return [table[k] for k in sorted(table)]

    def final_table(self) -> dict[tuple[str, str], str]:
        """Each task's latest status: a finished run's final table."""
        return {key: str(value["status"]) for key, value in self.tasks.items()}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _progress(value: object) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("completed"), int) and isinstance(value.get("total"), int):
        return f"{value['completed']}/{value['total']}"
    return ""


def _clock(timestamp: object, origin_server_ts: int) -> str:
    """HH:MM:SS (UTC) of the event: its own timestamp, else the homeserver's."""
    if isinstance(timestamp, str):
        try:
            return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC).strftime("%H:%M:%S")
        except ValueError:
            pass
    return datetime.fromtimestamp(origin_server_ts / 1000, UTC).strftime("%H:%M:%S")


def node_rows(nodes: Iterable[hb.NodeRow], now_ms: int) -> list[tuple[str, str, str, str, str]]:
    """The node table's lines: NODE, LIVENESS, LAST HEARTBEAT, SESSIONS, AGENTS."""
    lines = []
    for n in nodes:
        ago = "" if n.last_heartbeat_ms is None else f"{max(0, now_ms - n.last_heartbeat_ms) // 1000}s ago"
        sessions = "" if n.active_sessions is None else str(n.active_sessions)
        lines.append((n.node_id, f"{n.liveness} ({n.reason})" if n.reason else n.liveness, ago, sessions, ",".join(n.agents)))
    return lines


# -- the I/O loop ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..bot.config import ConfigError, MatrixSettings

    try:
        since_s = parse_since(args.since)
        settings = MatrixSettings.from_env()
    except ValueError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, "; ".join(exc.problems))

    from ..bot.logs import SecretMask, configure_logging
    from ..matrix.errors import HomeserverUnavailable, InvalidToken, MatrixError
    from ..runtime.groups import leaves

    # Logs go to stderr (stdout is the output, JSON lines perhaps), only
    # warnings and worse, secrets masked; what ends the command is one line.
    mask = SecretMask(x.reveal() for x in (settings.password, settings.access_token) if x is not None)
    configure_logging(mask, level="WARNING", stream=sys.stderr)
    output = _Output(args.format, sys.stdout)

    async def main() -> None:
        # Ctrl-C and SIGTERM end the watch by cancelling it, so the login
        # made for it is logged out on the way.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                await watch(settings, args.room, since_s, output)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseException as exc:
        if leaves(exc, KeyboardInterrupt) and not leaves(exc, Exception):
            return EXIT_OK
        if leaves(exc, BrokenPipeError):
            return EXIT_OK  # piped into a reader that stopped reading (| head)
        if token := leaves(exc, InvalidToken):
            return _fail(
                EXIT_CREDENTIALS,
                f"the homeserver refused the credentials ({token[0].errcode}); check MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD",
            )
        if down := leaves(exc, HomeserverUnavailable):
            return _fail(EXIT_UNREACHABLE, f"the homeserver did not answer: {down[0]}; check MATRIX_HOMESERVER and that it runs")
        if room := leaves(exc, _RoomUnreadable):
            return _fail(EXIT_ROOM, str(room[0]))
        if refused := leaves(exc, MatrixError):
            error = refused[0]
            if error.errcode == "M_FORBIDDEN" and not output.started and settings.access_token is None:
                return _fail(EXIT_CREDENTIALS, f"the homeserver refused the login ({error}); check MATRIX_USER_ID and MATRIX_PASSWORD")
            return _fail(EXIT_ROOM, f"the homeserver refused a request: {error}")
        print("lambda-actors subscribe: stopped by a bug (traceback below); please report it", file=sys.stderr)
        raise
    finally:
        output.close()
    return EXIT_OK


class _RoomUnreadable(Exception):
    pass


async def watch(
    settings: MatrixSettings,
    room: str,
    since_s: int,
    output: _Output,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Log in, print the room's history from ``since_s`` ago (then report
    started, for ``nursery.start``), then follow it until cancelled."""

    from ..matrix import MatrixClient
    from ..matrix.errors import InvalidToken, MatrixError
    from ..matrix.events import raw_timeline, sync_rooms

    client = MatrixClient(settings.homeserver, access_token=settings.access_token.reveal() if settings.access_token else None, user_id=settings.user_id)
    logged_in = False
    try:
        if settings.access_token is None:
            assert settings.password is not None  # MatrixSettings holds one of the two
            await client.login(settings.user_id, settings.password.reveal(), device_name="lambda-actors subscribe")
            logged_in = True
        try:
            room_id = await client.join(room)
        except InvalidToken:
            raise
        except MatrixError as exc:
            raise _RoomUnreadable(f"cannot read {room}: {exc}; check the id or alias, and that you may join it") from None
        watch_state = Watch()
        filter_id = await client.create_filter(
            {
                "presence": {"types": []},
                "account_data": {"types": []},
                "room": {
                    "rooms": [room_id],
                    "timeline": {"limit": 100},
                    "ephemeral": {"types": []},
                    "account_data": {"types": []},
                    "state": {"types": [hb.NODE_STATUS]},
                },
            },
            unique=True,  # a subscribe run again within minutes must read the room as it is now
        )
        first = await client.sync(None, timeout_ms=0, filter_id=filter_id)
        cutoff_ms = int(time.time() * 1000) - since_s * 1000
        history: list[Mapping[str, Any]] = []
        state: list[Mapping[str, Any]] = []
        prev_batch: str | None = None
        for _, rid, section in sync_rooms(first):
            if rid != room_id:
                continue
            timeline = raw_timeline(section)
            history.extend(timeline.events)
            prev_batch = timeline.prev_batch if timeline.limited else None
            state_events = section.get("state", {}).get("events", []) if isinstance(section.get("state"), Mapping) else []
            state.extend(e for e in state_events if isinstance(e, Mapping))
        older = await _page_back(client, room_id, prev_batch, cutoff_ms)
        # The current node statuses first (they may be older than the
        # window), then the history in order.
        for raw in state:
            _take(watch_state, raw, output)
        for raw in [*older, *history]:
            if isinstance(raw.get("origin_server_ts"), int) and raw["origin_server_ts"] < cutoff_ms:
                continue
            _take(watch_state, raw, output)
        output.started = True
        task_status.started()
        since_token = first["next_batch"]
        async with output.live(watch_state):
            while True:
                body = await client.sync(since_token, timeout_ms=1_000 if output.refreshes else 30_000, filter_id=filter_id)
                since_token = body["next_batch"]
                for _, rid, section in sync_rooms(body):
                    if rid == room_id:
                        for raw in raw_timeline(section).events:
                            _take(watch_state, raw, output)
                output.refresh(watch_state)
                await trio.lowlevel.checkpoint()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            if logged_in:
                try:
                    await client.logout()
                except Exception:  # noqa: BLE001 - leaving anyway; the device stays listed, nothing worse
                    pass
            await client.aclose()


async def _page_back(client: Any, room_id: str, start: str | None, cutoff_ms: int) -> list[Mapping[str, Any]]:
    """Older events from ``start`` back to ``cutoff_ms``, oldest first."""
    events: list[Mapping[str, Any]] = []
    while start is not None:
        page = await client.messages(room_id, start=start, direction="b", limit=100)
        chunk = [e for e in page["chunk"] if isinstance(e, Mapping)]
        events.extend(chunk)
        if not chunk or page.get("end") is None:
            break
        if any(isinstance(e.get("origin_server_ts"), int) and e["origin_server_ts"] < cutoff_ms for e in chunk):
            break
        start = page["end"]
    events.reverse()
    return events


def _take(watch_state: Watch, raw: Mapping[str, Any], output: _Output) -> None:
    for index, event in enumerate(logical_events(raw)):
        row = watch_state.add(event, index)
        if row is None:
            continue  # a repeat: the same event in history and live
        if output.format == "json":
            output.line(json_line(event))
        else:
            output.row(row, watch_state)


class _Output:
    """Where the watcher writes: JSON lines, a live rich table on a terminal,
    or plain table lines when piped."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.format = fmt
        self.stream = stream
        self.started = False
        self.console = Console(file=stream)
        self._live: Live | None = None
        self.refreshes = fmt == "table" and self.console.is_terminal

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def row(self, row: Row, watch_state: Watch) -> None:
        if self._live is None:
            self.line(f"{row.time:<10}  {row.run_id:<16}  {row.task:<12}  {row.status:<10}  {row.progress}")

    def live(self, watch_state: Watch) -> Any:
        if not self.refreshes:
            return _AsyncNull()
        self._live = Live(self._table(watch_state), console=self.console, auto_refresh=False, screen=False)
        return _AsyncLive(self._live)

    def refresh(self, watch_state: Watch) -> None:
        if self._live is not None:
            self._live.update(self._table(watch_state), refresh=True)

    def close(self) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reader went away, or the stream was closed: nothing left to say

    def _table(self, watch_state: Watch) -> Table:
        now_ms = int(time.time() * 1000)
        if watch_state.is_heartbeat_room:
            table = Table("NODE", "LIVENESS", "LAST HEARTBEAT", "SESSIONS", "AGENTS", title="nodes")
            for line in node_rows(watch_state.nodes(now_ms), now_ms):
                table.add_row(*line)
            return table
        table = Table("TIME", "RUN_ID", "TASK", "STATUS", "PROGRESS")
        height = max(5, self.console.size.height - 6)
        for row in list(watch_state.rows)[-height:]:
            table.add_row(row.time, row.run_id, row.task, row.status, row.progress)
        return table


class _AsyncNull:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _AsyncLive:
    def __init__(self, live: Live) -> None:
        self._live = live

    async def __aenter__(self) -> None:
        self._live.start(refresh=True)

    async def __aexit__(self, *exc: object) -> None:
        self._live.stop()


def _fail(status: int, message: str) -> int:
    print(f"lambda-actors subscribe: {message}", file=sys.stderr)
    return status
