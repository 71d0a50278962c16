"""Which agent is this id or DID: the one place that answers it.

Agents come from two places. ``agents.yaml`` (:class:`~.config.AgentsConfig`,
frozen: what the operator wrote stays as written) and the node's
registration API (SPEC 7.2): an agent its owner approved in Matrix, named by
a DID ``did:lambda:agent:<uuid>``, kept in the database and started while
the node runs. Everything that asks "which agent" (the room rules, the
connections, the approvals' prompts, the tree's ``node/agents`` at start)
asks an :class:`AgentDirectory`, so a registered agent is served exactly
like a configured one.

It offers :class:`AgentsConfig`'s reading interface (``agents``,
``agent()``, ``agent_for()``, ``user_agents``, ``default_agent``,
``limits``) plus what only registration adds: who owns a registered agent,
and which were deregistered (their rooms answer "agent removed" and are
never moved to another agent).

Shared by design, like the store: it changes only in the registry actor
(``node/registry``, on the Trio thread), and readers see a change at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import AgentConfig, AgentsConfig
from .limits import Limits

__all__ = ["AgentDirectory", "RegisteredAgent"]


@dataclass(frozen=True)
class RegisteredAgent:
    """An agent registered through the API and approved by its owner."""

    agent: AgentConfig  #: ``agent.id`` is its DID
    owner: str
    registration_id: str


class AgentDirectory:
    def __init__(
        self, config: AgentsConfig, registered: Iterable[RegisteredAgent] = (), deregistered: Iterable[str] = ()
    ) -> None:
        self.config = config
        self._registered: dict[str, RegisteredAgent] = {r.agent.id: r for r in registered}
        self._deregistered: set[str] = set(deregistered)

    @classmethod
    def of(cls, agents: AgentsConfig | AgentDirectory) -> AgentDirectory:
        """``agents`` as a directory (embedders and tests may hand the bare configuration)."""
        return agents if isinstance(agents, AgentDirectory) else cls(agents)

    # -- AgentsConfig's interface ------------------------------------------------------

    @property
    def agents(self) -> tuple[AgentConfig, ...]:
        """Every agent served now: agents.yaml's, then the registered ones."""
        return (*self.config.agents, *(r.agent for r in self._registered.values()))

    @property
    def user_agents(self) -> Mapping[str, str]:
        return self.config.user_agents

    @property
    def default_agent(self) -> str | None:
        return self.config.default_agent

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def source(self) -> str:
        return self.config.source

    def agent(self, agent_id: str) -> AgentConfig:
        """The agent with this id or DID; ``KeyError`` if none is served."""
        registered = self._registered.get(agent_id)
        return registered.agent if registered is not None else self.config.agent(agent_id)

    def agent_for(self, user_id: str) -> AgentConfig | None:
        """The agent agents.yaml gives this user (registration gives nobody a default)."""
        return self.config.agent_for(user_id)

    # -- what registration adds -----------------------------------------------------------

    def configured(self, agent_id: str) -> bool:
        return any(agent.id == agent_id for agent in self.config.agents)

    def registered(self) -> list[RegisteredAgent]:
        return list(self._registered.values())

    def registration(self, agent_id: str) -> RegisteredAgent | None:
        return self._registered.get(agent_id)

    def is_deregistered(self, agent_id: str) -> bool:
        """A registered agent whose registration was withdrawn (DELETE): its
        rooms say so and never move to another agent."""
        return agent_id in self._deregistered

    def may_serve(self, user_id: str, agent_id: str) -> bool:
        """Whether ``user_id`` may have a room with ``agent_id``: agents.yaml maps
        them to it, or it is a registered agent they own. The bot makes rooms
        only on this (a room is a way to talk to the agent)."""
        registered = self._registered.get(agent_id)
        if registered is not None:
            return registered.owner == user_id
        agent = self.agent_for(user_id)
        return agent is not None and agent.id == agent_id

    def add(self, registered: RegisteredAgent) -> None:
        self._registered[registered.agent.id] = registered
        self._deregistered.discard(registered.agent.id)

    def remove(self, agent_id: str) -> None:
        if self._registered.pop(agent_id, None) is not None:
            self._deregistered.add(agent_id)
