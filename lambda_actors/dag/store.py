"""DAG runs in SQLite: specs, runs, attempts, outputs (SPEC 8 "Durable").

The record is the truth a restarted node resumes from, so it is written with
the inbox's care:

- **One transaction per transition.** A task's status, its attempt's status,
  its output and the status events announcing it are written together
  (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a crash leaves a transition wholly
  done or not at all: never a completed task without its output, nor an
  announcement of a transition that was not kept. :meth:`DagStore.batch`
  groups the transitions of one scheduler step into one commit.
- **Terminal states never change.** The moves a task, an attempt or a run may
  make are tables (:data:`TASK_MOVES`, :data:`RUN_MOVES`); a move out of a
  terminal state is :class:`TerminalState`, any other move the table lacks
  :class:`IllegalMove`. The check and the write are in the same transaction.
- **Where it lives.** In the bot's database file (one file to back up), on a
  connection of its own, in WAL mode: every write is one short transaction
  on the Trio thread, so the bot's connection and this one never wait on
  each other for long (``busy_timeout`` covers the moment they meet).
  ``synchronous=NORMAL``: in WAL mode a commit is a write to the WAL, not a
  sync, and survives the process's crash (a kill mid-run loses nothing
  committed); only the checkpoints sync, and the node runs those on a worker
  thread (:meth:`DagStore.checkpoint`), not on the Trio thread.
- **Schema versions.** ``PRAGMA user_version`` belongs to the bot's store
  (bot/store.py), which shares the file, so this store keeps its own version
  in ``dag_schema``. The approach is the bot's: the base layout, then each
  migration in order, each in one transaction with its version bump; a
  database from a newer release is refused with :class:`DagStoreError`.

Tables: ``dag_specs`` (a spec per ``(dag_id, version)``, the version being
the spec's content hash, its canonical JSON kept), ``dag_runs``,
``dag_tasks`` (each task's current status: a pending or skipped task has no
attempt to hold it), ``dag_attempts``, ``dag_outputs`` (the whole text,
whatever its size: the status room gets a summary, the API serves this) and
``dag_status_events`` (a durable outbox of status events for the status
room; appended with the transition, marked sent once Matrix has them).

Times are Unix seconds (floats); the API turns them into RFC 3339.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence

from .scheduler import RunStatus, TaskFacts, TaskStatus
from .spec import DagSpec, DagSpecError, parse_dag

__all__ = [
    "ATTEMPT_TERMINAL",
    "AttemptRecord",
    "AttemptStatus",
    "DagStore",
    "DagStoreError",
    "IllegalMove",
    "NotFound",
    "Output",
    "RUN_MOVES",
    "RUN_TERMINAL",
    "RunRecord",
    "SCHEMA_VERSION",
    "StatusEvent",
    "StoredSpec",
    "TASK_MOVES",
    "TASK_TERMINAL",
    "TaskRecord",
    "TerminalState",
    "new_run_id",
    "open_dag_store",
]


class AttemptStatus(enum.StrEnum):
    """One try at a task. ``interrupted``: the node stopped during it (a
    restarted node starts a new attempt instead)."""

    RUNNING = "running"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


TASK_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED})
RUN_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ATTEMPT_TERMINAL = frozenset(set(AttemptStatus) - {AttemptStatus.RUNNING, AttemptStatus.BLOCKED})

_T = TaskStatus
#: task status -> the statuses it may move to. ``running -> running`` is a new
#: attempt (a restart, or a retry started without a wait); ``running ->
#: pending`` an attempt that failed with retries left (the task waits for its
#: backoff). Terminal statuses have no entry: nothing moves them.
TASK_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.PENDING: frozenset({_T.RUNNING, _T.SKIPPED, _T.CANCELLED, _T.FAILED}),
    _T.RUNNING: frozenset({_T.RUNNING, _T.BLOCKED, _T.PENDING, _T.COMPLETED, _T.FAILED, _T.CANCELLED}),
    _T.BLOCKED: frozenset({_T.RUNNING, _T.PENDING, _T.COMPLETED, _T.FAILED, _T.CANCELLED}),
}

_R = RunStatus
#: run status -> the statuses it may move to. A paused run may still end:
#: its running tasks finish (SPEC: pausing stops only new starts).
RUN_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    _R.CREATED: frozenset({_R.RUNNING, _R.PAUSED, _R.FAILED, _R.CANCELLED}),
    _R.RUNNING: frozenset({_R.PAUSED, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
    _R.PAUSED: frozenset({_R.RUNNING, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
}

#: How a task's move closes its live attempt (a task going ``running`` again
#: closes it as ``interrupted``; see :meth:`DagStore.start_attempt`).
_CLOSES_ATTEMPT_AS: dict[TaskStatus, AttemptStatus] = {
    _T.COMPLETED: AttemptStatus.COMPLETED,
    _T.FAILED: AttemptStatus.FAILED,
    _T.PENDING: AttemptStatus.FAILED,  # failed, with a retry to come
    _T.CANCELLED: AttemptStatus.CANCELLED,
    _T.SKIPPED: AttemptStatus.CANCELLED,
}


class DagStoreError(Exception):
    """The database cannot be used as it is; the message says what to do."""


class IllegalMove(Exception):
    """A move the tables do not allow."""

    def __init__(self, what: str, current: str, wanted: str) -> None:
        super().__init__(f"{what}: cannot move from {current} to {wanted}")
        self.what = what
        self.current = current
        self.wanted = wanted


class TerminalState(IllegalMove):
    """A move out of a terminal state: once written, it never changes."""

    def __init__(self, what: str, current: str, wanted: str) -> None:
        super().__init__(what, current, wanted)
        self.args = (f"{what}: is {current}, a terminal state, and cannot become {wanted}",)


class NotFound(KeyError):
    """No such run, task or spec."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSpec:
    dag_id: str
    version: str
    spec: DagSpec
    published_at: float
    client: str  #: who published it (an API client's name, or "cli"/"node")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    dag_id: str
    version: str
    status: RunStatus
    owner: str | None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    room_id: str | None = None  #: the status room the run is announced in
    board_event_id: str | None = None  #: its m.notice board there

    @property
    def final(self) -> bool:
        return self.status in RUN_TERMINAL


