"""Which actor is logging: the actor path as structlog context.

Each actor task binds ``actor=<path>`` with ``structlog.contextvars``, so
every structlog call made in the actor, or in a task the actor spawns (a new
task inherits its spawner's context), carries the path with structlog's
default processors (``merge_contextvars`` is among them). For a processor
chain without ``merge_contextvars``, add ``add_actor_path``.

Why context variables and not a tricycle ``TreeVar``: the two agree for every
task an actor spawns itself, and a TreeVar costs each task a state object, a
weak-key dictionary and a token (about 1 KB and tens of microseconds), which
would be most of an idle actor's footprint and spawn time.
"""

from __future__ import annotations

import contextvars
from typing import Any, MutableMapping

import structlog

__all__ = ["current_actor_path", "add_actor_path", "runtime_logger"]

_actor_path: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lambda_actors.actor_path", default=None
)


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
    """A structlog logger bound to ``actor=path``."""
    return structlog.get_logger().bind(actor=path)


def _set_actor_path(path: str) -> None:
    """Called first thing in an actor's task; the task ends with the actor, so no reset."""
    _actor_path.set(path)
    structlog.contextvars.bind_contextvars(actor=path)
