"""``lambda-actors chaos``: the measured reliability run (docs/chaos.md).

Operators are promised that the bot loses nothing, answers nothing twice,
and that one failing agent does not slow the others down. This run makes
that a number anyone can reproduce. On loopback it starts a throwaway
Synapse, several fake agents and the bot as a real ``lambda-actors run``
child process with a control socket, and drives scripted users who talk to
their agents in two rooms each (their direct chat and "Chat 1").

It has two phases over the same users at the same pace:

1. **Calm**: nothing is broken. This gives the reference latency.
2. **Chaos**: on a schedule drawn from ``random.Random(seed)`` the run kills
   agent connection actors *through the runtime* (the control socket's
   ``kill``), kills whole fake agents and starts them again on the same
   port, makes agents misbehave once (no STATUS, garbage, a drop or crash
   mid-answer, a stall, an answer slower than usual, ...), puts misbehaviour
   tokens in some messages, and SIGKILLs the bot process (preferably while
   an answer is half posted, the hardest moment for at-least-once handling)
   and starts it again. Agents ``agent-0`` .. ``agent-{U-1}``
   (``--untouched-agents``) are kept out of all of it but the bot's own
   restarts: their users' rooms are the "untouched rooms".

   The chaos phase also has the faults an operator meets on an ordinary
   day: **homeserver outages** (the run's own Synapse stopped 2-3 times for
   10-25 s and started again on the same port, from the same directory),
   **an agent removed between two bot runs** (the bot is stopped cleanly,
   agents.yaml loses the last touched agent and its users now map to
   another agent, the bot starts again), **a poisoned room flooded while it
   fails** (messages containing ``[[poison]]`` crash their room every time,
   through the bot's fault hook ``LAMBDA_ACTORS_FAULTS=poison``; then a
   flood of messages goes to the same room while it is restarting or
   parked), and **an agent that floods frames** (the fake agent's ``flood``
   misbehaviour: after its END it sends frames without pause until the
   socket is closed). Every fault lands on touched agents and their users'
   rooms only.

Then the run waits until every message has a finished answer (or
``--settle`` seconds pass), stops the bot with SIGTERM and counts, from what
the users' clients saw and what the fake agents received: answered, error
notices, wrong answers, **lost** (no finished answer), **duplicated** (two
answers seen for one message, or one message delivered twice to an agent by
the same bot process), latency of the untouched rooms against the calm
phase (bot and homeserver outage windows left out and reported apart), and
the supervisors' restarts, parks and escalations. Counts come from data,
not prose: the kind of each error from the notice's ``org.lambda.error``
content key, supervision from the bot's JSON log (``--log-json``), per
fault class. docs/chaos.md defines each figure.

Users send at a steady pace (message ``k`` is due at a random moment of the
``k``-th slice of the phase) into one of their rooms at random; if that
room's previous message is still unanswered, they wait for the answer first
with probability ``--patience`` and otherwise send anyway, so the bot also
queues messages per room.

Which bot process delivered a message to an agent is known exactly: at each
bot kill the run notes, before the SIGKILL, how many sockets every chat of
every fake agent has accepted; a later socket was opened by a later process.
That is also why the fake agents run in this process, restarted by
cancelling and re-serving the same :class:`~lambda_actors.agent.fake.FakeAgent`
on its port: a ``fake-agent`` child process would lose its record of
received frames with every SIGKILL. To the bot the difference does not show:
its sockets are cut without a close frame, and new ones are refused until
the agent is back.

:func:`run_chaos` is the whole run without the command line (the
end-to-end test runs a small one on the test session's Synapse).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from ..agent.fake import MODES, FakeAgent
from ..agent.protocol import UserMessage
from ..bot.actors.control import control_request
from ..bot.actors.services import (
    DONE_KEY,
    ERROR_KEY,
    ERROR_SET_ASIDE,
    FAULT_POISON,
    POISON_MARK,
    SOURCE_KEY,
    txn_id,
)
from ..bot.logs import SecretMask, configure_logging
from ..runtime.groups import leaves
from .homeserver import Homeserver, stop_synapse
from .profiles import CHAOS
from .stack import (
    LoopbackStack,
    agents_yaml,
    open_loopback_stack,
    restart_homeserver,
    stable_ports,
    start_stable_synapse,
    stop_homeserver,
)
from .probe import HomeserverProbe, recovered_at
from .user import ScriptedUser

__all__ = ["ChaosOptions", "ChaosReport", "add_arguments", "run", "run_chaos"]

#: An outage (the bot's or the homeserver's) lasts, for the latency figures,
#: until the backlog it left is answered: the last message sent while it was
#: down. Messages sent before then wait behind that backlog whatever their
#: room, so they are counted "during the outage" and reported apart. Samples
#: sent this soon after that end are counted in it too.
OUTAGE_MARGIN = 1.0
#: The account of the bare homeserver probe (loopback/probe.py): no bot in its room.
PROBE_USER = "probe"
#: A patient user waits at most this long for the previous answer in a room.
PATIENCE_LIMIT = 90.0
#: How long a restarted bot may take to answer on its control socket.
BOT_READY_TIMEOUT = 120.0
#: How long a bot kill waits for an answer to be mid-stream (then it kills anyway).
BOT_KILL_AIM = 6.0
#: How long the bot may take to stop cleanly on SIGTERM at the end.
BOT_STOP_TIMEOUT = 60.0
#: How often the run checks whether the bot process died by itself.
WATCHDOG_INTERVAL = 0.5
#: Modes for ``FakeAgent.misbehave(mode, times=1)``. ``slow`` and ``stall``
#: are no faults: an answer that takes longer this once, as a real agent's
#: do. An answer is posted and then edited when it takes over a second, and
#: when the bot is killed in between, the agent gets the message again and
#: answers at its usual speed: the at-least-once path at its hardest.
MISBEHAVIOURS = ("no-status", "drop", "garbage", "crash", "stall", "slow", "slow", "double-end", "after-end", "unknown")
#: Misbehaviour tokens put in a fraction of the touched users' messages.
TOKENS = ("drop", "garbage", "crash", "double-end", "after-end", "unknown")
#: Fake-agent settings: a slow answer streams for 2.5 s (well past the bot's
#: one-second first-post delay, so it is posted and then edited); a stall
#: lasts 8 s (shorter than the bot's 60 s idle timeout: a late answer, not
#: an error).
AGENT_OPTIONS: dict[str, Any] = {"chunks": 6, "slow_interval": 0.5, "stall_seconds": 8.0}
#: The fake agents' misbehaviour that floods frames after END (when they have it),
#: and the text of each frame it floods.
FRAME_FLOOD = "flood"
FLOOD_TEXT = "(flood)"
#: A park of an agent counts as caused by Matrix when no fault was injected
#: into that agent this many seconds before it (the chaos profile's windows:
#: connection restarts over ``connection_period`` make its supervisor
#: escalate, escalations over ``agents_period`` park it), or when one of its
#: connections crashed on a Matrix failure in that time.
PARK_CAUSE_WINDOW = CHAOS.agents_period + CHAOS.connection_period
#: Exception names in a crash reason that mean "the homeserver did not do it".
MATRIX_FAILURES = ("HomeserverUnavailable", "MatrixError", "MatrixFailure", "RateLimited", "InvalidToken", "MediaTooLarge")
LOG_NAME = "bot.log"
_TAG = re.compile(r"\bm-u\d+-[kcpf]\d+\b")
_WORDS = (
    "supervisor actor mailbox restart backoff park escalate trio nursery channel agent room "
    "matrix sync outbox token answer stream edit chunk status socket chat context file"
).split()
#: The runtime's supervision log events, and what each one counts. A crash
#: is logged once, by what its supervisor did about it: restarted at once
#: ("actor crashed"), after a delay ("backing off"), parked, or escalated.
_CRASH_EVENTS = ("actor crashed", "backing off", "actor parked", "supervisor escalating")
_RESTART_EVENTS = ("actor crashed", "backing off", "actor exited")
_COUNTED = ("crashes", "restarts", "parks", "unparks", "escalations", "dropped_messages")
_SIMPLE_EVENTS = {
    "actor parked": "parks",
    "actor unparked": "unparks",
    "supervisor escalating": "escalations",
    "message dropped": "dropped_messages",
}


class ChaosError(Exception):
    """The run could not be carried out (as opposed to finding problems in the bot)."""


@dataclass(frozen=True)
class ChaosOptions:
    """Size, schedule and seed of a run (the defaults are the documented run)."""

    users: int = 12
    agents: int = 4
    untouched_agents: int = 2
    calm_messages: int = 20  #: per user, in the calm phase
    messages: int = 75  #: per user, in the chaos phase
    duration: float = 330.0  #: seconds of the chaos phase
    #: Seconds of the calm phase; None: the chaos phase's pace (same load on the bot).
    calm_duration: float | None = None
    agent_kills: int = 150  #: connection-actor kills to attempt
    bot_kills: int = 12
    agent_restarts: int = 9  #: whole fake agents killed and started again
    misbehaviours: int = 60  #: one-off misbehaviours ordered from the fake agents
    token_fraction: float = 0.08  #: touched users' chaos messages carrying a token
    #: Touched users' chaos messages answered slowly (streamed over 2.5 s, as
    #: a language model's answer is): a bot kill then often cuts one short.
    slow_fraction: float = 0.2
    patience: float = 0.7
    #: Times the run's own Synapse is stopped and started again mid-run
    #: (needs a Synapse of the run's own: not with ``homeserver=``).
    homeserver_outages: int = 3
    outage_min: float = 10.0  #: seconds of one homeserver outage, at least ...
    outage_max: float = 25.0  #: ... and at most (drawn from the seed)
    retire: bool = True  #: remove the last touched agent between two bot runs
    poisoned: int = 3  #: messages that crash their room every time, all in one room
    flood: int = 200  #: messages flooded into that room while it fails
    frame_floods: int = 4  #: answers after which an agent floods frames
    settle: float = 150.0  #: the most the run waits for the last answers
    seed: int = 1
    #: A supervision.toml instead of the chaos profile (``profiles.CHAOS``).
    supervision: Path | None = None

    def problems(self) -> list[str]:
        found = []
        if self.agents < 2:
            found.append("--agents must be at least 2 (untouched agents and agents under chaos)")
        if not 1 <= self.untouched_agents < self.agents:
            found.append("--untouched-agents must be at least 1 and less than --agents")
        if self.users < self.agents:
            found.append("--users must be at least --agents, so that every agent has a user")
        for name in ("calm_messages", "messages", "agent_kills", "bot_kills", "agent_restarts", "misbehaviours"):
            if getattr(self, name) < 0:
                found.append(f"--{name.replace('_', '-')} must not be negative")
        if self.calm_messages < 1 or self.messages < 1:
            found.append("--calm-messages and --messages must be at least 1")
        if self.duration <= 0 or self.settle <= 0 or (self.calm_duration is not None and self.calm_duration <= 0):
            found.append("--duration, --calm-duration and --settle must be positive")
        if not all(0 <= f <= 1 for f in (self.token_fraction, self.slow_fraction, self.patience)):
            found.append("--token-fraction, --slow-fraction and --patience are fractions between 0 and 1")
        for name in ("homeserver_outages", "poisoned", "flood", "frame_floods"):
            if getattr(self, name) < 0:
                found.append(f"--{name.replace('_', '-')} must not be negative")
        if not 0 < self.outage_min <= self.outage_max:
            found.append("--outage-min must be positive and at most --outage-max")
        if self.homeserver_outages and self.outage_max * self.homeserver_outages > self.duration * 0.6:
            found.append("the homeserver outages would take most of the chaos phase: "
                         "give a longer --duration, fewer --homeserver-outages or a shorter --outage-max")
        return found


# -- what the users sent and saw ---------------------------------------------------


@dataclass
class Sent:
    """One user message: who sent it where, what the echo must be, and when."""

    tag: str
    event_id: str
    user: int
    agent: int
    room_id: str
    text: str
    expected: str
    phase: str  # "calm" | "chaos"
    untouched: bool  #: its room and its agent saw no fault (the user is an untouched agent's)
    sent_at: float
    kind: str = "normal"  # "normal" | "poison" (crashes its room) | "flood" (sent into the poisoned room)


@dataclass
class AnswerSeen:
    """What one user's client saw of the bot's answer to one message."""

    roots: dict[str, str] = field(default_factory=dict)  # event id -> latest body, in order seen
    done_roots: set[str] = field(default_factory=set)
    #: Root event id -> the error kind (``org.lambda.error``) its post or an edit carried.
    errors: dict[str, str] = field(default_factory=dict)
    #: Notices posted on the way to the answer (an error kind, not the end:
    #: "your agent was removed, continuing with ..."); not a second answer.
    side_roots: set[str] = field(default_factory=set)
    orphan_edits: int = 0
    done_at: float | None = None

    @property
    def answer_roots(self) -> list[str]:
        return [root for root in self.roots if root not in self.side_roots]


class Watcher:
    """Follows one user's sync stream and keeps the bot's answers per message.

    It is called back by :meth:`ScriptedUser.wait_until` after every sync
    batch and reads only what arrived since, so a long run stays linear.
    """

    def __init__(self, user: ScriptedUser, bot_id: str) -> None:
        self.user = user
        self.bot_id = bot_id
        self.by_source: dict[str, AnswerSeen] = {}
        self._index = 0
        self._done_events: dict[str, trio.Event] = {}

    async def follow(self) -> None:
        await self.user.wait_until(self._scan, timeout=math.inf)

    def _scan(self) -> bool:
        now = trio.current_time()
        seen = self.user.seen
        while self._index < len(seen):
            event = seen[self._index]
            self._index += 1
            content = event.content
            source = content.get(SOURCE_KEY)
            if event.sender != self.bot_id or event.type != "m.room.message" or not isinstance(source, str):
                continue
            answer = self.by_source.setdefault(source, AnswerSeen())
            done = bool(content.get(DONE_KEY))
            new_content = content.get("m.new_content") or {}
            kind = content.get(ERROR_KEY, new_content.get(ERROR_KEY) if isinstance(new_content, dict) else None)
            relates = content.get("m.relates_to") or {}
            if relates.get("rel_type") == "m.replace":
                target = relates.get("event_id")
                if target in answer.roots:
                    answer.roots[target] = str(new_content.get("body", ""))
                    if done:
                        answer.done_roots.add(target)
                        answer.side_roots.discard(target)
                    if isinstance(kind, str):
                        answer.errors[target] = kind
                else:
                    answer.orphan_edits += 1
            else:
                answer.roots[event.event_id] = str(content.get("body", ""))
                if done:
                    answer.done_roots.add(event.event_id)
                if isinstance(kind, str):
                    answer.errors[event.event_id] = kind
                    if not done:
                        answer.side_roots.add(event.event_id)
            if done and answer.done_at is None:
                answer.done_at = now
                if source in self._done_events:
                    self._done_events.pop(source).set()
        return False

    def done(self, event_id: str) -> bool:
        answer = self.by_source.get(event_id)
        return answer is not None and answer.done_at is not None

    async def wait_done(self, event_id: str) -> None:
        if not self.done(event_id):
            await self._done_events.setdefault(event_id, trio.Event()).wait()


@dataclass
class ChaosUser:
    index: int
    name: str
    agent: int
    untouched: bool
    scripted: ScriptedUser
    watcher: Watcher
    rooms: list[str]
    last: dict[str, Sent] = field(default_factory=dict)


# -- fake agents that can die -------------------------------------------------------


class RestartableAgent:
    """A fake agent that can be killed like a process and started again on its port."""

    def __init__(self, fake: FakeAgent) -> None:
        self.fake = fake
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None

    @property
    def up(self) -> bool:
        return self._scope is not None

    async def start(self, nursery: trio.Nursery) -> None:
        # Its port can be taken for a moment by another process's
        # connection (the run's ports are outside the ephemeral range, but
        # this machine is shared): try again rather than fail the run.
        for attempt in range(50):
            try:
                await nursery.start(self._serve)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == 49:
                    raise
                await trio.sleep(0.2)

    async def _serve(self, task_status: trio.TaskStatus[FakeAgent]) -> None:
        self._stopped = stopped = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                await self.fake.serve(task_status=task_status)
        finally:
            self._scope = None
            stopped.set()

    async def crash(self) -> None:
        """Cut every socket without a close frame and stop listening, as a dying container would."""
        scope, stopped = self._scope, self._stopped
        if scope is None or stopped is None:
            return
        # Sockets first: a session cancelled before its socket is cut would
        # still send a polite close frame on its way out.
        await self.fake.kill(abrupt=True)
        scope.cancel()
        await stopped.wait()


# -- the report ---------------------------------------------------------------------


@dataclass
class ChaosReport:
    """Everything the run measured; :meth:`as_json` is the ``--json`` object."""

    seed: int = 0
    users: int = 0
    agents: int = 0
    untouched_agents: int = 0
    sent: int = 0
    sent_calm: int = 0
    sent_chaos: int = 0
    answered: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicated_seen_by_user: int = 0
    duplicated_at_agent: int = 0
    redelivered_after_bot_restart: int = 0
    untouched_errors: int = 0
    agent_kills: int = 0
    agent_kill_misses: int = 0
    agent_restarts: int = 0
    misbehaviours: int = 0
    tokens: int = 0
    bot_kills: int = 0
    bot_kills_mid_answer: int = 0  #: bot kills that cut at least one visible answer short
    answers_cut_by_bot_kills: int = 0
    bot_exits: int = 0  #: the bot process died without being killed
    bot_restart_max_s: float = 0.0
    calm_p50_ms: float | None = None
    calm_p99_ms: float | None = None
    untouched_p50_ms: float | None = None
    untouched_p99_ms: float | None = None
    untouched_p99_ratio: float | None = None
    calm_samples: int = 0
    untouched_samples: int = 0
    untouched_excluded: int = 0
    untouched_p99_all_ms: float | None = None
    touched_p50_ms: float | None = None
    touched_p99_ms: float | None = None
    supervision: dict[str, int] = field(default_factory=dict)
    #: Homeserver outages done, how long each was down (stop to answering
    #: again) and how long after that the first message sent was answered.
    homeserver_outages: int = 0
    homeserver_down_s: list[float] = field(default_factory=list)
    homeserver_recovered_s: list[float | None] = field(default_factory=list)
    untouched_excluded_homeserver: int = 0  #: untouched samples left out for homeserver outages
    untouched_p99_homeserver_ms: float | None = None  #: p99 of those samples, reported apart
    #: The bare homeserver probe (loopback/probe.py): its relay p99 in the
    #: calm phase and in the chaos phase, and per outage how long after the
    #: homeserver answered again it relayed as fast as when calm (None: never).
    probe_calm_p99_ms: float | None = None
    probe_chaos_p99_ms: float | None = None
    homeserver_slow_after_s: list[float | None] = field(default_factory=list)
    #: Messages that crash their room every time, and how many ended with the set-aside notice.
    poisoned: int = 0
    poisoned_answered: int = 0
    flood: int = 0  #: messages flooded into the poisoned room
    flood_answered: int = 0
    poisoned_room_parks: int = 0
    agent_removed: str | None = None  #: "agent-3 -> agent-2"
    agent_removed_messages: int = 0  #: messages in its rooms sent after the bot came back
    agent_removed_answered: int = 0
    frame_floods: int = 0  #: answers after which an agent was asked to flood frames
    agent_parks: int = 0  #: parks of a whole agent (``node/agents/<id>``)
    agents_parked_by_matrix: int = 0  #: of those, with no agent fault injected before it, or a Matrix crash
    connection_crashes_by_matrix: int = 0  #: connection-actor crashes whose reason is a Matrix failure
    errors_without_kind: int = 0  #: error notices without an ``org.lambda.error`` kind (recognised by their text)
    #: Per fault class: what was done, and what the users saw (outcomes by kind).
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    store_unhandled: int | None = None
    store_unsent: int | None = None
    bot_exit_status: int | None = None  #: after the SIGTERM at the end; None if it had to be killed
    bot_stop_s: float | None = None
    duration_s: float = 0.0
    lost_tags: list[str] = field(default_factory=list)
    duplicated_tags: list[str] = field(default_factory=list)
    wrong_tags: list[str] = field(default_factory=list)
    #: Answers showing text that is not from their message (another message's
    #: tag, or frames an agent flooded after its END), whatever they ended with.
    foreign_text: int = 0
    foreign_tags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, answered wrongly or with foreign text; every poisoned message set aside;
        no agent parked by Matrix."""
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.wrong == 0
            and self.poisoned_answered == self.poisoned
            and self.agents_parked_by_matrix == 0
            and self.foreign_text == 0
        )

    @property
    def latency_ok(self) -> bool | None:
        return None if self.untouched_p99_ratio is None else self.untouched_p99_ratio <= 1.5

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["goals"] = {
            "no_loss": self.lost == 0,
            "no_duplicates": self.duplicated == 0,
            "poison_set_aside": self.poisoned_answered == self.poisoned,
            "no_agent_parked_by_matrix": self.agents_parked_by_matrix == 0,
            "no_foreign_text": self.foreign_text == 0,
            "latency": self.latency_ok,
        }
        return data

    def lines(self) -> list[str]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} ms"

        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.error_kinds.items())) or "none"
        sup = ", ".join(f"{k} {v}" for k, v in self.supervision.items())
        ratio = "-" if self.untouched_p99_ratio is None else f"{self.untouched_p99_ratio:.2f}×"
        return [
            f"messages sent       {self.sent} ({self.sent_calm} calm, {self.sent_chaos} under chaos)",
            f"answered            {self.answered}",
            f"errors shown        {self.errors} ({kinds})",
            f"wrong answers       {self.wrong}; answers with text not from their message {self.foreign_text}"
            + (f"  {' '.join(self.foreign_tags[:10])}" if self.foreign_tags else ""),
            f"LOST                {self.lost}" + (f"  {' '.join(self.lost_tags[:10])}" if self.lost_tags else ""),
            f"DUPLICATED          {self.duplicated} (seen by users {self.duplicated_seen_by_user}, "
            f"at agents {self.duplicated_at_agent})" + (f"  {' '.join(self.duplicated_tags[:10])}" if self.duplicated_tags else ""),
            f"redelivered after a bot restart (not duplicates) {self.redelivered_after_bot_restart}",
            f"chaos               {self.agent_kills} connection-actor kills ({self.agent_kill_misses} found none running), "
            f"{self.agent_restarts} agent restarts, {self.misbehaviours} misbehaviours, {self.tokens} tokens, "
            f"{self.bot_kills} bot SIGKILLs ({self.bot_kills_mid_answer} in the middle of an answer, "
            f"{self.answers_cut_by_bot_kills} answers cut; slowest back in {self.bot_restart_max_s:.1f} s), "
            f"{self.bot_exits} unplanned bot exits",
            f"latency calm        p50 {ms(self.calm_p50_ms)}, p99 {ms(self.calm_p99_ms)} ({self.calm_samples} samples)",
            f"latency untouched   p50 {ms(self.untouched_p50_ms)}, p99 {ms(self.untouched_p99_ms)} "
            f"({ratio} calm; {self.untouched_samples} samples, {self.untouched_excluded} left out for bot outages; "
            f"p99 with them {ms(self.untouched_p99_all_ms)}); errors in untouched rooms {self.untouched_errors}",
            f"latency touched     p50 {ms(self.touched_p50_ms)}, p99 {ms(self.touched_p99_ms)}",
            f"homeserver outages  {self.homeserver_outages} (down {', '.join(f'{d:.0f} s' for d in self.homeserver_down_s) or '-'}; "
            f"first answer after each {', '.join('-' if r is None else f'{r:.1f} s' for r in self.homeserver_recovered_s) or '-'}); "
            f"untouched p99 over them {ms(self.untouched_p99_homeserver_ms)} ({self.untouched_excluded_homeserver} samples)",
            f"homeserver probe    relay p99 calm {ms(self.probe_calm_p99_ms)}, chaos {ms(self.probe_chaos_p99_ms)}; "
            f"slow after each outage for {', '.join('-' if r is None else f'{r:.1f} s' for r in self.homeserver_slow_after_s) or '-'}",
            f"poisoned room       {self.poisoned_answered} of {self.poisoned} poisoned messages set aside; "
            f"{self.flood_answered} of {self.flood} flooded messages answered; room parked {self.poisoned_room_parks} times",
            f"agent removed       {self.agent_removed or '-'}: {self.agent_removed_answered} of "
            f"{self.agent_removed_messages} messages in its rooms answered after the restart",
            f"frame floods        {self.frame_floods}",
            f"agent parks         {self.agent_parks} ({self.agents_parked_by_matrix} caused by Matrix; "
            f"{self.connection_crashes_by_matrix} connection crashes on a Matrix failure)",
            f"supervisors         {sup}",
            f"bot store at end    {self.store_unhandled} unhandled events, {self.store_unsent} unsent sends; "
            f"clean stop: exit status {self.bot_exit_status} after {self.bot_stop_s} s",
            f"took                {self.duration_s:.0f} s",
        ]


