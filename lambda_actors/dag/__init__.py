"""DAG runs of agent tasks (SPEC section 8): one idea per module.

- ``spec``: the DAG file (TOML or JSON) parsed and checked, every problem at once; content versions; prompt rendering.
- ``scheduler``: one run's pure state machine: events and ``now`` in, actions (start, cancel, wake me) out.
- ``slots``: the node's slot allocator, pure: ``[dag.local] max_workers`` shared by runs, by priority then readiness.
- ``store``: specs, runs, attempts and outputs in SQLite, so a restarted node resumes its runs.
- ``status``: the ``cis.dag.*`` status events' contents (SPEC 8.1), built and parsed in one place.
- ``board``: the ``m.notice`` board per run that people see in Element (an HTML table, edited on change).
- ``heartbeat``: the node's heartbeats and liveness (SPEC 8.2).
- ``subscribe``: ``lambda-actors subscribe ROOM``, watching a status or heartbeat room (SPEC 8.4).
- ``actors``: the actors that run DAGs: a worker supervisor per scope, an actor per running task, broadcasters.
- ``api``: the HTTP routes of SPEC 8 (scope ``dag``): publish, confirm, runs, outputs, server-sent events.
- ``parts``: what DAG runs add to the node: the ``node/dag`` subtree, the Matrix side, the API routes.
- ``cli``: ``lambda-actors dag ...`` (``validate`` offline; the rest through the node's API).
"""
