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

#: The longest files, longest first (worker-seconds of one file run alone on
#: a quiet 2-core machine, measured 2026-12-02; under load they stretch, the
#: ones that wait on fixed timers least): the 3-node cluster (60-90 s), the
#: small chaos run (~40 s), the homeserver outage (~35 s, 20 s of it the
#: outage itself), approvals (~33 s), agents, chat, the DAG cluster node,
#: seams, the bot's exit statuses (~20-25 s each), then the ~10-18 s ones.
#: Everything else is under 10 s and fills in at the end.
SLOW_FIRST = (
    "tests/e2e/test_e2e_cluster.py",
    "tests/e2e/test_e2e_chaos.py",
    "tests/e2e/test_e2e_outage.py",
    "tests/e2e/test_e2e_approvals.py",
    "tests/e2e/test_e2e_agents.py",
    "tests/e2e/test_e2e_chat.py",
    "tests/dag/test_dag_cluster_node.py",
    "tests/e2e/test_e2e_seams.py",
    "tests/bot/test_bot_run.py",
    "tests/e2e/test_e2e_restart.py",
    "tests/e2e/test_e2e_room_faults.py",
    "tests/e2e/test_e2e_limits.py",
    "tests/matrix/test_matrix_client.py",
    "tests/e2e/test_e2e_dag_status.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(SLOW_FIRST)}
    # A stable sort: every other file keeps its place, after these.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
