"""The loopback profile: the timing and supervision policy of every loopback bot.

The demo, the test harness (``tests/harness/bot.py``), the chaos run and its
end-to-end test all run the bot against a throwaway Synapse and fake agents
on loopback. They used to carry four hand-tuned copies of the same two
things; this module is the one source:

- :data:`LOOPBACK_TIMING`: the bot's timeouts for a bot run in this process
  (the demo, the harness). Short enough that nothing waits long, long enough
  that no timeout fires by accident on a loaded two-core machine. A bot run
  as ``lambda-actors run`` (the chaos run, the restart tests) keeps the
  production :class:`~lambda_actors.bot.actors.services.Timing`: that is
  what operators run, so that is what the chaos run measures.
- :class:`SupervisionProfile`: the shape of the shipped
  ``lambda_actors/bot/supervision.toml`` (its ``[defaults]``; connections restart with backoff under their
  agent's supervisor, which escalates to ``node/agents``, which parks the
  agent; rooms that keep crashing are parked alone), with the few numbers
  that a loopback run needs to differ from production as fields.
  :data:`LOOPBACK` is the profile of the demo and the tests; :data:`CHAOS`
  is the same profile with the agent limits scaled to the chaos run's kill
  rate (it crashes connections about once a second, far more often than any
  real agent fails: with the test limits every touched agent would simply
  stay parked, and no connection would be left to kill).

Nothing here is a mock: a profile is rendered to TOML and loaded by the same
loader as the operator's file (:meth:`SupervisionProfile.config`), or written
next to a bot process (:meth:`SupervisionProfile.write`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..bot.actors.services import Timing
from ..runtime.supervision_config import SupervisionConfig, parse_supervision_config

__all__ = ["CHAOS", "LOOPBACK", "LOOPBACK_TIMING", "SupervisionProfile"]

#: Timeouts of an in-process loopback bot. The status and idle timeouts are
#: well above what a fake agent on loopback needs (it sends STATUS at once and
#: spaces chunks at most ``slow_interval`` apart) and below a ``stall``, so a
#: stall is reported as one. ``edit_interval`` is below the fake agents'
#: chunk spacing, so a streamed answer visibly grows by several edits.
LOOPBACK_TIMING = Timing(
    agent_connect_timeout=5.0,
    agent_status_timeout=3.0,
    agent_idle_timeout=4.0,
    confirmation_timeout=60.0,
    edit_interval=0.2,
    sync_timeout_ms=5_000,
)


@dataclass(frozen=True)
class SupervisionProfile:
    """The numbers of a loopback supervision policy; everything else is production's shape."""

    name: str
    #: ``node/agents`` parks an agent whose supervisor gave up more than this
    #: many times in ``agents_period`` seconds (0: at the first escalation).
    agent_escalations: int
    agents_period: float
    #: How long a parked agent waits before it is tried again.
    agent_cool_down: float
    #: An agent's supervisor escalates after more than this many connection
    #: restarts in ``connection_period`` seconds.
    connection_restarts: int
    connection_period: float
    #: Reconnect delays of a connection actor (first, cap) and when good health resets them.
    connection_backoff: tuple[float, float]
    connection_reset_after: float
    #: Backoff of an agent's supervisor restarted by ``node/agents``.
    agent_backoff: tuple[float, float]
    #: ``node/rooms`` parks a room restarted more than this many times in ``room_period``.
    room_restarts: int
    room_period: float
    room_cool_down: float
    #: The /sync loop's retry delays while the homeserver is away (first, cap).
    sync_backoff: tuple[float, float]

    def toml(self) -> str:
        """The policy as a supervision.toml (what a bot process is given)."""
        return f"""\
# Written by lambda_actors.loopback.profiles: the "{self.name}" supervision profile.
# The shape of the shipped supervision.toml (lambda_actors/bot/supervision.toml); only the numbers differ.
[defaults]
restart = "permanent"
shutdown = 5.0
mailbox_capacity = 1000
overflow = "block"
call_timeout = 10.0
strategy = "one_for_one"
intensity = 5
period = 30.0
on_exhausted = "escalate"
cool_down = 60.0

[defaults.backoff]
min = 0.1
max = 30.0
multiplier = 2.0
jitter = 0.2
reset_after = 60.0

[node]
strategy = "one_for_one"
intensity = 10
period = 60.0

[node.outbox]
shutdown = 10.0
mailbox_capacity = 10000

[node.agents]
strategy = "one_for_one"
on_exhausted = "park"
intensity = {self.agent_escalations}
period = {self.agents_period!r}
cool_down = {self.agent_cool_down!r}

[node.agents."*"]
strategy = "one_for_one"
on_exhausted = "escalate"
intensity = {self.connection_restarts}
period = {self.connection_period!r}

[node.agents."*".backoff]
min = {self.agent_backoff[0]!r}
max = {self.agent_backoff[1]!r}

[node.agents."*"."*"]
restart = "transient"
shutdown = 2.0
call_timeout = 30.0

[node.agents."*"."*".backoff]
min = {self.connection_backoff[0]!r}
max = {self.connection_backoff[1]!r}
multiplier = 2.0
jitter = 0.3
reset_after = {self.connection_reset_after!r}

[node.rooms]
strategy = "one_for_one"
on_exhausted = "park"
intensity = {self.room_restarts}
period = {self.room_period!r}
cool_down = {self.room_cool_down!r}

[node.rooms."*"]
restart = "transient"
shutdown = 5.0
mailbox_capacity = 500

[node.sync]
shutdown = 0

[node.sync.backoff]
min = {self.sync_backoff[0]!r}
max = {self.sync_backoff[1]!r}
"""

    def config(self) -> SupervisionConfig:
        """The policy loaded as the bot loads an operator's file."""
        return parse_supervision_config(self.toml(), f"the {self.name} supervision profile")

    def write(self, path: Path) -> Path:
        """Write the policy as a supervision.toml at ``path`` (for ``lambda-actors run``)."""
        path = Path(path)
        path.write_text(self.toml(), encoding="utf-8")
        return path