@dataclass(frozen=True)
class TaskRecord:
    run_id: str
    task_id: str
    status: TaskStatus
    attempts: int  #: attempts started so far
    started_at: float | None  #: the first attempt's start
    finished_at: float | None  #: when it reached a terminal status
    reason: str | None  #: why it failed, was skipped or cancelled


@dataclass(frozen=True)
class AttemptRecord:
    run_id: str
    task_id: str
    attempt: int  #: 1, 2, ...
    status: AttemptStatus
    started_at: float
    finished_at: float | None
    reason: str | None
    session_id: str | None


@dataclass(frozen=True)
class Output:
    run_id: str
    task_id: str
    attempt: int
    text: str
    size: int  #: bytes of UTF-8
    artifacts: tuple[str, ...] = ()  #: files the task produced (paths or mxc URIs)


@dataclass(frozen=True)
class StatusEvent:
    """One logical status event waiting for (or already in) the status room."""

    seq: int
    run_id: str
    type: str
    content: dict[str, Any]
    sent: bool


# -- schema ---------------------------------------------------------------------------

_BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dag_schema (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO dag_schema (id, version) VALUES (0, 0);
"""

#: ``_MIGRATIONS[n]`` takes the DAG tables from version ``n`` to ``n + 1``.
#: Never edit one that has shipped; add one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE dag_specs (
        dag_id       TEXT NOT NULL,
        version      TEXT NOT NULL,
        spec         TEXT NOT NULL,
        published_at REAL NOT NULL,
        client       TEXT NOT NULL,
        PRIMARY KEY (dag_id, version)
    );
    CREATE INDEX dag_specs_latest ON dag_specs (dag_id, published_at);
    CREATE TABLE dag_runs (
        run_id         TEXT PRIMARY KEY,
        dag_id         TEXT NOT NULL,
        version        TEXT NOT NULL,
        status         TEXT NOT NULL,
        owner          TEXT,
        created_at     REAL NOT NULL,
        started_at     REAL,
        finished_at    REAL,
        room_id        TEXT,
        board_event_id TEXT,
        FOREIGN KEY (dag_id, version) REFERENCES dag_specs (dag_id, version)
    );
    CREATE INDEX dag_runs_newest ON dag_runs (created_at, run_id);
    CREATE INDEX dag_runs_status ON dag_runs (status, created_at);
    CREATE TABLE dag_tasks (
        run_id      TEXT NOT NULL REFERENCES dag_runs (run_id),
        task_id     TEXT NOT NULL,
        position    INTEGER NOT NULL,
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        started_at  REAL,
        finished_at REAL,
        reason      TEXT,
        PRIMARY KEY (run_id, task_id)
    );
    CREATE TABLE dag_attempts (
        run_id      TEXT NOT NULL,
        task_id     TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        status      TEXT NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        reason      TEXT,
        session_id  TEXT,
        PRIMARY KEY (run_id, task_id, attempt),
        FOREIGN KEY (run_id, task_id) REFERENCES dag_tasks (run_id, task_id)
    );
    CREATE TABLE dag_outputs (
        run_id    TEXT NOT NULL,
        task_id   TEXT NOT NULL,
        attempt   INTEGER NOT NULL,
        text      TEXT NOT NULL,
        size      INTEGER NOT NULL,
        artifacts TEXT NOT NULL,
        PRIMARY KEY (run_id, task_id, attempt),
        FOREIGN KEY (run_id, task_id, attempt) REFERENCES dag_attempts (run_id, task_id, attempt)
    );
    CREATE TABLE dag_status_events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id    TEXT NOT NULL,
        type      TEXT NOT NULL,
        content   TEXT NOT NULL,
        queued_at REAL NOT NULL,
        sent      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX dag_status_events_unsent ON dag_status_events (seq) WHERE sent = 0;
    """,
)

#: The version the DAG tables have once every migration ran.
SCHEMA_VERSION = len(_MIGRATIONS)

