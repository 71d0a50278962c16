"""lambda_actors: a fault-tolerant Matrix bot for AI agents, on a supervised actor runtime for Trio.

The runtime (this package's top level) is a library in its own right:

    async with lambda_actors.open_supervisor("app", [ChildSpec("worker", worker)]) as sup:
        await sup.address("worker").send("hello")

See docs/runtime.md for the concepts and every supervision.toml key.
"""

from .address import Address
from .backoff import Backoff
from .context import ActorContext, MailboxReader
from .errors import (
    ActorError,
    ActorKilled,
    ActorStopped,
    CallAborted,
    CallError,
    CallTimeout,
    ChildSpecError,
    IntensityExceeded,
    MailboxFull,
    NoSuchActor,
)
from .events import (
    BackingOff,
    Escalated,
    EventStream,
    Exited,
    MessageDropped,
    Parked,
    Restarted,
    Started,
    SupervisionEvent,
    Unparked,
)
from .log import add_actor_path, current_actor_path
from .mailbox import MailboxStatistics, Overflow
from .policy import OnExhausted, Policy, Restart, Strategy
from .registry import Registry
from .request import Request
from .spec import ChildSpec, SupervisorSpec
from .state import ChildState, Status
from .supervision_config import (
    SupervisionConfig,
    SupervisionConfigError,
    load_supervision_config,
    parse_supervision_config,
)
from .supervisor import (
    ChildCounts,
    Supervisor,
    SupervisorStatistics,
    open_supervisor,
    serve_supervisor,
)

__all__ = [
    # running a tree
    "open_supervisor",
    "serve_supervisor",
    "Supervisor",
    "ChildSpec",
    "SupervisorSpec",
    # actors
    "ActorContext",
    "MailboxReader",
    "Address",
    "Request",
    "Registry",
    # policy
    "Policy",
    "Restart",
    "Strategy",
    "OnExhausted",
    "Overflow",
    "Backoff",
    "SupervisionConfig",
    "load_supervision_config",
    "parse_supervision_config",
    # observing
    "ChildState",
    "Status",
    "ChildCounts",
    "MailboxStatistics",
    "SupervisorStatistics",
    "EventStream",
    "SupervisionEvent",
    "Started",
    "Exited",
    "Restarted",
    "BackingOff",
    "Parked",
    "Unparked",
    "Escalated",
    "MessageDropped",
    "add_actor_path",
    "current_actor_path",
    # errors
    "ActorError",
    "ActorStopped",
    "MailboxFull",
    "CallError",
    "CallAborted",
    "CallTimeout",
    "ActorKilled",
    "IntensityExceeded",
    "ChildSpecError",
    "NoSuchActor",
    "SupervisionConfigError",
]
