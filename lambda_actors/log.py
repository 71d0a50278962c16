"""Which actor is logging: the actor path as structlog context.

The path lives in a tricycle ``TreeVar``, which (unlike a ContextVar) is
inherited by tasks started in nurseries the actor opens, so helpers running
in an actor's own nursery log under its path too. Add
``add_actor_path`` to structlog's processors to get an ``actor`` key on every
line logged inside an actor; ``ActorContext.log`` is already bound to it.
"""

from __future__ import annotations

from typing import Any, MutableMapping

import structlog
from tricycle import TreeVar

__all__ = ["current_actor_path", "add_actor_path", "runtime_logger"]

_actor_path: TreeVar[str | None] = TreeVar("lambda_actors.actor_path", default=None)


def current_actor_path() -> str | None:
    """The path of the actor whose task (or a task it spawned) is running, if any."""
    return _actor_path.get()


def add_actor_path(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: set ``actor`` to the current actor's path when not given."""
    if "actor" not in event_dict:
        path = _actor_path.get()
        if path is not None:
            event_dict["actor"] = path
    return event_dict


def runtime_logger(path: str) -> Any:
    """The runtime's own logger for supervision events of ``path``."""
    return structlog.get_logger("lambda_actors.runtime").bind(actor=path)


def _being(path: str) -> Any:
    return _actor_path.being(path)
