"""Shared pytest set-up.

Fixtures live in ``tests/harness/`` as plugins so each part of the harness
(the Synapse homeserver, the fake agents) is one module of its own.

The slowest files are collected first: ``scripts/test`` runs two workers,
each taking whole files in collection order (``--dist loadfile``), and a
long file taken last would keep one worker busy while the other waits.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "harness.synapse",
    "harness.agents",
    "harness.bot",
]

#: The longest files (a minute to half a minute each on 2 cores), longest first.
SLOW_FIRST = (
    "tests/e2e/test_e2e_chaos.py",
    "tests/e2e/test_e2e_approvals.py",
    "tests/e2e/test_e2e_outage.py",
    "tests/e2e/test_e2e_seams.py",
    "tests/e2e/test_e2e_restart.py",
    "tests/e2e/test_e2e_chat.py",
    "tests/e2e/test_e2e_agents.py",
    "tests/e2e/test_e2e_dag_status.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(SLOW_FIRST)}
    # A stable sort: every other file keeps its place, after these.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
