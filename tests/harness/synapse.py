"""pytest fixtures: a real Synapse homeserver and Matrix users on it.

- ``synapse``: one Synapse (relaxed rate limits) for the whole session.
- ``synapse_default_limits``: a second one, started only if a test asks for
  it, keeping Synapse's default rate limits (0.2 messages/s, burst 10) for
  tests of 429 handling.
- ``matrix_user``: a factory registering a fresh user on ``synapse`` (or on
  the homeserver given as ``server=``); returns a
  :class:`~lambda_actors.loopback.homeserver.RegisteredUser` (``user_id``,
  ``access_token``, ``password``, ``device_id``).
- ``matrix_client``: a factory of ``MatrixClient`` for such a user, closed
  after the test; :class:`SyncCursor` follows a client's sync stream and
  waits for an event.

Every Synapse started here is stopped when the session ends, on failure and
on Ctrl-C too (pytest runs session teardown), and is killed by the kernel if
the pytest process itself is killed.

Synapse's files live on tmpfs (``/dev/shm``) while it runs, as in the chaos
run: Synapse on SQLite waits for every commit to reach the disk, and on a
shared VM's disk that makes every send of the suite wait for it. After the
session its directory (log included) is moved under pytest's temporary
directory with the rest; one left on tmpfs by a killed session is removed
by a later session once it is an hour old and its Synapse is gone.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import trio

from lambda_actors.loopback.homeserver import (
    Homeserver,
    RegisteredUser,
    register_user,
    start_synapse,
    stop_synapse,
)
from lambda_actors.matrix import MatrixClient, SyncBatch, parse_sync

MatrixUserFactory = Callable[..., RegisteredUser]


def _run_synapse(
    tmp_path_factory: pytest.TempPathFactory, name: str, rate_limits: Literal["relaxed", "default"]
) -> Iterator[Homeserver]:
    kept = tmp_path_factory.mktemp(name)
    shm = "/dev/shm"
    if os.access(shm, os.W_OK):
        _remove_stale(Path(shm))
        directory = tempfile.mkdtemp(prefix=f"{_SHM_PREFIX}{name}-", dir=shm)
    else:
        directory = str(kept)
    try:
        server = start_synapse(directory, rate_limits=rate_limits)
        try:
            yield server
        finally:
            stop_synapse(directory)
    finally:
        if directory != str(kept):
            shutil.rmtree(kept)
            shutil.move(directory, kept)


_SHM_PREFIX = "lambda-actors-test-"
#: A directory on tmpfs older than this whose Synapse is not running was left
#: by a test session that was killed (no teardown ran): its RAM is freed.
_STALE_AFTER = 3600.0


def _remove_stale(shm: Path) -> None:
    """Remove Synapse directories of killed sessions (never one whose Synapse still runs)."""
    for directory in shm.glob(f"{_SHM_PREFIX}*"):
        try:
            if time.time() - directory.stat().st_mtime < _STALE_AFTER:
                continue  # perhaps a session starting right now
            state = directory / "synapse.json"
            pid = int(json.loads(state.read_text())["pid"]) if state.exists() else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid is not None and Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    """The session's Synapse: loopback, SQLite, every rate limit raised."""
    yield from _run_synapse(tmp_path_factory, "synapse", "relaxed")


@pytest.fixture(scope="session")
def synapse_default_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    """A Synapse with Synapse's default rate limits, for 429 tests only."""
    yield from _run_synapse(tmp_path_factory, "synapse-default-limits", "default")


_user_numbers = itertools.count(1)


@pytest.fixture
def matrix_user(synapse: Homeserver) -> MatrixUserFactory:
    """Register a fresh user: ``matrix_user()``, ``matrix_user("alice")``,
    ``matrix_user(admin=True)``, ``matrix_user(server=synapse_default_limits)``.

    Localparts get a unique suffix so tests sharing the session Synapse never
    collide.
    """

    def make(name: str = "user", *, admin: bool = False, server: Homeserver | None = None) -> RegisteredUser:
        server = server or synapse
        localpart = f"{name}-{next(_user_numbers)}-{secrets.token_hex(3)}"
        return register_user(
            server.url,
            server.registration_shared_secret,
            localpart,
            password=secrets.token_urlsafe(16),
            admin=admin,
        )

    return make


@pytest.fixture
async def matrix_client(synapse: Homeserver) -> AsyncIterator[Callable[..., MatrixClient]]:
    """Make a :class:`MatrixClient` logged in as a :class:`RegisteredUser`:
    ``client = matrix_client(alice)`` (``server=`` for another homeserver,
    other keywords go to ``MatrixClient``). All are closed after the test."""
    clients: list[MatrixClient] = []

    def make(user: RegisteredUser, *, server: Homeserver | None = None, **options: Any) -> MatrixClient:
        client = MatrixClient(
            (server or synapse).url,
            access_token=user.access_token,
            user_id=user.user_id,
            device_id=user.device_id,
            **options,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


class SyncCursor:
    """One client's place in its sync stream, for tests that wait for events.

    It always carries ``next_batch`` forward (Synapse caches identical sync
    requests) and waits by long-polling, never by sleeping.
    """

    def __init__(self, client: MatrixClient, since: str | None = None, filter_id: str | None = None) -> None:
        self.client = client
        self.since = since
        self.filter_id = filter_id

    @classmethod
    async def start(cls, client: MatrixClient, filter_id: str | None = None) -> "SyncCursor":
        """Begin after everything that has happened so far."""
        cursor = cls(client, None, filter_id)
        await cursor.next(timeout_ms=0)
        return cursor

    async def next(self, timeout_ms: int = 5_000) -> SyncBatch:
        body = await self.client.sync(self.since, timeout_ms=timeout_ms, filter_id=self.filter_id)
        batch = parse_sync(body, self.client.user_id)
        self.since = batch.next_batch
        return batch

    async def wait_for(self, predicate: Callable[[Any], bool], *, within: float = 15.0) -> Any:
        """The first timeline event or invite (from now on) matching *predicate*."""
        with trio.fail_after(within):
            while True:
                batch = await self.next()
                for item in (*batch.invites, *(event for room in batch.rooms for event in room.timeline)):
                    if predicate(item):
                        return item
