"""What the DAG actors say to each other (one conversation per section).

Every message is a small frozen dataclass. Who sends what, and why none of
these sends can hold up a loop serving others, is said beside each send.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AttemptBlocked",
    "AttemptFailed",
    "AttemptRecovered",
    "AttemptSucceeded",
    "CancelRun",
    "Go",
    "Granted",
    "PauseRun",
    "ResumeRun",
    "RunEnded",
    "StartRun",
]

# -- a task actor -> its run actor ------------------------------------------------------


@dataclass(frozen=True)
class AttemptSucceeded:
    task_id: str
    attempt: int
    output: str
    artifacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptFailed:
    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class AttemptBlocked:
    """The agent asked for a confirmation: the owner is being asked."""

    task_id: str
    attempt: int
    reason: str
    output_preview: str


@dataclass(frozen=True)
class AttemptRecovered:
    """The owner's decision went back to the agent: the attempt runs on."""

    task_id: str
    attempt: int
    approved: bool


# -- the slot board -> a run actor --------------------------------------------------------


@dataclass(frozen=True)
class Granted:
    """Slots were granted to the run: take them from the board (a merged flag:
    at most one waits in the mailbox, however many grants it stands for)."""


# -- a run actor -> a warm task actor ------------------------------------------------------


@dataclass(frozen=True)
class Go:
    """The attempt starts: send this prompt on the socket opened ahead."""

    prompt: str


# -- the API (control.py) -> a run actor (calls; reply None or fail) --------------------------


@dataclass(frozen=True)
class CancelRun:
    reason: str = "the run was cancelled"


@dataclass(frozen=True)
class PauseRun:
    pass


@dataclass(frozen=True)
class ResumeRun:
    pass


# -- the coordinator's conversation ----------------------------------------------------------


@dataclass(frozen=True)
class StartRun:
    """Start the run actor of a run that is in the store (a call; replies None)."""

    run_id: str


@dataclass(frozen=True)
class RunEnded:
    """A run actor wrote its run's final state and is returning."""

    run_id: str
    worker: str