_RUN_COLUMNS = (
    "run_id, dag_id, version, status, owner, created_at, started_at, finished_at, room_id, board_event_id"
)
_TASK_COLUMNS = "run_id, task_id, status, attempts, started_at, finished_at, reason"
_ATTEMPT_COLUMNS = "run_id, task_id, attempt, status, started_at, finished_at, reason, session_id"

#: The moves that change the task's open attempt (it must have one).
_NEEDS_ATTEMPT = frozenset({TaskStatus.COMPLETED, TaskStatus.BLOCKED, TaskStatus.PENDING, TaskStatus.RUNNING})
#: task status -> the statuses it may be reached from, as an SQL list (of
#: the enum's constant values: no input of anyone's).
_MOVES_TO_SQL: dict[TaskStatus, str] = {
    wanted: "(" + ", ".join(f"'{source}'" for source in TASK_MOVES if wanted in TASK_MOVES[source]) + ")"
    for wanted in TaskStatus
    if any(wanted in moves for moves in TASK_MOVES.values())
}

#: WAL pages after which the store's own connection checkpoints (see
#: open_dag_store); SQLite's default is 1,000.
_AUTOCHECKPOINT_PAGES = 10_000

#: Specs a store keeps parsed (see ``DagStore._specs``).
_SPECS_KEPT = 16

#: ``(type, content)`` of a status event to append with a transition.
Event = tuple[str, Mapping[str, Any]]


def new_run_id() -> str:
    """A fresh run id: short enough for a table column in a chat, random
    enough (64 bits) never to meet another."""
    return f"run-{secrets.token_hex(8)}"


def open_dag_store(database: str | os.PathLike[str]) -> DagStore:
    """The DAG store on its own connection to the bot's database file.

    The file is created 0600 if this store opens it first (it holds run
    outputs, which may hold anything an agent said)."""
    path = Path(database)
    memory = str(database) == ":memory:"
    try:
        if not memory:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(str(database), isolation_level=None, timeout=5.0)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DagStoreError(f"{database}: cannot be opened ({reason}); check the path and its permissions") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # As the bot's store: NORMAL in WAL mode survives a process crash.
        db.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint syncs the file (milliseconds on a real disk): on the
        # committing connection it would hold up the Trio thread, and every
        # run with it. The node's DAG actors checkpoint on a worker thread
        # instead (DagStore.checkpoint); this connection does it itself only
        # past this many pages, should nobody else (a store used alone).
        db.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, str(database))
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DagStoreError(f"{database}: not a usable SQLite database ({exc}); point --data-dir elsewhere") from None
    except BaseException:
        db.close()
        raise
    return DagStore(db)


