"""pytest fixtures: a real Synapse homeserver and Matrix users on it.

- ``synapse``: one Synapse (relaxed rate limits) for the whole session.
- ``synapse_default_limits``: a second one, started only if a test asks for
  it, keeping Synapse's default rate limits (0.2 messages/s, burst 10) for
  tests of 429 handling.
- ``matrix_user``: a factory registering a fresh user on ``synapse`` (or on
  the homeserver given as ``server=``); returns a
  :class:`~lambda_actors.homeserver.RegisteredUser` (``user_id``,
  ``access_token``, ``password``, ``device_id``).

Every Synapse started here is stopped when the session ends, on failure and
on Ctrl-C too (pytest runs session teardown), and is killed by the kernel if
the pytest process itself is killed.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator

import pytest

from lambda_actors.homeserver import (
    Homeserver,
    RegisteredUser,
    register_user,
    start_synapse,
    stop_synapse,
)

MatrixUserFactory = Callable[..., RegisteredUser]


def _run_synapse(tmp_path_factory: pytest.TempPathFactory, name: str, rate_limits: str) -> Iterator[Homeserver]:
    directory = tmp_path_factory.mktemp(name)
    server = start_synapse(directory, rate_limits=rate_limits)
    try:
        yield server
    finally:
        stop_synapse(directory)


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
