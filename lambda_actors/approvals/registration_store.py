"""Registrations in SQLite, beside the approvals (same database, same connection).

An approved registration *is* the registered agent: its row holds the DID,
the agent's fields and its room, so a restarted node starts it again
(:meth:`RegistrationStore.agents`). Rows are never deleted: a deregistered
agent keeps its row (status ``deregistered``), the audit trail.

A registration's callback (SPEC 7.2 "callback like approvals") rides the
approvals' callback table: held with the client's token when the
registration is made, made due with the registration's final record in the
same transaction that writes it final, delivered by ``node/approval-callbacks``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .registration import RegStatus, Registration
from .store import hold_callback, owe_callback

__all__ = ["RegistrationStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    request_id TEXT,
    fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    label TEXT NOT NULL,
    base_url TEXT NOT NULL,
    workspace_path TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    callback_url TEXT,
    status TEXT NOT NULL,
    agent_did TEXT UNIQUE,
    room_id TEXT,
    decided_by TEXT,
    decided_at REAL,
    deregistered_at REAL,
    UNIQUE (client, request_id)
);
"""

_COLUMNS = (
    "id, client, request_id, fingerprint, owner, label, base_url, workspace_path, approval_id, created_at, "
    "expires_at, callback_url, status, agent_did, room_id, decided_by, decided_at, deregistered_at"
)


class RegistrationStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)

    def create(self, registration: Registration, signing_key: str | None = None) -> None:
        with self._db:
            self._db.execute(
                f"INSERT INTO registrations ({_COLUMNS}) VALUES ({', '.join('?' * 18)})", _row(registration)
            )
            if signing_key is not None and registration.callback_url:
                hold_callback(self._db, registration.id, registration.callback_url, signing_key)

    def get(self, registration_id: str) -> Registration | None:
        return self._one("id = ?", registration_id)

    def by_request(self, client: str, request_id: str) -> Registration | None:
        return self._one("client = ? AND request_id = ?", client, request_id)

    def by_did(self, did: str) -> Registration | None:
        return self._one("agent_did = ?", did)

    def pending(self) -> list[Registration]:
        return self._many("status = 'pending' ORDER BY created_at")

    def agents(self) -> list[Registration]:
        """Every registration that became an agent (approved or deregistered since), oldest first."""
        return self._many("agent_did IS NOT NULL AND status IN ('approved', 'deregistered') ORDER BY decided_at")

    def set_did(self, registration_id: str, did: str) -> Registration:
        """Keep the DID minted for a registration before its agent is set up:
        a crash mid-set-up finds it again (one agent, one DID)."""
        with self._db:
            self._db.execute(
                "UPDATE registrations SET agent_did = ? WHERE id = ? AND agent_did IS NULL", (did, registration_id)
            )
        found = self.get(registration_id)
        assert found is not None
        return found

    def settle(self, moved: Registration, now: float) -> bool:
        """Write a registration's move over the status it had; False if another
        move came first. A move to a final outcome makes its callback due
        in the same transaction."""
        with self._db:
            changed = self._db.execute(
                "UPDATE registrations SET status = ?, agent_did = ?, room_id = ?, decided_by = ?, decided_at = ?,"
                " deregistered_at = ? WHERE id = ? AND status = ?",
                (str(moved.status), moved.agent_did, moved.room_id, moved.decided_by, moved.decided_at,
                 moved.deregistered_at, moved.id, _before(moved)),
            ).rowcount
            if changed and moved.status is not RegStatus.DEREGISTERED:
                owe_callback(self._db, moved.id, moved.to_json(), now)
        return bool(changed)

    def _one(self, where: str, *args: Any) -> Registration | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM registrations WHERE {where}", args).fetchone()
        return _record(row) if row else None

    def _many(self, where: str) -> list[Registration]:
        return [_record(row) for row in self._db.execute(f"SELECT {_COLUMNS} FROM registrations WHERE {where}")]


def _before(moved: Registration) -> str:
    """The status a move starts from (the table in :mod:`.registration`)."""
    return str(RegStatus.APPROVED if moved.status is RegStatus.DEREGISTERED else RegStatus.PENDING)


def _row(r: Registration) -> tuple[object, ...]:
    return (
        r.id, r.client, r.request_id, r.fingerprint, r.owner, r.label, r.base_url, r.workspace_path, r.approval_id,
        r.created_at, r.expires_at, r.callback_url, str(r.status), r.agent_did, r.room_id, r.decided_by,
        r.decided_at, r.deregistered_at,
    )


def _record(row: tuple[Any, ...]) -> Registration:
    fields = list(row)
    fields[12] = RegStatus(fields[12])
    return Registration(*fields)