def answered_twice(seen: AnswerSeen, tag: str) -> bool:
    """Whether the user saw two answers to message ``tag``.

    A long answer is posted in parts, and a notice may come first (an agent
    removed): only a second message that starts the answer again, or a
    second one marked done, is a second answer.
    """
    starts = [root for root in seen.answer_roots if seen.roots[root].startswith(f"echo: {tag}")]
    return len(starts) > 1 or len(seen.done_roots) > 1


def shows_foreign_text(seen: AnswerSeen, tag: str) -> bool:
    """Whether the answer to ``tag`` shows text from no answer of it: another
    message's tag, or frames an agent flooded after its END."""
    return any(FLOOD_TEXT in body or any(t != tag for t in _TAG.findall(body)) for body in seen.roots.values())


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` 0.99 for p99); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def expected_echo(text: str) -> str:
    """What the fake agent answers to ``text``: ``echo:`` and the text without its tokens."""
    return "echo: " + re.sub(r"[ \t]*\[\[[a-z][a-z-]*(?::[^\[\]\s]*)?\]\]", "", text).strip()


def error_kind(body: str) -> str | None:
    """Which error notice a finished answer ends with, or None if it is none, read from its text.

    Only for notices without an ``org.lambda.error`` kind (a bot older than
    the kinds); the run counts those apart (``errors_without_kind``).
    """
    if "⏹" in body:
        return "interrupted"
    if "⚠" not in body:
        return None
    if "is unavailable right now" in body:
        return "agent_parked"
    if "became unavailable before answering" in body:
        return "agent_stopped"
    if "could not answer" in body:
        return "agent_failed"
    if "reported an error" in body:
        return "agent_error"
    return "other"


# -- the bot's log -------------------------------------------------------------------


@dataclass
class BotLog:
    """What the bot's JSON log says about supervision, on the run's clock."""

    counts: dict[str, int]
    parks: list[tuple[float, str]] = field(default_factory=list)  # (time, actor path)
    matrix_crashes: list[tuple[float, str]] = field(default_factory=list)  # (time, agent id) of connection crashes


def read_bot_log(path: Path, wall_offset: float = 0.0) -> BotLog:
    """The supervision events of a bot's JSON log (``--log-json``; every run of the process).

    Timestamps (ISO, UTC) are put on the run's clock by subtracting
    ``wall_offset`` (wall clock minus run clock). Lines that are not JSON
    (a dying process's own output) are skipped.
    """
    log = BotLog(dict.fromkeys(_COUNTED, 0))
    if not path.exists():
        return log
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            event, reason = str(entry.get("event")), str(entry.get("reason", "normal"))
            crashed = event in _CRASH_EVENTS and reason != "normal"
            if event in _SIMPLE_EVENTS:
                log.counts[_SIMPLE_EVENTS[event]] += 1
            if event in _RESTART_EVENTS:
                log.counts["restarts"] += 1
            if not crashed and event not in _SIMPLE_EVENTS:
                continue
            log.counts["crashes"] += crashed
            actor = str(entry.get("actor", ""))
            if event == "supervisor escalating":
                actor = f"{actor}/{entry.get('child', '')}"
            at = _log_time(entry.get("timestamp")) - wall_offset
            if event == "actor parked":
                log.parks.append((at, actor))
            if crashed and actor.startswith("node/agents/") and actor.count("/") == 3:
                if any(failure in reason for failure in MATRIX_FAILURES):
                    log.matrix_crashes.append((at, actor.split("/")[2]))
    return log


def _log_time(stamp: Any) -> float:
    """A log timestamp (ISO, UTC) as seconds since the epoch; NaN if it is none."""
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return math.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def agent_parks(log: BotLog, injected: dict[str, list[float]], window: float = PARK_CAUSE_WINDOW) -> tuple[int, int]:
    """(parks of whole agents, of those caused by Matrix).

    A park of ``node/agents/<id>`` is Matrix's when no fault was injected
    into that agent (``injected[id]``: times) in the ``window`` seconds
    before it, or when one of its connections crashed on a Matrix failure in
    that time.
    """
    parks = by_matrix = 0
    for at, path in log.parks:
        parts = path.split("/")
        if len(parts) != 3 or parts[:2] != ["node", "agents"]:
            continue
        parks += 1
        ours = any(at - window <= t <= at for t in injected.get(parts[2], []))
        matrix = any(at - window <= t <= at for t, agent in log.matrix_crashes if agent == parts[2])
        by_matrix += matrix or not ours
    return parks, by_matrix


# -- the run ------------------------------------------------------------------------


class ChaosRun:
    def __init__(self, stack: LoopbackStack, agents: list[RestartableAgent], options: ChaosOptions, workdir: Path,
                 write: Callable[[str], Any], *, own_homeserver: bool = False) -> None:
        self.stack = stack
        #: Only a Synapse of the run's own is ever stopped (never a test session's).
        self.own_homeserver = own_homeserver
        self.agents = agents
        self.options = options
        self.workdir = workdir
        self.write = write
        self.users: list[ChaosUser] = []
        self.sent: list[Sent] = []
        self.report = ChaosReport(seed=options.seed, users=options.users, agents=options.agents,
                                  untouched_agents=options.untouched_agents)
        self.supervision_path = workdir / "supervision.toml"
        self.log_path = workdir / LOG_NAME
        self.control_socket = _socket_path(workdir)
        #: At each bot kill: every fake agent's count of accepted sockets per chat.
        self.kill_snapshots: list[dict[int, dict[str, int]]] = []
        #: (SIGKILL time, time the new process answered) per bot restart.
        self.outages: list[tuple[float, float]] = []
        #: (stop time, time it answered again) per homeserver outage.
        self.homeserver_windows: list[tuple[float, float]] = []
        self._bot_lock = trio.Lock()
        #: Held by a homeserver outage and by whatever restarts the bot: a bot
        #: is never started while the homeserver is away (it could not log in,
        #: which is a configuration problem, not a fault of the run), and the
        #: homeserver is stopped only while the bot is up.
        self._homeserver_lock = trio.Lock()
        self._restarting: set[int] = set()
        self._planned_stop = False
        self.started = trio.current_time()
        #: Seconds to add to the run's clock to get the wall clock of the bot's log.
        self.wall_offset = time.time() - self.started
        #: When faults were injected into each agent (kills, restarts, misbehaviours, tokens).
        self.agent_faults: dict[int, list[float]] = {n: [] for n in range(options.agents)}
        touched = list(range(options.untouched_agents, options.agents))
        #: The agent removed between two bot runs, and the one its users move to.
        self.retire_plan: tuple[int, int] | None = None
        if options.retire:
            removed = touched[-1]
            others = [a for a in touched if a != removed]
            self.retire_plan = (removed, others[0] if others else 0)
        self.retired: int | None = None
        self.retired_at: float | None = None
        #: The user whose "Chat 1" is poisoned and flooded: one of a touched
        #: agent that stays (so the room's story is not also the retired agent's).
        keep = [a for a in touched if self.retire_plan is None or a != self.retire_plan[0]] or touched
        self.poison_agent = keep[0]
        self.poisoned_room: str | None = None
        self.faults_env = {FAULT_POISON} if options.poisoned else set()
        self.probe: HomeserverProbe | None = None
        #: When the chaos phase began (the calm phase's probe samples are those before).
        self.chaos_started: float | None = None

    # -- the bot process -------------------------------------------------------

    def _spawn_bot(self) -> None:
        self.stack.start_bot_process(
            self.supervision_path, self.log_path, control_socket=self.control_socket, log_json=True, faults=self.faults_env
        )

    def touched_agents(self) -> list[int]:
        """Agents under chaos, without the one removed from agents.yaml."""
        return [a for a in range(self.options.untouched_agents, self.options.agents) if a != self.retired]

    def injected(self, agent: int) -> None:
        self.agent_faults[agent].append(trio.current_time())

    async def _wait_bot_ready(self) -> None:
        deadline = trio.current_time() + BOT_READY_TIMEOUT
        while True:
            process = self.stack.process
            if process is None or process.poll() is not None:
                self.report.bot_exits += 1
                self.write(f"  ! the bot exited by itself while starting (status {process and process.returncode}); starting it again")
                self._note_restart()
                self._spawn_bot()
            else:
                try:
                    with trio.move_on_after(2):
                        await control_request(self.control_socket, "stats")
                        return
                except (OSError, ValueError, trio.BrokenResourceError):
                    pass  # not listening yet, or went away while answering
            if trio.current_time() > deadline:
                raise ChaosError(f"the bot did not come back within {BOT_READY_TIMEOUT:g} s; see {self.log_path}")
            await trio.sleep(0.2)

    def _note_restart(self) -> None:
        # Synchronous, and done before the old process is replaced: a socket
        # accepted after this snapshot was opened by a later bot process.
        self.kill_snapshots.append({n: dict(a.fake.connections) for n, a in enumerate(self.agents)})

    def answers_mid_stream(self) -> int:
        """Answers the users can see part of, not yet finished."""
        count = 0
        for s in self.sent:
            answer = self.users[s.user].watcher.by_source.get(s.event_id)
            count += answer is not None and answer.done_at is None and bool(answer.roots)
        return count

    async def kill_bot(self) -> None:
        # Killed in the middle of a streamed answer is the hard case for
        # at-least-once handling (part of it is posted, the agent will get the
        # message again): aim for such a moment, but only for a few seconds.
        with trio.move_on_after(BOT_KILL_AIM):
            while not self.answers_mid_stream():
                await trio.sleep(0.05)
        async with self._homeserver_lock, self._bot_lock:
            killed_at = trio.current_time()
            cut = self.answers_mid_stream()
            self.report.bot_kills_mid_answer += cut > 0
            self.report.answers_cut_by_bot_kills += cut
            self._note_restart()
            self.stack.kill_bot_process()
            self._spawn_bot()
            await self._wait_bot_ready()
            back = trio.current_time()
            self.outages.append((killed_at, back))
            self.report.bot_kills += 1
            self.report.bot_restart_max_s = round(max(self.report.bot_restart_max_s, back - killed_at), 2)

    async def stop_bot(self) -> None:
        """SIGTERM, as a service manager would; how long the clean stop takes is reported."""
        async with self._bot_lock:
            self._planned_stop = True
            process = self.stack.process
            if process is None:
                return
            asked = trio.current_time()
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(BOT_STOP_TIMEOUT):
                while process.poll() is None:
                    await trio.sleep(0.1)
            self.report.bot_stop_s = round(trio.current_time() - asked, 1)
            if process.poll() is None:
                self.write(f"  ! the bot did not stop within {BOT_STOP_TIMEOUT:g} s of SIGTERM; killing it")
                self.stack.kill_bot_process()
            else:
                self.report.bot_exit_status = process.returncode
            self.stack.process = None

    async def watchdog(self) -> None:
        """Start the bot again if it dies by itself (a bug worth reporting, not hiding)."""
        while True:
            await trio.sleep(WATCHDOG_INTERVAL)
            async with self._bot_lock:
                process = self.stack.process
                if self._planned_stop or process is None or process.poll() is None:
                    continue
                died_at = trio.current_time()
                self.report.bot_exits += 1
                self.write(f"  ! the bot exited by itself (status {process.returncode}); starting it again")
                self._note_restart()
                self.stack.process = None
                self._spawn_bot()
                await self._wait_bot_ready()
                self.outages.append((died_at, trio.current_time()))

    # -- users -----------------------------------------------------------------

    async def onboard(self, nursery: trio.Nursery) -> None:
        options = self.options

        async def one(index: int, name: str) -> None:
            scripted = await self.stack.scripted_user(name, sync_timeout_ms=10_000)
            watcher = Watcher(scripted, self.stack.bot_id)
            nursery.start_soon(watcher.follow)
            dm = await scripted.start_dm(self.stack.bot_id)
            await scripted.notice(dm, "Hello! I connect you to", timeout=120)
            chat1 = await scripted.accept_invite("Chat 1", timeout=120)
            await scripted.notice(chat1, 'This is "Chat 1"', timeout=120)
            agent = index % options.agents
            self.users.append(ChaosUser(index, name, agent, agent < options.untouched_agents, scripted, watcher, [dm, chat1]))

        async with trio.open_nursery() as onboarding:
            for index, name in enumerate(n for n in self.stack.users if n != PROBE_USER):
                onboarding.start_soon(one, index, name)
        self.users.sort(key=lambda u: u.index)

    async def send_phase(self, user: ChaosUser, phase: str, count: int, duration: float) -> None:
        """``count`` messages over ``duration`` seconds: message ``k`` at a random moment of slice ``k``."""
        rng = random.Random(f"{self.options.seed}:{phase}:{user.index}")
        start = trio.current_time()
        for k in range(count):
            due = start + (k + rng.random()) * duration / count
            room = rng.choice(user.rooms)
            patient = rng.random() < self.options.patience
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))
            token_draw, token, slow_draw = rng.random(), rng.choice(TOKENS), rng.random()
            tag = f"m-u{user.index:02d}-{phase[0] if phase == 'chaos' else 'k'}{k:03d}"
            text = f"{tag} {words}"
            if phase == "chaos" and not user.untouched and token_draw < self.options.token_fraction:
                text += f" [[{token}]]"
                self.report.tokens += 1
            elif phase == "chaos" and not user.untouched and slow_draw < self.options.slow_fraction:
                text += " [[slow]]"
            await trio.sleep_until(due)
            previous = user.last.get(room)
            if patient and previous is not None:
                with trio.move_on_after(PATIENCE_LIMIT):
                    await user.watcher.wait_done(previous.event_id)
            sent_at = trio.current_time()
            event_id = await user.scripted.say(room, text)
            if text.endswith("]]") and not text.endswith("[[slow]]"):
                self.injected(user.agent)
            sent = Sent(tag, event_id, user.index, user.agent, room, text, expected_echo(text), phase,
                        user.untouched and room != self.poisoned_room, sent_at)
            self.sent.append(sent)
            user.last[room] = sent

    async def run_phase(self, phase: str, count: int, duration: float) -> None:
        async with trio.open_nursery() as nursery:
            for user in self.users:
                nursery.start_soon(self.send_phase, user, phase, count, duration)

    def pending(self) -> list[Sent]:
        return [s for s in self.sent if not self.users[s.user].watcher.done(s.event_id)]

    async def wait_answers(self, timeout: float, label: str) -> None:
        deadline = trio.current_time() + timeout
        last_note = trio.current_time()
        while (left := self.pending()) and trio.current_time() < deadline:
            if trio.current_time() - last_note >= 15:
                last_note = trio.current_time()
                self.write(f"  {label}: {len(left)} message(s) still without a finished answer")
            await trio.sleep(0.5)

    # -- chaos -------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str, tuple]]:
        """Every chaos event of the phase, drawn from the seed, in time order.

        The draws of the original faults come first and in their old order,
        so a seed's kills and misbehaviours are those of earlier runs; the
        newer faults are drawn from a stream of their own.
        """
        options = self.options
        rng = random.Random(f"{options.seed}:chaos")
        touched = list(range(options.untouched_agents, options.agents))
        span = options.duration
        events: list[tuple[float, str, tuple]] = []
        more = random.Random(f"{options.seed}:chaos:seams")
        # The poisoned room early, so it is parked and flooded while
        # everything else goes on, and has the time to recover.
        if options.poisoned or options.flood:
            events.append((span * 0.1, "poison", ()))
        # Homeserver outages evenly spread, between 15% and 85% of the phase.
        for k in range(options.homeserver_outages if self.own_homeserver else 0):
            at = span * (0.15 + 0.7 * (k + 0.5) / options.homeserver_outages + more.uniform(-0.03, 0.03))
            events.append((at, "homeserver", (more.uniform(options.outage_min, options.outage_max),)))
        if self.retire_plan is not None:
            events.append((span * 0.6, "retire", ()))
        if options.frame_floods:
            for _ in range(options.frame_floods):
                events.append((span * more.uniform(0.05, 0.9), "frame-flood", (more.choice(touched),)))
        for k in range(options.bot_kills):
            # Evenly spread, so the bot is never killed again before it is back.
            slot = span * 0.9 / options.bot_kills
            events.append((span * 0.05 + slot * (k + 0.2 + 0.6 * rng.random()), "bot", ()))
        for _ in range(options.agent_kills):
            events.append((span * rng.random() * 0.95, "connection", (rng.choice(touched), rng.random())))
        for _ in range(options.agent_restarts):
            events.append((span * (0.05 + 0.85 * rng.random()), "agent", (rng.choice(touched), rng.uniform(0.5, 4.0))))
        for _ in range(options.misbehaviours):
            events.append((span * rng.random() * 0.95, "misbehave", (rng.choice(touched), rng.choice(MISBEHAVIOURS))))
        events.sort(key=lambda e: e[0])
        return events

    async def chaos(self, nursery: trio.Nursery) -> None:
        start = trio.current_time()
        for at, kind, args in self.schedule():
            await trio.sleep_until(start + at)
            if kind in ("connection", "agent", "misbehave", "frame-flood") and args[0] == self.retired:
                # Drawn for the agent that is no longer configured: another touched one takes it.
                args = (self.touched_agents()[int(at * 1000) % len(self.touched_agents())], *args[1:])
            if kind == "bot":
                # In a task of its own: a kill waits while the homeserver is away,
                # and the rest of the schedule goes on meanwhile.
                nursery.start_soon(self.kill_bot)
            elif kind == "connection":
                await self.kill_connection(*args)
            elif kind == "agent":
                agent, downtime = args
                if self.agents[agent].up and agent not in self._restarting:
                    # Claimed now, not when the task runs: two restarts of
                    # one agent at once would both try to listen on its port.
                    self._restarting.add(agent)
                    nursery.start_soon(self.restart_agent, agent, downtime)
            elif kind == "misbehave":
                agent, mode = args
                self.agents[agent].fake.misbehave(mode, times=1)
                self.injected(agent)
                self.report.misbehaviours += 1
            elif kind == "frame-flood":
                if FRAME_FLOOD in MODES:
                    self.agents[args[0]].fake.misbehave(FRAME_FLOOD, times=1)
                    self.injected(args[0])
                    self.report.frame_floods += 1
            elif kind == "homeserver":
                nursery.start_soon(self.homeserver_outage, *args)
            elif kind == "retire":
                nursery.start_soon(self.retire_agent)
            elif kind == "poison":
                nursery.start_soon(self.poison_room)

    async def restart_agent(self, agent: int, downtime: float) -> None:
        try:
            self.injected(agent)
            await self.agents[agent].crash()
            self.report.agent_restarts += 1
            await trio.sleep(downtime)
            await self.agents[agent].start(self.stack.nursery)
            self.injected(agent)
        finally:
            self._restarting.discard(agent)

    async def homeserver_outage(self, downtime: float) -> None:
        """Stop the run's Synapse, wait, start it again on the same port from the same directory."""
        async with self._homeserver_lock:
            stopped_at = trio.current_time()
            await trio.to_thread.run_sync(stop_homeserver, self.stack.homeserver)
            self.write(f"  t+{stopped_at - self.started:4.0f} s: homeserver stopped for about {downtime:.0f} s")
            # Starting takes a few seconds of its own: the outage lasts about
            # ``downtime`` in all, from the stop to answering again.
            await trio.sleep(max(0.0, downtime - 4.0 - (trio.current_time() - stopped_at)))
            self.stack.homeserver = await trio.to_thread.run_sync(restart_homeserver, self.stack.homeserver)
            back = trio.current_time()
            self.homeserver_windows.append((stopped_at, back))
            self.report.homeserver_outages += 1
            self.write(f"  t+{back - self.started:4.0f} s: homeserver back after {back - stopped_at:.1f} s")

    async def retire_agent(self) -> None:
        """Stop the bot cleanly, remove an agent from agents.yaml (its users now map to another), start it again."""
        assert self.retire_plan is not None
        removed, target = self.retire_plan
        async with self._homeserver_lock, self._bot_lock:
            stopped_at = trio.current_time()
            process = self.stack.process
            if process is not None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(BOT_STOP_TIMEOUT):
                    while process.poll() is None:
                        await trio.sleep(0.1)
                if process.poll() is None:
                    self.write(f"  ! the bot did not stop within {BOT_STOP_TIMEOUT:g} s of SIGTERM; killing it")
                    self.stack.kill_bot_process()
                self.stack.process = None
            self._note_restart()
            self.retired = removed
            self.injected(removed)
            for user in self.users:
                if user.agent == removed:
                    user.agent = target
            self.stack.config_path.write_text(agents_yaml(
                self.stack.agents,
                {self.stack.users[u.name].user_id: f"agent-{u.agent}" for u in self.users},
                removed=[removed],
            ))
            self._spawn_bot()
            await self._wait_bot_ready()
            back = trio.current_time()
            self.retired_at = back
            self.outages.append((stopped_at, back))
            self.report.agent_removed = f"agent-{removed} -> agent-{target}"
            self.write(f"  t+{back - self.started:4.0f} s: agent-{removed} removed from agents.yaml "
                       f"(its users now map to agent-{target}); the bot is back")

    async def poison_room(self) -> None:
        """Poisoned messages into one room (each crashes it, every time), then a flood into the same room."""
        options = self.options
        user = next(u for u in self.users if u.agent == self.poison_agent)
        room = user.rooms[1]
        self.poisoned_room = room
        rng = random.Random(f"{options.seed}:poison")
        self.write(f"  t+{trio.current_time() - self.started:4.0f} s: {options.poisoned} poisoned messages "
                   f"and a flood of {options.flood} into {user.name}'s \"Chat 1\"")

        async def send(tag: str, text: str, kind: str) -> None:
            sent_at = trio.current_time()
            event_id = await user.scripted.say(room, text)
            sent = Sent(tag, event_id, user.index, user.agent, room, text, expected_echo(text), "chaos", False,
                        sent_at, kind)
            self.sent.append(sent)
            user.last[room] = sent

        for k in range(options.poisoned):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))
            await send(f"m-u{user.index:02d}-p{k:03d}", f"m-u{user.index:02d}-p{k:03d} {words} {POISON_MARK}", "poison")
        for k in range(options.flood):
            await send(f"m-u{user.index:02d}-f{k:04d}", f"m-u{user.index:02d}-f{k:04d} flood", "flood")

    async def kill_connection(self, preferred: int, pick: float) -> None:
        """Kill one running connection actor of a touched agent, through the control socket."""
        touched = self.touched_agents()
        order = [preferred] + [a for a in touched if a != preferred]
        for _ in range(20):
            for agent in order:
                prefix = f"node/agents/agent-{agent}/"
                try:
                    async with self._bot_lock:
                        with trio.fail_after(5):
                            reply = await self._kill_one(prefix, pick)
                except (OSError, ValueError, trio.BrokenResourceError, trio.TooSlowError):
                    continue  # the bot is restarting, or too busy to answer: try again shortly
                if reply.get("killed"):
                    self.report.agent_kills += 1
                    self.injected(agent)
                    return
            await trio.sleep(0.25)
        self.report.agent_kill_misses += 1

    async def _kill_one(self, prefix: str, pick: float) -> dict[str, Any]:
        listed = await control_request(self.control_socket, f"actors {prefix}")
        running = sorted(
            a["path"] for a in listed.get("actors", [])
            if a["path"].startswith(prefix + "chat-") and a["status"] == "running" and not a["supervisor"]
        )
        if not running:
            return {}
        return await control_request(self.control_socket, f"kill {running[int(pick * len(running))]}")

    async def progress(self) -> None:
        while True:
            await trio.sleep(30)
            done = len(self.sent) - len(self.pending())
            r = self.report
            self.write(
                f"  t+{trio.current_time() - self.started:4.0f} s: {len(self.sent)} sent, {done} answered or refused; "
                f"{r.agent_kills} connection kills, {r.agent_restarts} agent restarts, {r.bot_kills} bot kills"
            )

    # -- the whole run ---------------------------------------------------------------

    async def play(self) -> None:
        """Onboarding, the calm phase, the chaos phase, settling, a clean stop of the bot."""
        options, write = self.options, self.write
        self._spawn_bot()
        await self._wait_bot_ready()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watchdog)
            await self.onboard(nursery)
            write(f"Onboarded {len(self.users)} users (two rooms each).")
            self.probe = HomeserverProbe(await self.stack.scripted_user(PROBE_USER, sync_timeout_ms=10_000))
            nursery.start_soon(self.probe.run)
            nursery.start_soon(self.progress)
            calm_duration = options.calm_duration or options.duration * options.calm_messages / options.messages
            write(f"Calm phase: {options.calm_messages} messages per user over {calm_duration:.0f} s, nothing broken …")
            await self.run_phase("calm", options.calm_messages, calm_duration)
            await self.wait_answers(60, "calm phase")
            write(
                f"Chaos phase: {options.messages} messages per user over {options.duration:g} s, with "
                f"{options.agent_kills} connection kills, {options.agent_restarts} agent restarts, "
                f"{options.misbehaviours} misbehaviours and {options.bot_kills} bot SIGKILLs …"
            )
            self.chaos_started = trio.current_time()
            async with trio.open_nursery() as chaos:
                chaos.start_soon(self.chaos, chaos)
                await self.run_phase("chaos", options.messages, options.duration)
            # Agents killed by the last events may still be down: bring them back.
            for agent in self.agents:
                if not agent.up:
                    await agent.start(self.stack.nursery)
            write(f"Chaos over; waiting up to {options.settle:g} s for the last answers …")
            await self.wait_answers(options.settle, "settling")
            # Anything still arriving after the last answer (a late second
            # answer) must be seen before counting.
            await trio.sleep(3)
            await self.stop_bot()
            await trio.sleep(2)
            nursery.cancel_scope.cancel()

    # -- counting ------------------------------------------------------------------

    def _epoch(self, agent: int, chat_id: str, connection: int) -> int:
        """Which run of the bot opened this socket (0 = the first process)."""
        return sum(1 for snap in self.kill_snapshots if snap[agent].get(chat_id, 0) < connection)

    def analyse(self) -> None:
        """Count every outcome; write ``messages.jsonl`` (one line per message) to the work dir."""
        report = self.report
        report.sent = len(self.sent)
        report.sent_calm = sum(1 for s in self.sent if s.phase == "calm")
        report.sent_chaos = report.sent - report.sent_calm
        # Deliveries to the agents, per message, with the bot process that made each.
        deliveries: dict[str, list[int]] = {}
        for n, agent in enumerate(self.agents):
            for received in agent.fake.received:
                if isinstance(received.frame, UserMessage) and (m := _TAG.search(received.frame.text)):
                    deliveries.setdefault(m[0], []).append(self._epoch(n, received.chat_id, received.connection))
        # When service came back after each homeserver outage: the first
        # answer to a message sent after the homeserver answered again.
        recovered: list[float] = []
        for stop, back in self.homeserver_windows:
            after = [self.users[s.user].watcher.by_source.get(s.event_id, AnswerSeen()).done_at
                     for s in self.sent if s.sent_at >= back]
            first = min((t for t in after if t is not None), default=None)
            recovered.append(back if first is None else first)
            report.homeserver_down_s.append(round(back - stop, 1))
            report.homeserver_recovered_s.append(None if first is None else round(first - back, 1))
        def drained(stop: float, back: float) -> float:
            # An outage lasts until its backlog is answered: a message sent
            # before the last one sent while it was down has been answered
            # waits behind that backlog, whatever room it is in.
            dones = [self.users[s.user].watcher.by_source.get(s.event_id, AnswerSeen()).done_at
                     for s in self.sent if stop <= s.sent_at <= back]
            return max((t for t in dones if t is not None), default=back)

        # ... and until the homeserver relays as fast as when calm: a
        # restarted Synapse is slow for a while (cold caches, every client
        # syncing again), for every room alike; the bare probe measures that.
        probe = self.probe.samples if self.probe is not None else []
        chaos_from = self.chaos_started if self.chaos_started is not None else math.inf
        calm_probe = [p.latency for p in probe if p.sent_at < chaos_from and p.latency is not None]
        chaos_probe = [p.latency for p in probe if p.sent_at >= chaos_from and p.latency is not None]
        normal = percentile(calm_probe, 0.99)
        report.probe_calm_p99_ms = None if normal is None else round(normal * 1000, 1)
        chaos_p99 = percentile(chaos_probe, 0.99)
        report.probe_chaos_p99_ms = None if chaos_p99 is None else round(chaos_p99 * 1000, 1)
        relaying: list[float] = []
        for _, back in self.homeserver_windows:
            at = None if normal is None else recovered_at(probe, back, normal)
            report.homeserver_slow_after_s.append(None if at is None else round(at - back, 1))
            relaying.append(back if at is None else at)
        homeserver_windows = [(stop, max(end, drained(stop, back), normal_at))
                              for (stop, back), end, normal_at in zip(self.homeserver_windows, recovered, relaying)]
        bot_windows = [(killed, max(back, drained(killed, back))) for killed, back in self.outages]
        retired_rooms = {s.room_id for s in self.sent if self.retire_plan and s.agent == self.retire_plan[0]}
        kinds: dict[str, int] = {}
        calm, untouched, untouched_all, untouched_homeserver, touched = [], [], [], [], []
        records = []
        for s in self.sent:
            seen = self.users[s.user].watcher.by_source.get(s.event_id, AnswerSeen())
            runs = deliveries.get(s.tag, [])
            seen_twice = answered_twice(seen, s.tag)
            if shows_foreign_text(seen, s.tag):
                report.foreign_tags.append(s.tag)
            delivered_twice = len(set(runs)) < len(runs)
            report.duplicated_seen_by_user += seen_twice
            report.duplicated_at_agent += delivered_twice
            report.redelivered_after_bot_restart += len(set(runs)) > 1
            if seen_twice or delivered_twice:
                report.duplicated_tags.append(s.tag)
            bot_outage = any(s.sent_at <= back + OUTAGE_MARGIN and (seen.done_at or math.inf) >= killed
                             for killed, back in bot_windows)
            homeserver_outage = any(s.sent_at <= end + OUTAGE_MARGIN and (seen.done_at or math.inf) >= stop
                                    for stop, end in homeserver_windows)
            record: dict[str, Any] = {
                "tag": s.tag, "user": s.user, "agent": s.agent, "untouched": s.untouched, "phase": s.phase,
                "kind": s.kind, "sent_at_s": round(s.sent_at - self.started, 3), "deliveries": runs,
                "duplicated": seen_twice or delivered_twice, "during_bot_outage": bot_outage,
                "during_homeserver_outage": homeserver_outage,
                "retired_room": s.room_id in retired_rooms,
                "after_retire": self.retired_at is not None and s.sent_at >= self.retired_at,
            }
            records.append(record)
            if seen.done_at is None:
                report.lost_tags.append(s.tag)
                record["outcome"] = "lost"
                continue
            done_parts = [body for root, body in seen.roots.items() if root in seen.done_roots]
            final = "\n".join(done_parts or [seen.roots[r] for r in seen.answer_roots])
            labelled = [seen.errors[r] for r in seen.done_roots if r in seen.errors]
            kind = labelled[-1] if labelled else error_kind(final)
            if kind is not None:
                report.errors += 1
                report.errors_without_kind += not labelled
                kinds[kind] = kinds.get(kind, 0) + 1
                report.untouched_errors += s.untouched
                record["outcome"] = kind
            elif s.kind == "poison":
                # Echoed: the fault hook did not crash the room (the bot has none).
                record["outcome"] = "poison_not_injected"
            elif final.split("\n", 1)[0] == s.expected:
                report.answered += 1
                record["outcome"] = "answered"
            else:
                report.wrong_tags.append(s.tag)
                record["outcome"] = "wrong"
            if seen.side_roots:
                record["side_notices"] = sorted(seen.errors[r] for r in seen.side_roots if r in seen.errors)
            latency = (seen.done_at - s.sent_at) * 1000
            record.update(latency_ms=round(latency, 1))
            if s.phase == "calm":
                if s.untouched:
                    calm.append(latency)
            elif s.untouched:
                untouched_all.append(latency)
                if homeserver_outage:
                    untouched_homeserver.append(latency)
                elif not bot_outage:
                    untouched.append(latency)
            elif s.kind == "normal":
                touched.append(latency)
        report.lost, report.wrong = len(report.lost_tags), len(report.wrong_tags)
        report.duplicated = len(report.duplicated_tags)
        report.foreign_text = len(report.foreign_tags)
        report.error_kinds = kinds
        report.calm_p50_ms, report.calm_p99_ms = percentile(calm, 0.5), percentile(calm, 0.99)
        report.untouched_p50_ms, report.untouched_p99_ms = percentile(untouched, 0.5), percentile(untouched, 0.99)
        report.untouched_p99_all_ms = percentile(untouched_all, 0.99)
        report.untouched_p99_homeserver_ms = percentile(untouched_homeserver, 0.99)
        report.untouched_samples, report.untouched_excluded = len(untouched), len(untouched_all) - len(untouched)
        report.untouched_excluded_homeserver = len(untouched_homeserver)
        report.calm_samples = len(calm)
        report.touched_p50_ms, report.touched_p99_ms = percentile(touched, 0.5), percentile(touched, 0.99)
        if report.calm_p99_ms and report.untouched_p99_ms is not None:
            report.untouched_p99_ratio = round(report.untouched_p99_ms / report.calm_p99_ms, 3)
        for key in ("calm_p50_ms", "calm_p99_ms", "untouched_p50_ms", "untouched_p99_ms", "untouched_p99_all_ms",
                    "untouched_p99_homeserver_ms", "touched_p50_ms", "touched_p99_ms"):
            value = getattr(report, key)
            if value is not None:
                setattr(report, key, round(value, 1))
        log = read_bot_log(self.log_path, self.wall_offset)
        report.supervision = log.counts
        self._count_seams(records, log)
        with open(self.workdir / "messages.jsonl", "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")
        outages = {
            "bot": [{"stopped_at_s": round(k - self.started, 3), "back_at_s": round(b - self.started, 3)}
                    for k, b in self.outages],
            "homeserver": [{"stopped_at_s": round(k - self.started, 3), "back_at_s": round(b - self.started, 3),
                            "service_back_at_s": round(e - self.started, 3)}
                           for (k, b), (_, e) in zip(self.homeserver_windows, homeserver_windows)],
        }
        (self.workdir / "outages.json").write_text(json.dumps(outages, indent=1))
        self._inspect_store()

    def _count_seams(self, records: list[dict[str, Any]], log: "BotLog") -> None:
        """The figures of the newer fault classes, and what users saw per fault class."""
        report = self.report

        def outcomes(selected: list[dict[str, Any]]) -> dict[str, int]:
            counted: dict[str, int] = {}
            for record in selected:
                counted[record["outcome"]] = counted.get(record["outcome"], 0) + 1
            return dict(sorted(counted.items()))

        chaos = [r for r in records if r["phase"] == "chaos"]
        poison = [r for r in chaos if r["kind"] == "poison"]
        flood = [r for r in chaos if r["kind"] == "flood"]
        report.poisoned, report.flood = len(poison), len(flood)
        report.poisoned_answered = sum(1 for r in poison if r["outcome"] == ERROR_SET_ASIDE)
        report.flood_answered = sum(1 for r in flood if r["outcome"] == "answered")
        if self.poisoned_room is not None:
            report.poisoned_room_parks = sum(1 for _, path in log.parks if path == f"node/rooms/{self.poisoned_room}")
        retired = [r for r in chaos if r["retired_room"] and r["after_retire"]]
        report.agent_removed_messages = len(retired)
        report.agent_removed_answered = sum(1 for r in retired if r["outcome"] == "answered")
        faults = {f"agent-{n}": times for n, times in self.agent_faults.items()}
        report.agent_parks, report.agents_parked_by_matrix = agent_parks(log, faults)
        report.connection_crashes_by_matrix = len(log.matrix_crashes)
        report.faults = {
            "connection_kills": {"done": report.agent_kills, "found_none_running": report.agent_kill_misses},
            "agent_restarts": {"done": report.agent_restarts},
            "misbehaviours": {"ordered": report.misbehaviours, "tokens": report.tokens},
            "touched_rooms": {"outcomes": outcomes([r for r in chaos if not r["untouched"] and r["kind"] == "normal"])},
            "bot_kills": {"done": report.bot_kills, "mid_answer": report.bot_kills_mid_answer,
                          "answers_cut": report.answers_cut_by_bot_kills, "slowest_back_s": report.bot_restart_max_s,
                          "outcomes": outcomes([r for r in chaos if r["during_bot_outage"]])},
            "homeserver_outages": {"done": report.homeserver_outages, "down_s": report.homeserver_down_s,
                                   "first_answer_after_s": report.homeserver_recovered_s,
                                   "outcomes": outcomes([r for r in chaos if r["during_homeserver_outage"]])},
            "agent_removed": {"agent": report.agent_removed, "messages_after": len(retired),
                              "outcomes": outcomes(retired),
                              "side_notices": sum(len(r.get("side_notices", [])) for r in retired)},
            "poisoned_room": {"poisoned": report.poisoned, "set_aside": report.poisoned_answered,
                              "poison_outcomes": outcomes(poison), "flood": report.flood,
                              "flood_outcomes": outcomes(flood), "room_parks": report.poisoned_room_parks},
            "frame_floods": {"ordered": report.frame_floods, "supported": FRAME_FLOOD in MODES},
            "untouched_rooms": {"outcomes": outcomes([r for r in chaos if r["untouched"]])},
        }

    def _inspect_store(self) -> None:
        """What the bot's database says at the end, and, for each problem message, its trace."""
        path = self.stack.data_dir / "bot.sqlite3"
        if not path.exists():
            return
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            self.report.store_unhandled = db.execute("SELECT COUNT(*) FROM inbox WHERE handled = 0").fetchone()[0]
            self.report.store_unsent = db.execute("SELECT COUNT(*) FROM outbox WHERE event_id IS NULL").fetchone()[0]
            traces = {}
            problems = (set(self.report.lost_tags) | set(self.report.duplicated_tags) | set(self.report.wrong_tags)
                        | set(self.report.foreign_tags))
            for s in self.sent:
                if s.tag in problems:
                    traces[s.tag] = self._trace(db, s)
            (self.workdir / "problems.json").write_text(json.dumps(traces, indent=2, default=str))
        finally:
            db.close()

    def _trace(self, db: sqlite3.Connection, s: Sent) -> dict[str, Any]:
        inbox = db.execute("SELECT seq, handled FROM inbox WHERE event_id = ?", (s.event_id,)).fetchone()
        turn = db.execute("SELECT boot_id FROM turns WHERE event_id = ?", (s.event_id,)).fetchone()
        sends = []
        for part in range(3):
            row = db.execute(
                "SELECT seq, event_id, content FROM outbox WHERE txn_id = ?", (txn_id("answer", s.event_id, str(part)),)
            ).fetchone()
            if row:
                content = json.loads(row[2])
                sends.append({"part": part, "seq": row[0], "sent_as": row[1], "done": bool(content.get(DONE_KEY)),
                              "body": str(content.get("body", ""))[:120]})
        seen = self.users[s.user].watcher.by_source.get(s.event_id, AnswerSeen())
        deliveries = [
            {"agent": n, "chat": r.chat_id, "connection": r.connection, "bot_run": self._epoch(n, r.chat_id, r.connection)}
            for n, a in enumerate(self.agents) for r in a.fake.received
            if isinstance(r.frame, UserMessage) and s.tag in r.frame.text
        ]
        return {
            "event_id": s.event_id, "room_id": s.room_id, "user": s.user, "agent": s.agent, "phase": s.phase,
            "text": s.text, "sent_at_s": round(s.sent_at - self.started, 3),
            "bot_kills_at_s": [round(k - self.started, 3) for k, _ in self.outages],
            "inbox": None if inbox is None else {"seq": inbox[0], "handled": bool(inbox[1])},
            "turn_boot": turn[0] if turn else None, "answer_sends": sends, "deliveries": deliveries,
            "seen_by_user": {"roots": seen.roots, "done_roots": sorted(seen.done_roots), "orphan_edits": seen.orphan_edits},
        }


def _socket_path(workdir: Path) -> Path:
    """The control socket's path; a Unix socket path must stay under ~100 bytes."""
    path = workdir / "control.sock"
    if len(str(path)) < 100:
        return path
    return Path(tempfile.mkdtemp(prefix="la-chaos-")) / "control.sock"


async def run_chaos(
    workdir: Path,
    options: ChaosOptions = ChaosOptions(),
    *,
    homeserver: Homeserver | None = None,
    write: Callable[[str], Any] = partial(print, flush=True),
    mask: SecretMask | None = None,
) -> ChaosReport:
    """The whole run in ``workdir`` (and a Synapse of its own, unless ``homeserver`` is given).

    Everything it starts is stopped when it returns. Logging is left as the
    caller set it up; the accounts' secrets are added to ``mask``.
    """
    if problems := options.problems():
        raise ChaosError("; ".join(problems))
    if homeserver is not None and options.homeserver_outages:
        raise ChaosError("homeserver outages stop the run's own Synapse only: "
                         "give homeserver_outages=0 with a homeserver of your own")
    workdir = Path(workdir)
    started = time.monotonic()
    if homeserver is not None:
        report = await _run_on(homeserver, workdir, options, write, mask, own_homeserver=False)
    else:
        # Synapse on SQLite waits for every commit to reach the disk; on a
        # shared VM's disk that stalls all rooms at once for seconds, which
        # would measure the disk and not the bot. A tmpfs has no such stalls;
        # the bot's own database stays on disk, as in production.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir
        synapse_dir = Path(tempfile.mkdtemp(prefix="lambda-actors-chaos-synapse-", dir=base))
        write(f"Starting a throwaway Synapse in {synapse_dir} …")
        try:
            # On a port below the ephemeral range: it is stopped and started
            # again on the same port mid-run, and no outgoing connection may
            # take the port meanwhile.
            homeserver = await trio.to_thread.run_sync(start_stable_synapse, synapse_dir)
            report = await _run_on(homeserver, workdir, options, write, mask, own_homeserver=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stop_synapse, synapse_dir)
                # Its log and database are kept with the rest of the run.
                await trio.to_thread.run_sync(_move, synapse_dir, workdir / "synapse")
    report.duration_s = round(time.monotonic() - started, 1)
    return report


def _move(source: Path, target: Path) -> None:
    if source.resolve() != target.resolve():
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(source), str(target))


async def _run_on(
    homeserver: Homeserver,
    workdir: Path,
    options: ChaosOptions,
    write: Callable[[str], Any],
    mask: SecretMask | None,
    *,
    own_homeserver: bool,
) -> ChaosReport:
    names = [f"user{n:02d}" for n in range(options.users)]
    async with open_loopback_stack(workdir, agents=options.agents, users=[*names, PROBE_USER], homeserver=homeserver) as stack:
        if mask is not None:
            mask.add(stack.homeserver.registration_shared_secret)
            for account in (stack.bot_user, *stack.users.values()):
                mask.add(account.password)
                mask.add(account.access_token)
        # Agents that can die and come back: the stack's own fake agents
        # cannot be stopped on their own, so the run serves its own and
        # points agents.yaml at them (same users, same agent ids).
        agents = [
            RestartableAgent(FakeAgent(workdir / f"chaos-agent-{n}", port=port, **AGENT_OPTIONS))
            for n, port in enumerate(stable_ports(options.agents))
        ]
        for agent in agents:
            await agent.start(stack.nursery)
        stack.agents = [a.fake for a in agents]
        stack.config_path.write_text(
            agents_yaml(stack.agents, {stack.users[name].user_id: f"agent-{i % options.agents}" for i, name in enumerate(names)})
        )
        run = ChaosRun(stack, agents, options, workdir, write, own_homeserver=own_homeserver)
        if options.supervision is not None:
            shutil.copyfile(options.supervision, run.supervision_path)
        else:
            CHAOS.write(run.supervision_path)
        untouched = ", ".join(f"agent-{n}" for n in range(options.untouched_agents))
        write(
            f"{options.users} users, {options.agents} fake agents ({untouched} untouched), seed {options.seed}; "
            f"the bot runs as a child process, its log in {run.log_path}"
        )
        try:
            await run.play()
        except BaseException:
            # A failed run does not wait for a clean stop: the stack's clean
            # stop waits for the process without letting this event loop
            # run, and the loop serves the fake agents the bot is talking to.
            stack.kill_bot_process()
            raise
        run.analyse()
        write("Stopping the fake agents and Synapse …")
    return run.report


# -- the command -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ChaosOptions()
    add = parser.add_argument
    add("--users", type=int, default=d.users, help="scripted users, two rooms each (default: %(default)s)")
    add("--agents", type=int, default=d.agents, help="fake agents; user i talks to agent i %% agents (default: %(default)s)")
    add("--untouched-agents", type=int, default=d.untouched_agents,
        help="agents kept out of the chaos, whose rooms' latency is measured (default: %(default)s)")
    add("--calm-messages", type=int, default=d.calm_messages, help="messages per user in the calm phase (default: %(default)s)")
    add("--calm-duration", type=float, default=d.calm_duration,
        help="seconds of the calm phase (default: the chaos phase's pace per message)")
    add("--messages", type=int, default=d.messages, help="messages per user under chaos (default: %(default)s)")
    add("--duration", type=float, default=d.duration, help="seconds of the chaos phase (default: %(default)s)")
    add("--agent-kills", type=int, default=d.agent_kills,
        help="connection actors to kill through the control socket (default: %(default)s)")
    add("--bot-kills", type=int, default=d.bot_kills, help="bot SIGKILLs (default: %(default)s)")
    add("--agent-restarts", type=int, default=d.agent_restarts,
        help="whole fake agents to kill and start again (default: %(default)s)")
    add("--misbehaviours", type=int, default=d.misbehaviours,
        help="one-off misbehaviours ordered from the fake agents (default: %(default)s)")
    add("--token-fraction", type=float, default=d.token_fraction,
        help="share of touched users' chaos messages carrying a misbehaviour token (default: %(default)s)")
    add("--slow-fraction", type=float, default=d.slow_fraction,
        help="share of touched users' chaos messages answered slowly, streamed over 2.5 s (default: %(default)s)")
    add("--patience", type=float, default=d.patience,
        help="chance that a user waits for the previous answer in a room before writing again (default: %(default)s)")
    add("--homeserver-outages", type=int, default=d.homeserver_outages,
        help="times the run's Synapse is stopped and started again mid-run (default: %(default)s)")
    add("--outage-min", type=float, default=d.outage_min, help="shortest homeserver outage, seconds (default: %(default)s)")
    add("--outage-max", type=float, default=d.outage_max, help="longest homeserver outage, seconds (default: %(default)s)")
    add("--retire", action=argparse.BooleanOptionalAction, default=d.retire,
        help="remove the last touched agent from agents.yaml between two bot runs (default: on)")
    add("--poisoned", type=int, default=d.poisoned,
        help="messages that crash their room every time (the bot's poison fault hook), in one room (default: %(default)s)")
    add("--flood", type=int, default=d.flood,
        help="messages flooded into the poisoned room while it fails (default: %(default)s)")
    add("--frame-floods", type=int, default=d.frame_floods,
        help="answers after which a touched agent floods frames until its socket is closed (default: %(default)s)")
    add("--settle", type=float, default=d.settle, help="longest wait for the last answers, seconds (default: %(default)s)")
    add("--seed", type=int, default=d.seed, help="seed of every random choice of the run (default: %(default)s)")
    add("--supervision", type=Path, default=None, help="a supervision.toml for the bot instead of the run's own policy")
    add("--json", action="store_true", help="print the report as one JSON object (progress goes to stderr)")
    add("--keep", type=Path, metavar="DIR",
        help="work in DIR (new or empty) and keep it: the bot's log and database, problems.json, report.json")
    from .cluster_chaos import add_arguments as add_cluster_arguments

    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """0: nothing lost, duplicated or wrong; 1: the run found problems (or failed); 2: cannot start; 130: Ctrl-C."""
    if args.nodes is not None or args.quick:
        from .cluster_chaos import run as run_cluster  # several nodes: docs/chaos.md "Several nodes"

        return run_cluster(args)
    options = ChaosOptions(**{f.name: getattr(args, f.name) for f in fields(ChaosOptions)})

    def show(report: ChaosReport, write: Callable[..., None]) -> None:
        write("")
        for line in report.lines():
            write(line)

    return run_command(
        args, options.problems(), partial(run_chaos, options=options), show=show, prefix="lambda-actors-chaos-",
        logs="tracebacks in driver.log", kept="(problems.json traces each problem message)",
    )


def run_command(
    args: argparse.Namespace,
    problems: list[str],
    start: Callable[..., Awaitable[Any]],
    *,
    show: Callable[[Any, Callable[..., None]], None],
    prefix: str,
    logs: str,
    kept: str,
) -> int:
    """What ``chaos`` and ``chaos --nodes`` share around their run: Synapse
    installed, the options' ``problems``, the work directory (``--keep``), the
    run under Trio (``start(workdir, write=, mask=)``, returning a report with
    ``ok`` and ``as_json()``) logging to ``driver.log``, Ctrl-C, a run that
    failed, the report (``--json``, or ``show``), and what is kept (``kept``
    says what a report with problems adds). The exit statuses of :func:`run`."""
    if importlib.util.find_spec("synapse") is None:
        print("chaos: Synapse is not installed. Run scripts/setup (it installs lambda_actors[test]).", file=sys.stderr)
        return 2
    if problems:
        print("chaos: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.keep is not None:
        workdir = args.keep.resolve()
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            print(f"chaos: --keep {args.keep}: give a new or empty directory (this one is not empty).", file=sys.stderr)
            return 2
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
    out = sys.stderr if args.json else sys.stdout
    write = partial(print, file=out, flush=True)
    mask = SecretMask()
    with open(workdir / "driver.log", "a", encoding="utf-8") as driver_log:
        configure_logging(mask, stream=driver_log)
        try:
            report = trio.run(partial(start, workdir, write=write, mask=mask))
        except BaseException as exc:
            out.flush()
            if leaves(exc, KeyboardInterrupt):
                print("\nchaos: interrupted; everything it started is stopped.", file=sys.stderr)
                return 130
            if failures := leaves(exc, Exception):
                driver_log.write("".join(traceback.format_exception(exc)))
                for problem in failures:
                    print(f"\nchaos: the run failed: {type(problem).__name__}: {problem}", file=sys.stderr)
                print(f"chaos: its working directory is kept ({logs}): {workdir}", file=sys.stderr)
                return 1
            raise
        finally:
            logging.getLogger().handlers.clear()
    (workdir / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    if args.json:
        print(json.dumps(report.as_json()), flush=True)
    else:
        show(report, write)
    if args.keep is not None or not report.ok:
        write(f"The working directory is kept: {workdir}" + ("" if report.ok else f" {kept}"))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1