#: The demo's and the tests' policy. Production's shape with loopback's
#: numbers: an agent is parked at its supervisor's first escalation, which
#: comes at the second connection crash within a minute (a test of parking
#: needs two crashes, not six); a crashed connection is back within a fifth
#: of a second, so a recovery step does not wait; a parked agent or room is
#: tried again after 30 s / 10 s; sync retries within 5 s of the homeserver
#: coming back.
LOOPBACK = SupervisionProfile(
    name="loopback",
    agent_escalations=0,
    agents_period=60.0,
    agent_cool_down=30.0,
    connection_restarts=1,
    connection_period=60.0,
    connection_backoff=(0.05, 0.2),
    connection_reset_after=30.0,
    agent_backoff=(0.1, 1.0),
    room_restarts=3,
    room_period=30.0,
    room_cool_down=10.0,
    sync_backoff=(0.5, 5.0),
)

#: The chaos run's policy: :data:`LOOPBACK` with the agent limits scaled to
#: the run's kill rate. Intensity is still low enough that a burst (an agent
#: restart while its connections are being killed) makes an agent's
#: supervisor escalate now and then; ``node/agents`` then restarts that
#: agent, and parks it if that happens 4 times a minute. Rooms get
#: production's 30 s cool-down, so a poisoned room really sits parked while
#: it is flooded. Sync backs off to 10 s at most, so an outage of the
#: homeserver costs at most that much after it is back.
CHAOS = replace(
    LOOPBACK,
    name="chaos",
    agent_escalations=3,
    agent_cool_down=15.0,
    connection_restarts=12,
    connection_period=30.0,
    connection_backoff=(0.2, 5.0),
    agent_backoff=(1.0, 10.0),
    room_cool_down=30.0,
    sync_backoff=(1.0, 10.0),
)
