"""lambda_actors: a fault-tolerant Matrix bot for AI agents, on a supervised actor runtime for Trio.

The runtime (this package's top level) is a library in its own right:

    async with lambda_actors.open_supervisor("app", [ChildSpec("worker", worker)]) as sup:
        await sup.address("worker").send("hello")

See docs/runtime.md for the concepts and every supervision.toml key.
"""

from .runtime.address import Address
from .runtime.backoff import Backoff
from .runtime.context import ActorContext, MailboxReader
from .runtime.errors import (
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
from .runtime.events import (
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
from .runtime.log import add_actor_path, current_actor_path
from .runtime.mailbox import MailboxStatistics, Overflow
from .runtime.monitors import Down
from .runtime.policy import OnExhausted, Policy, Restart, Strategy
from .runtime.registry import Registry
from .runtime.request import Request
from .runtime.spec import ChildSpec, SupervisorSpec
from .runtime.state import ChildState, Status
from .runtime.supervision_config import (
    SupervisionConfig,
    SupervisionConfigError,
    load_supervision_config,
    parse_supervision_config,
)
from .runtime.supervisor import (
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
    "Down",
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
