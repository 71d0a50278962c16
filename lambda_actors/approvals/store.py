"""Approvals and their callbacks in SQLite: the record is the truth.

Every write that belongs together is one transaction: a decision and the
callback it owes are written together, so a crash can neither lose a
callback nor send one for a decision that was not kept. A decision is
written only over ``pending`` (``WHERE status = 'pending'``), so two
decisions racing (an answer and the deadline, say) leave exactly one.

Callbacks carry the client's token as their signing key (SPEC 7.1 signs
with it, and an undelivered callback must still be signed after a
restart). It is kept only while the callback is owed, in this private
database (0600, in a 0700 directory), and deleted with the delivery.
Records are never deleted: they are the audit trail.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from .record import Approval, Source, Status, Via

__all__ = ["ApprovalStore", "Callback", "SCHEMA", "hold_callback", "new_approval_id", "owe_callback"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    client TEXT NOT NULL,
    request_id TEXT,
    fingerprint TEXT NOT NULL,
    approver TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    action TEXT NOT NULL,
    details TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    callback_url TEXT,
    room_id TEXT,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    decided_via TEXT,
    shown TEXT,
    UNIQUE (client, request_id)
);
CREATE INDEX IF NOT EXISTS approvals_pending ON approvals (expires_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approvals_newest ON approvals (created_at);
CREATE TABLE IF NOT EXISTS approval_callbacks (
    delivery_id TEXT PRIMARY KEY,
    approval_id TEXT NOT NULL,
    url TEXT NOT NULL,
    signing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    give_up_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS approval_callbacks_due ON approval_callbacks (next_at);
"""

_COLUMNS = (
    "id, source, client, request_id, fingerprint, approver, agent_id, action, details, created_at, "
    "expires_at, callback_url, room_id, status, decided_by, decided_at, decided_via"
)
#: How long a callback is retried (SPEC 7.1: for 24 h).
CALLBACK_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Callback:
    delivery_id: str
    approval_id: str
    url: str
    signing_key: str
    body: bytes
    attempts: int
    next_at: float
    give_up_at: float


