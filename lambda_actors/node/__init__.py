"""The node: what a running ``lambda-actors run`` is beyond the chat bot.

Its own settings (``config/node.toml``, :mod:`.config`) and, as they are
built, its HTTP API, approvals and DAG runs (SPEC sections 7, 8 and 10).
"""
