"""Who decides, and which request an answer is for: the gate's rules, pure.

SPEC 7.1, "How it is answered":

- only the approver's answer counts; anyone else's changes nothing;
- a reaction on a prompt, or a reply to it, answers *that* request;
- a bare ``!yes`` / ``!no`` answers the one request pending for its sender
  in that room; with several pending the bot asks which, it never guesses;
- an answer counts if it was sent (``origin_server_ts``) before the
  deadline, even when the node only sees it after a restart;
- the first valid decision is final (the record's move table enforces it).

No I/O and no clock: the caller passes the records and the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .record import Approval, Status, Via, decide

__all__ = ["Answer", "AskWhich", "Decided", "Ignored", "expire_due", "judge"]


@dataclass(frozen=True)
class Answer:
    sender: str
    approve: bool
    via: Via  #: REACTION or COMMAND
    sent_at: float  #: the event's origin_server_ts, in seconds
    #: The request the answer points at (a reaction on its prompt, a reply to
    #: it); None for a bare ``!yes`` / ``!no``.
    target: str | None = None


@dataclass(frozen=True)
class Decided:
    record: Approval  #: the record after the decision


@dataclass(frozen=True)
class AskWhich:
    """Several requests wait for this sender here: ask, do not guess."""

    candidates: tuple[Approval, ...]


@dataclass(frozen=True)
class Ignored:
    why: str  #: for the log: "not the approver", "too late", "nothing pending", ...


def judge(answer: Answer, pending_here: list[Approval], now: float) -> Decided | AskWhich | Ignored:
    """What ``answer`` does, given the requests pending in its room."""
    if answer.target is not None:
        matches = [r for r in pending_here if r.id == answer.target]
        if not matches:
            return Ignored("not pending")
        candidates = matches
    else:
        candidates = [r for r in pending_here if r.approver == answer.sender]
        if not candidates:
            return Ignored("nothing pending for this sender")
        if len(candidates) > 1:
            return AskWhich(tuple(sorted(candidates, key=lambda r: r.created_at)))
    record = candidates[0]
    if record.approver != answer.sender:
        return Ignored("not the approver")
    if not record.counts_at(answer.sent_at):
        return Ignored("too late")
    status = Status.APPROVED if answer.approve else Status.DENIED
    return Decided(decide(record, status, answer.via, at=now, by=answer.sender))


def expire_due(pending: list[Approval], now: float) -> list[Approval]:
    """The pending records whose deadline has come, each moved to ``expired``."""
    return [decide(r, Status.EXPIRED, Via.TIMEOUT, at=now) for r in pending if r.expires_at <= now]
