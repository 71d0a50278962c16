"""Shared pytest set-up.

Fixtures live in ``tests/harness/`` as plugins so each part of the harness
(the Synapse homeserver, the fake agents) is one module of its own.
"""

pytest_plugins = [
    "harness.synapse",
    "harness.agents",
    "harness.bot",
]