class ApprovalStore:
    """Approvals on an open SQLite connection (the node's database)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, shared by the registrations (one database, one writer thread)."""
        return self._db

    # -- records --------------------------------------------------------------------

    def create(self, record: Approval, signing_key: str | None = None) -> tuple[Approval, bool]:
        """Insert ``record``; ``(record, True)``. With a ``request_id`` this
        client used before, nothing is written: ``(earlier record, False)``."""
        if record.request_id is not None:
            earlier = self.by_request(record.client, record.request_id)
            if earlier is not None:
                return earlier, False
        with self._db:
            self._db.execute(
                f"INSERT INTO approvals ({_COLUMNS}) VALUES ({', '.join('?' * 17)})", _row(record)
            )
            if signing_key is not None and record.callback_url:
                hold_callback(self._db, record.id, record.callback_url, signing_key)
        return record, True

    def get(self, approval_id: str) -> Approval | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _record(row) if row else None

    def by_request(self, client: str, request_id: str) -> Approval | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE client = ? AND request_id = ?", (client, request_id)
        ).fetchone()
        return _record(row) if row else None

    def listing(
        self, *, status: Status | None = None, approver: str | None = None, limit: int = 50, before: str | None = None
    ) -> list[Approval]:
        """Newest first; ``before`` is the id of the last record of the previous page."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(str(status))
        if approver is not None:
            where.append("approver = ?")
            args.append(approver)
        if before is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM approvals WHERE id = ?)")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM approvals {clause} ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [_record(row) for row in rows]

    def pending(self) -> list[Approval]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE status = 'pending' ORDER BY expires_at"
        ).fetchall()
        return [_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """How many records there are of each status (for ``/metrics``)."""
        rows = self._db.execute("SELECT status, COUNT(*) FROM approvals GROUP BY status").fetchall()
        return {str(status): int(n) for status, n in rows}

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()[0])

    def next_expiry(self) -> float | None:
        """The earliest deadline of a pending record."""
        return self._db.execute("SELECT MIN(expires_at) FROM approvals WHERE status = 'pending'").fetchone()[0]

    def shown(self, approval_id: str) -> Status | None:
        """The status last shown in Matrix (None: not shown yet)."""
        row = self._db.execute("SELECT shown FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return Status(row[0]) if row and row[0] else None

    def mark_shown(self, approval_id: str, status: Status) -> None:
        with self._db:
            self._db.execute("UPDATE approvals SET shown = ? WHERE id = ?", (str(status), approval_id))

    def record_decision(self, decided: Approval, now: float) -> bool:
        """Write a final status over ``pending``; False if the record was
        already final (the first decision stands). The callback it owes is
        made due in the same transaction."""
        assert decided.final
        with self._db:
            changed = self._db.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, decided_via = ?"
                " WHERE id = ? AND status = 'pending'",
                (str(decided.status), decided.decided_by, decided.decided_at, str(decided.decided_via), decided.id),
            ).rowcount
            if changed:
                owe_callback(self._db, decided.id, decided.to_json(), now)
        return bool(changed)

    # -- callbacks ------------------------------------------------------------------

    def due_callbacks(self, now: float) -> list[Callback]:
        rows = self._db.execute(
            "SELECT delivery_id, approval_id, url, signing_key, body, attempts, next_at, give_up_at"
            " FROM approval_callbacks WHERE next_at >= 0 AND next_at <= ? ORDER BY next_at",
            (now,),
        ).fetchall()
        return [Callback(*row) for row in rows]

    def next_callback_at(self) -> float | None:
        row = self._db.execute("SELECT MIN(next_at) FROM approval_callbacks WHERE next_at >= 0").fetchone()
        return row[0]

    def lease_callback(self, delivery_id: str, until: float) -> None:
        with self._db:
            self._db.execute("UPDATE approval_callbacks SET next_at = ? WHERE delivery_id = ?", (until, delivery_id))

    def callback_done(self, delivery_id: str) -> None:
        """Delivered, or given up: the row (and its key) goes."""
        with self._db:
            self._db.execute("DELETE FROM approval_callbacks WHERE delivery_id = ?", (delivery_id,))

    def callback_failed(self, delivery_id: str, error: str, next_at: float) -> None:
        with self._db:
            self._db.execute(
                "UPDATE approval_callbacks SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE delivery_id = ?",
                (error[:500], next_at, delivery_id),
            )


def hold_callback(db: sqlite3.Connection, owner_id: str, url: str, signing_key: str) -> None:
    """Keep a callback aside until ``owner_id`` (an approval or a registration)
    is final: the key is needed then. Inside the caller's transaction."""
    db.execute(
        "INSERT INTO approval_callbacks (delivery_id, approval_id, url, signing_key, body, next_at, give_up_at)"
        " VALUES (?, ?, ?, ?, x'', -1, -1)",
        (_delivery_id(), owner_id, url, signing_key),
    )


def owe_callback(db: sqlite3.Connection, owner_id: str, record: dict[str, Any], now: float) -> None:
    """The held callback of ``owner_id`` is due now with ``record`` as its body
    (nothing if none was held). Inside the caller's transaction."""
    body = json.dumps(record, separators=(",", ":")).encode()
    db.execute(
        "UPDATE approval_callbacks SET body = ?, next_at = ?, give_up_at = ? WHERE approval_id = ?",
        (body, now, now + CALLBACK_TTL_S, owner_id),
    )


def new_approval_id() -> str:
    return f"apr_{uuid.uuid4()}"


def _delivery_id() -> str:
    return f"dlv_{uuid.uuid4()}"


def _row(r: Approval) -> tuple[object, ...]:
    return (
        r.id, str(r.source), r.client, r.request_id, r.fingerprint, r.approver, r.agent_id, r.action,
        json.dumps(r.details) if r.details is not None else None, r.created_at, r.expires_at, r.callback_url,
        r.room_id, str(r.status), r.decided_by, r.decided_at, str(r.decided_via) if r.decided_via else None,
    )


def _record(row: tuple[Any, ...]) -> Approval:
    (id_, source, client, request_id, fingerprint, approver, agent_id, action, details, created_at, expires_at,
     callback_url, room_id, status, decided_by, decided_at, decided_via) = row
    return Approval(
        id=id_, source=Source(source), client=client, request_id=request_id, fingerprint=fingerprint,
        approver=approver, agent_id=agent_id, action=action,
        details=json.loads(details) if details is not None else None,
        created_at=created_at, expires_at=expires_at, callback_url=callback_url, room_id=room_id,
        status=Status(status), decided_by=decided_by, decided_at=decided_at,
        decided_via=Via(decided_via) if decided_via is not None else None,
    )