class DagStore:
    """DAG specs, runs, tasks, attempts, outputs and status events on an open
    SQLite connection (autocommit mode: every write is its own explicit
    transaction). Use :func:`open_dag_store`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._depth = 0  #: open writes: 0 outside any, >1 inside a batch
        self._savepoints = True  #: whether the writes of the open batch take savepoints
        #: Called after each commit (the node's checkpointer listens).
        self.on_commit: Callable[[], None] | None = None
        self._checkpointer: sqlite3.Connection | None = None
        #: The database file (None: in memory), read here, on the store's thread.
        self._file: str | None = next(
            (f for _, name, f in db.execute("PRAGMA database_list").fetchall() if name == "main" and f), None
        )
        #: Specs read back lately, by their stored text: a spec is immutable
        #: under its version (the content's hash), and reading a large one
        #: back (parse and check) costs milliseconds that a run's confirm and
        #: its run actor would otherwise pay in turn. Keyed by the text, so a
        #: row changed under the store is read afresh.
        self._specs: dict[str, DagSpec] = {}

    def close(self) -> None:
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def checkpoint(self) -> bool:
        """Copy what the WAL holds into the database file (a ``PASSIVE``
        checkpoint: it never waits for, nor holds up, a writer), on a
        connection of its own. Meant for a worker thread
        (``trio.to_thread.run_sync``), one call at a time: the syncs it makes
        then hold up nobody, and the store's connection seldom has to
        checkpoint itself. False if there is nothing to do it on (an
        in-memory database)."""
        if self._checkpointer is None:
            if self._file is None:
                return False
            self._checkpointer = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return True

    def batch(self, *, all_or_nothing: bool = False) -> AbstractContextManager[None]:
        """Several writes as one transaction (one commit): what a run actor
        applies for one step of its scheduler (a fan-out starting a hundred
        tasks, a cancel ending them all) is kept together, and costs one
        commit instead of a hundred. A write inside that raises is undone
        alone (a savepoint) and the exception goes on; one that escapes the
        ``with`` undoes the whole batch.

        ``all_or_nothing``: the caller lets every write's error escape the
        ``with`` (a run actor's step is kept whole or not at all), so the
        writes take no savepoint of their own (two statements fewer each).
        A write's error caught inside such a batch would leave that write
        half done: do not catch one there.

        Nothing may be awaited inside: the write lock is held until the end,
        and the bot's store, on the same file, waits for it."""
        return _Batch(self, savepoints=not all_or_nothing)

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM dag_schema").fetchone()[0])

    # -- specs ----------------------------------------------------------------------

    def publish(self, spec: DagSpec, client: str, now: float) -> StoredSpec:
        """Keep ``spec`` under its content version. Publishing the same content
        again writes nothing new but makes it the latest again (``published_at``
        and ``client`` are the last publish's)."""
        text = json.dumps(spec.to_mapping(), sort_keys=True, separators=(",", ":"))
        self._remember(text, spec)
        with _Transaction(self) as db:
            db.execute(
                "INSERT INTO dag_specs (dag_id, version, spec, published_at, client) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (dag_id, version) DO UPDATE SET published_at = excluded.published_at,"
                " client = excluded.client",
                (spec.dag_id, spec.version, text, now, client),
            )
        return StoredSpec(spec.dag_id, spec.version, spec, now, client)

    def spec(self, dag_id: str, version: str | None = None) -> StoredSpec:
        """The spec of that version, or the latest published; :class:`NotFound`."""
        if version is None:
            row = self._db.execute(
                "SELECT dag_id, version, spec, published_at, client FROM dag_specs WHERE dag_id = ?"
                " ORDER BY published_at DESC, rowid DESC LIMIT 1",
                (dag_id,),
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT dag_id, version, spec, published_at, client FROM dag_specs WHERE dag_id = ? AND version = ?",
                (dag_id, version),
            ).fetchone()
        if row is None:
            raise NotFound(f"no DAG {dag_id!r}" + (f" of version {version}" if version else "") + " was published")
        dag, ver, text, published_at, client = row
        spec = self._specs.get(text)
        if spec is None:
            # Checked when published; commands are allowed here because the node's
            # setting was applied then (a stored spec is read back as it was kept).
            try:
                spec = parse_dag(json.loads(text), allow_commands=True, source=f"stored DAG {dag} {ver[:12]}")
            except DagSpecError as exc:
                raise DagStoreError(
                    f"{exc.lines()[0]}: a spec kept by an older release no longer reads; publish the DAG again"
                ) from None
        self._remember(text, spec)
        return StoredSpec(dag, ver, spec, published_at, client)

    def _remember(self, text: str, spec: DagSpec) -> None:
        self._specs.pop(text, None)
        self._specs[text] = spec
        while len(self._specs) > _SPECS_KEPT:
            del self._specs[next(iter(self._specs))]  # the least lately used

    # -- runs -----------------------------------------------------------------------

    def create_run(
        self, spec: DagSpec, now: float, *, run_id: str | None = None, events: Iterable[Event] = ()
    ) -> RunRecord:
        """A new run of a published spec, ``created``, every task ``pending``."""
        run = RunRecord(
            run_id=run_id or new_run_id(), dag_id=spec.dag_id, version=spec.version, status=RunStatus.CREATED,
            owner=spec.owner, created_at=now,
        )
        with _Transaction(self) as db:
            known = db.execute(
                "SELECT 1 FROM dag_specs WHERE dag_id = ? AND version = ?", (spec.dag_id, spec.version)
            ).fetchone()
            if known is None:
                raise NotFound(f"DAG {spec.dag_id!r} version {spec.version} is not published; publish it first")
            db.execute(
                f"INSERT INTO dag_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                (run.run_id, run.dag_id, run.version, str(run.status), run.owner, now),
            )
            db.executemany(
                "INSERT INTO dag_tasks (run_id, task_id, position, status) VALUES (?, ?, ?, 'pending')",
                [(run.run_id, task.id, index) for index, task in enumerate(spec.tasks)],
            )
            _append(db, run.run_id, events, now)
        return run

    def run(self, run_id: str) -> RunRecord:
        row = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM dag_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return _run(row)

    def runs(
        self, *, status: RunStatus | str | None = None, limit: int = 50, before: str | None = None
    ) -> list[RunRecord]:
        """Newest first; ``before`` is the last run id of the previous page."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(str(RunStatus(status)))
        if before is not None:
            where.append("(created_at, run_id) < (SELECT created_at, run_id FROM dag_runs WHERE run_id = ?)")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM dag_runs {clause} ORDER BY created_at DESC, run_id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [_run(row) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs a starting node resumes (oldest first: they started first)."""
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM dag_runs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
            " ORDER BY created_at, run_id"
        ).fetchall()
        return [_run(row) for row in rows]

    def set_run_status(
        self, run_id: str, status: RunStatus | str, now: float, *, events: Iterable[Event] = ()
    ) -> RunRecord:
        """Move the run (:data:`RUN_MOVES`); :class:`TerminalState` out of a
        final status, :class:`IllegalMove` for any other move not in the table."""
        wanted = RunStatus(status)
        with _Transaction(self) as db:
            current = self._run_in(db, run_id)
            if current.status in RUN_TERMINAL:
                raise TerminalState(f"run {run_id}", current.status, wanted)
            if wanted not in RUN_MOVES[current.status]:
                raise IllegalMove(f"run {run_id}", current.status, wanted)
            started = current.started_at if current.started_at is not None or wanted is not _R.RUNNING else now
            finished = now if wanted in RUN_TERMINAL else None
            db.execute(
                "UPDATE dag_runs SET status = ?, started_at = ?, finished_at = ? WHERE run_id = ?",
                (str(wanted), started, finished, run_id),
            )
            _append(db, run_id, events, now)
        return replace(current, status=wanted, started_at=started, finished_at=finished)

    def set_run_room(self, run_id: str, room_id: str) -> None:
        """The status room the run is announced in (kept for a restart)."""
        self._set_run_field(run_id, "room_id", room_id)

    def set_board_event(self, run_id: str, event_id: str) -> None:
        """The event id of the run's board (edited with ``m.replace`` after a restart too)."""
        self._set_run_field(run_id, "board_event_id", event_id)

    def _set_run_field(self, run_id: str, column: str, value: str) -> None:
        with _Transaction(self) as db:
            if not db.execute(f"UPDATE dag_runs SET {column} = ? WHERE run_id = ?", (value, run_id)).rowcount:
                raise NotFound(f"no run {run_id!r}")

    # -- tasks and attempts -----------------------------------------------------------

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """Every task of the run, in the spec's order."""
        rows = self._db.execute(
            f"SELECT {_TASK_COLUMNS} FROM dag_tasks WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
        if not rows:
            self.run(run_id)  # NotFound for an unknown run; a known one has tasks
        return [_task(row) for row in rows]

    def task(self, run_id: str, task_id: str) -> TaskRecord:
        return _task(self._task_row(self._db, run_id, task_id))

    def attempts(self, run_id: str, task_id: str | None = None) -> list[AttemptRecord]:
        """The run's attempts (or one task's), in the order they started."""
        if task_id is None:
            rows = self._db.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM dag_attempts WHERE run_id = ? ORDER BY started_at, task_id, attempt",
                (run_id,),
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM dag_attempts WHERE run_id = ? AND task_id = ? ORDER BY attempt",
                (run_id, task_id),
            ).fetchall()
        return [_attempt(row) for row in rows]

    def resume_facts(self, run_id: str) -> dict[str, TaskFacts]:
        """Per task, what :meth:`.Scheduler.restore` rebuilds the run from
        after a restart: its status, attempts started, attempts that failed
        (an attempt cut off by the stop is not a failure: it does not use up
        a retry) and a completed task's output. A task that was ``running``
        or ``blocked`` is reported as such; its next :meth:`start_attempt`
        closes the old attempt as ``interrupted``."""
        failures = dict(
            self._db.execute(
                "SELECT task_id, COUNT(*) FROM dag_attempts WHERE run_id = ? AND status = 'failed' GROUP BY task_id",
                (run_id,),
            ).fetchall()
        )
        outputs = self.outputs(run_id)
        return {
            t.task_id: TaskFacts(t.status, t.attempts, failures.get(t.task_id, 0), outputs.get(t.task_id))
            for t in self.tasks(run_id)
        }

    def progress(self, run_id: str) -> dict[str, int]:
        """``{completed, total, failed}`` as the status events carry it."""
        rows = self._db.execute(
            "SELECT status, COUNT(*) FROM dag_tasks WHERE run_id = ? GROUP BY status", (run_id,)
        ).fetchall()
        counts = {status: count for status, count in rows}
        return {
            "completed": counts.get("completed", 0),
            "total": sum(counts.values()),
            "failed": counts.get("failed", 0),
        }

    def task_counts(self) -> dict[TaskStatus, int]:
        """Tasks of unfinished runs by status (for /metrics)."""
        rows = self._db.execute(
            "SELECT t.status, COUNT(*) FROM dag_tasks t JOIN dag_runs r USING (run_id)"
            " WHERE r.status NOT IN ('completed', 'failed', 'cancelled') GROUP BY t.status"
        ).fetchall()
        return {TaskStatus(status): count for status, count in rows}

    def start_attempt(
        self, run_id: str, task_id: str, now: float, *, session_id: str | None = None, events: Iterable[Event] = ()
    ) -> int:
        """A new attempt of the task, ``running``; its number (1, 2, ...).

        An attempt still open (the node stopped during it, so a restarted node
        starts another) is closed as ``interrupted`` in the same transaction."""
        with _Transaction(self) as db:
            task = _task(self._task_row(db, run_id, task_id))
            self._check_move(task, TaskStatus.RUNNING)
            if task.status is not TaskStatus.PENDING:
                # A pending task has no open attempt (every move to pending
                # closes it): only a running or blocked one has one to close.
                db.execute(
                    "UPDATE dag_attempts SET status = ?, finished_at = ?, reason = ?"
                    " WHERE run_id = ? AND task_id = ? AND status IN ('running', 'blocked')",
                    (str(AttemptStatus.INTERRUPTED), now, "the node stopped during this attempt", run_id, task_id),
                )
            number = task.attempts + 1
            db.execute(
                f"INSERT INTO dag_attempts ({_ATTEMPT_COLUMNS}) VALUES (?, ?, ?, 'running', ?, NULL, NULL, ?)",
                (run_id, task_id, number, now, session_id),
            )
            db.execute(
                "UPDATE dag_tasks SET status = 'running', attempts = ?, started_at = COALESCE(started_at, ?),"
                " reason = NULL WHERE run_id = ? AND task_id = ?",
                (number, now, run_id, task_id),
            )
            _append(db, run_id, events, now)
        return number

    def block(self, run_id: str, task_id: str, now: float, reason: str, *, events: Iterable[Event] = ()) -> None:
        """The running attempt waits for a person (a confirm request)."""
        self._attempt_move(run_id, task_id, TaskStatus.BLOCKED, AttemptStatus.BLOCKED, now, reason, events)

    def recover(self, run_id: str, task_id: str, now: float, *, events: Iterable[Event] = ()) -> None:
        """A blocked attempt runs on (the decision went back to the agent)."""
        with _Transaction(self) as db:
            task = _task(self._task_row(db, run_id, task_id))
            if task.status is not TaskStatus.BLOCKED:
                raise IllegalMove(f"task {run_id}/{task_id}", task.status, "running (recovered)")
            self._write_move(db, task, TaskStatus.RUNNING, AttemptStatus.RUNNING, None, None, now, events)

    def interrupt(self, run_id: str, task_id: str, now: float, *, events: Iterable[Event] = ()) -> None:
        """A restarted node found the task running or blocked: its attempt is
        closed as ``interrupted`` (not a failure: it uses up no retry) and the
        task waits, ``pending``, for its new attempt."""
        self._attempt_move(
            run_id, task_id, TaskStatus.PENDING, AttemptStatus.INTERRUPTED, now,
            "the node stopped during this attempt", events,
        )

    def finish(
        self,
        run_id: str,
        task_id: str,
        status: TaskStatus | str,
        now: float,
        *,
        reason: str | None = None,
        output: str | None = None,
        artifacts: Sequence[str] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """End the task's attempt, or the task:

        - ``completed``: the attempt and the task, with ``output`` (kept whole);
        - ``failed``: the attempt and the task (no retry left);
        - ``pending``: the attempt failed and a retry will come (``reason`` why);
        - ``cancelled`` / ``skipped``: the task, and its open attempt if any.

        :class:`TerminalState` if the task already ended, even when this is the
        same status again: every task ends once."""
        wanted = TaskStatus(status)
        if wanted not in _CLOSES_ATTEMPT_AS:
            raise ValueError(f"{wanted} does not end an attempt; use start_attempt, block or recover")
        if output is not None and wanted is not TaskStatus.COMPLETED:
            raise ValueError("only a completed task has an output")
        self._attempt_move(
            run_id, task_id, wanted, _CLOSES_ATTEMPT_AS[wanted], now, reason, events,
            output=output, artifacts=artifacts,
        )

    def _attempt_move(
        self,
        run_id: str,
        task_id: str,
        wanted: TaskStatus,
        attempt_status: AttemptStatus,
        now: float,
        reason: str | None,
        events: Iterable[Event],
        *,
        output: str | None = None,
        artifacts: Sequence[str] = (),
    ) -> None:
        # The moves of every task of every run go through here (twice a task
        # at least), so the common case is written in few statements: each
        # write is conditional on what it is checked against, and only a
        # refused one reads the row to say why (the transaction, or the
        # batch's savepoint, undoes what was written before the refusal).
        with _Transaction(self) as db:
            # The open attempt, if any, is the task's latest: start_attempt
            # closes any other before it numbers a new one.
            live = db.execute(
                "UPDATE dag_attempts SET status = ?, finished_at = ?, reason = COALESCE(?, reason)"
                " WHERE run_id = ? AND task_id = ? AND status IN ('running', 'blocked')",
                (str(attempt_status), now if attempt_status in ATTEMPT_TERMINAL else None, reason, run_id, task_id),
            ).rowcount
            # These close or change the attempt that is running; a task without
            # one cannot make them (cancelled, skipped, failed can: a pending task
            # may end without ever starting).
            if not live and wanted in _NEEDS_ATTEMPT:
                self._refuse(db, run_id, task_id, wanted)
            final = wanted in TASK_TERMINAL
            moved = db.execute(
                f"UPDATE dag_tasks SET status = ?, finished_at = ?, reason = ?"
                f" WHERE run_id = ? AND task_id = ? AND status IN {_MOVES_TO_SQL[wanted]}",
                (str(wanted), now if final else None, reason, run_id, task_id),
            ).rowcount
            if not moved:
                self._refuse(db, run_id, task_id, wanted)
            if output is not None:
                db.execute(
                    "INSERT INTO dag_outputs (run_id, task_id, attempt, text, size, artifacts)"
                    " SELECT run_id, task_id, attempts, ?, ?, ? FROM dag_tasks WHERE run_id = ? AND task_id = ?",
                    (output, len(output.encode("utf-8", "surrogatepass")), json.dumps(list(artifacts)),
                     run_id, task_id),
                )
            _append(db, run_id, events, now)

    def _refuse(self, db: sqlite3.Connection, run_id: str, task_id: str, wanted: TaskStatus) -> NoReturn:
        """Why the task cannot make the move: :class:`NotFound`,
        :class:`TerminalState` or :class:`IllegalMove` (always raises)."""
        task = _task(self._task_row(db, run_id, task_id))
        self._check_move(task, wanted)
        raise IllegalMove(f"task {run_id}/{task_id}", f"{task.status} with no open attempt", wanted)

    def _write_move(
        self,
        db: sqlite3.Connection,
        task: TaskRecord,
        wanted: TaskStatus,
        attempt_status: AttemptStatus,
        reason: str | None,
        output: str | None,
        now: float,
        events: Iterable[Event],
        *,
        artifacts: Sequence[str] = (),
    ) -> None:
        run_id, task_id = task.run_id, task.task_id
        live = db.execute(
            "SELECT attempt FROM dag_attempts WHERE run_id = ? AND task_id = ? AND status IN ('running', 'blocked')",
            (run_id, task_id),
        ).fetchone()
        # These close or change the attempt that is running; a task without
        # one cannot make them (cancelled, skipped, failed can: a pending task
        # may end without ever starting).
        needs_attempt = wanted in {TaskStatus.COMPLETED, TaskStatus.BLOCKED, TaskStatus.PENDING, TaskStatus.RUNNING}
        if live is None and needs_attempt:
            raise IllegalMove(f"task {run_id}/{task_id}", f"{task.status} with no open attempt", wanted)
        if live is not None:
            closing = attempt_status in ATTEMPT_TERMINAL
            # The attempt keeps the last reason given (a recovered attempt
            # still says why it was blocked).
            db.execute(
                "UPDATE dag_attempts SET status = ?, finished_at = ?, reason = COALESCE(?, reason)"
                " WHERE run_id = ? AND task_id = ? AND attempt = ?",
                (str(attempt_status), now if closing else None, reason, run_id, task_id, live[0]),
            )
            if output is not None:
                db.execute(
                    "INSERT INTO dag_outputs (run_id, task_id, attempt, text, size, artifacts) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, task_id, live[0], output, len(output.encode("utf-8", "surrogatepass")),
                     json.dumps(list(artifacts))),
                )
        final = wanted in TASK_TERMINAL
        db.execute(
            "UPDATE dag_tasks SET status = ?, finished_at = ?, reason = ? WHERE run_id = ? AND task_id = ?",
            (str(wanted), now if final else None, reason if wanted is not TaskStatus.RUNNING else None,
             run_id, task_id),
        )
        _append(db, run_id, events, now)

    @staticmethod
    def _check_move(task: TaskRecord, wanted: TaskStatus) -> None:
        what = f"task {task.run_id}/{task.task_id}"
        if task.status in TASK_TERMINAL:
            raise TerminalState(what, task.status, wanted)
        if wanted not in TASK_MOVES[task.status]:
            raise IllegalMove(what, task.status, wanted)

    @staticmethod
    def _task_row(db: sqlite3.Connection, run_id: str, task_id: str) -> tuple[Any, ...]:
        row = db.execute(
            f"SELECT {_TASK_COLUMNS} FROM dag_tasks WHERE run_id = ? AND task_id = ?", (run_id, task_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id!r} in run {run_id!r}")
        return tuple(row)

    @staticmethod
    def _run_in(db: sqlite3.Connection, run_id: str) -> RunRecord:
        row = db.execute(f"SELECT {_RUN_COLUMNS} FROM dag_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return _run(row)

    # -- outputs --------------------------------------------------------------------

    def output(self, run_id: str, task_id: str, attempt: int | None = None) -> Output:
        """The whole output of the task's completed attempt (or of ``attempt``)."""
        if attempt is None:
            row = self._db.execute(
                "SELECT run_id, task_id, attempt, text, size, artifacts FROM dag_outputs"
                " WHERE run_id = ? AND task_id = ? ORDER BY attempt DESC LIMIT 1",
                (run_id, task_id),
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT run_id, task_id, attempt, text, size, artifacts FROM dag_outputs"
                " WHERE run_id = ? AND task_id = ? AND attempt = ?",
                (run_id, task_id, attempt),
            ).fetchone()
        if row is None:
            raise NotFound(f"task {task_id!r} of run {run_id!r} has no output" + ("" if attempt is None else f" for attempt {attempt}"))
        return Output(row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])))

    def outputs(self, run_id: str) -> dict[str, str]:
        """Every completed task's output by task id: the upstream outputs a
        resumed run renders later prompts from."""
        rows = self._db.execute(
            "SELECT o.task_id, o.text FROM dag_outputs o JOIN dag_tasks t USING (run_id, task_id)"
            " WHERE o.run_id = ? AND t.status = 'completed' ORDER BY o.attempt",
            (run_id,),
        ).fetchall()
        return {task_id: text for task_id, text in rows}

    # -- status events (the status room's durable outbox) ------------------------------

    def append_status_events(self, run_id: str, events: Iterable[Event], now: float) -> list[int]:
        """Queue events on their own (most are appended with their transition,
        through the ``events`` argument of the writes above); their seqs."""
        with _Transaction(self) as db:
            return _append(db, run_id, events, now)

    def unsent_status_events(self, limit: int = 500, *, after: int = 0) -> list[StatusEvent]:
        """Events not yet in the status room, oldest first (``after``: a seq
        already taken, for reading past what is in flight)."""
        rows = self._db.execute(
            "SELECT seq, run_id, type, content, sent FROM dag_status_events WHERE sent = 0 AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [StatusEvent(seq, run, type_, json.loads(content), bool(sent)) for seq, run, type_, content, sent in rows]

    def mark_status_sent(self, seqs: Iterable[int]) -> None:
        with _Transaction(self) as db:
            db.executemany("UPDATE dag_status_events SET sent = 1 WHERE seq = ?", [(seq,) for seq in seqs])

    def status_backlog(self) -> int:
        """How many status events wait for Matrix (for /metrics and /healthz)."""
        return int(self._db.execute("SELECT COUNT(*) FROM dag_status_events WHERE sent = 0").fetchone()[0])

    def forget_sent_status_events(self, before: float) -> int:
        """Drop sent events queued before ``before`` (the room has them); how many."""
        with _Transaction(self) as db:
            return int(
                db.execute("DELETE FROM dag_status_events WHERE sent = 1 AND queued_at < ?", (before,)).rowcount
            )


# -- helpers ----------------------------------------------------------------------------


class _Transaction:
    """One write: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (ROLLBACK on error), the
    write lock taken at the start, so what is read inside is what the write
    is checked against. Inside :meth:`DagStore.batch` it is a savepoint
    instead: a write that fails leaves nothing of itself, and the batch
    commits the rest together."""

    def __init__(self, store: DagStore) -> None:
        self._store = store
        self._db = store._db

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        if store._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        elif store._savepoints:
            self._db.execute("SAVEPOINT dag_write")
        store._depth += 1
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store = self._store
        store._depth -= 1
        if store._depth == 0:
            store._savepoints = True
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
            if not exc_type and store.on_commit is not None:
                store.on_commit()
            return
        if not store._savepoints:
            return  # an all-or-nothing batch: the error, if any, undoes it whole
        if exc_type:
            self._db.execute("ROLLBACK TO dag_write")
        self._db.execute("RELEASE dag_write")


class _Migration:
    """BEGIN IMMEDIATE ... COMMIT around one migration."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


class _Batch:
    def __init__(self, store: DagStore, *, savepoints: bool) -> None:
        self._store = store
        self._savepoints = savepoints
        self._transaction = _Transaction(store)

    def __enter__(self) -> None:
        outer = self._store._depth == 0
        self._transaction.__enter__()
        if outer:  # inside another batch, it is one more write of that one
            self._store._savepoints = self._savepoints

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._transaction.__exit__(exc_type, exc, tb)


def _append(db: sqlite3.Connection, run_id: str, events: Iterable[Event], now: float) -> list[int]:
    seqs = []
    for type_, content in events:
        # Matrix's canonical JSON has no floats (SPEC 8.1): refused here, at
        # the writer, rather than by Synapse when the batch goes out (and then
        # forever, as it would stay first in the queue).
        _no_floats(content, type_)
        text = json.dumps(content, separators=(",", ":"))
        cursor = db.execute(
            "INSERT INTO dag_status_events (run_id, type, content, queued_at) VALUES (?, ?, ?, ?)",
            (run_id, type_, text, now),
        )
        assert cursor.lastrowid is not None
        seqs.append(cursor.lastrowid)
    return seqs


def _no_floats(value: object, where: str) -> None:
    if isinstance(value, float):
        raise ValueError(f"{where}: {value!r} is a float; Matrix events hold integers only")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _no_floats(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _no_floats(item, f"{where}[{index}]")


def _migrate(db: sqlite3.Connection, source: str) -> None:
    db.executescript(_BASE_SCHEMA)
    (version,) = db.execute("SELECT version FROM dag_schema").fetchone()
    if version > SCHEMA_VERSION:
        raise DagStoreError(
            f"{source} has DAG schema version {version}, but this lambda_actors knows only up to {SCHEMA_VERSION}:"
            " it was written by a newer release. Run that release, or point --data-dir at another directory."
        )
    for number in range(version, SCHEMA_VERSION):
        with _Migration(db) as tx:
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    tx.execute(statement)
            # The bump is in the migration's own transaction: a crash leaves it
            # wholly done or not.
            tx.execute("UPDATE dag_schema SET version = ?", (number + 1,))


def _run(row: tuple[Any, ...]) -> RunRecord:
    run_id, dag_id, version, status, owner, created, started, finished, room_id, board = row
    return RunRecord(run_id, dag_id, version, RunStatus(status), owner, created, started, finished, room_id, board)


def _task(row: tuple[Any, ...]) -> TaskRecord:
    run_id, task_id, status, attempts, started, finished, reason = row
    return TaskRecord(run_id, task_id, TaskStatus(status), attempts, started, finished, reason)


def _attempt(row: tuple[Any, ...]) -> AttemptRecord:
    run_id, task_id, attempt, status, started, finished, reason, session_id = row
    return AttemptRecord(run_id, task_id, attempt, AttemptStatus(status), started, finished, reason, session_id)
