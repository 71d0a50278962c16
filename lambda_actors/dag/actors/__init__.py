"""The actors that run DAGs on one node (SPEC section 8), under ``node/dag``::

    node/dag                   supervisor (dag/parts.py)
    ├── runs                   the coordinator: resumes runs on start, starts runs,
    │                          keeps the scope workers (coordinator.py)
    ├── worker-global          one supervisor per scope, started on demand
    │   ├── run-<id>           one actor per running run: drives its Scheduler (run.py)
    │   └── task-<run>-<task>-<n>  one actor per running attempt (task.py)
    └── worker-project-<id> ...

The routes of the API reach them through :class:`.control.NodeDagControl`.
"""
