"""One actor per running attempt of a task (SPEC 8 "An agent task", "A command task").

The attempt's result goes to its run actor as one message; the run actor
owns the schedule and the record, this actor only does the work. The run
actor enforces the timeout (its scheduler knows the deadline) by killing
this actor; the socket or the process goes with it.

**An agent task** is a fresh agent context: a chat id of its own for each
attempt, ``dag.<run_id>.<task_id>.<attempt>``. Rooms' chats are numbers
(``platform_chat_id``), so a word can never name one of theirs, and a re-run
is a new chat the agent has never seen. Its session id is
``<run_id>:<task_id>``: the protocol carries no session id, so it is ours,
in the record, the status events and the logs (with the attempt). The
rendered prompt is the USER_MESSAGE; the text up to END is the output;
SEND_FILE paths are kept as artifacts. ERROR, a dropped socket or a stall
fail the attempt. A confirm request makes the task ``blocked`` while the
run's owner decides (:class:`.services.Gate`); the decision goes back to the
agent and the task is ``recovered``.

**A command task** (only where ``[dag] allow_commands``) runs its argv
without a shell; its output is stdout and stderr, cut at
``command_output_cap`` bytes; a non-zero exit fails the attempt.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import trio

from ...agent.client import AgentConnection, AgentConnectionError, Late, open_agent_connection
from ...agent.protocol import AgentError, CustomUpdate, End, SendFile, TextChunk
from ...runtime.address import Address
from ...runtime.context import ActorContext
from ...runtime.errors import ActorError
from ..spec import TaskSpec
from .messages import AttemptBlocked, AttemptFailed, AttemptRecovered, AttemptSucceeded, Go
from .services import ConfirmAsk, DagServices

__all__ = ["Job", "chat_id_for", "session_id_for", "task_actor"]

#: Longest error text kept as a failure's reason.
_REASON_CHARS = 500


def session_id_for(run_id: str, task_id: str) -> str:
    return f"{run_id}:{task_id}"


def chat_id_for(run_id: str, task_id: str, attempt: int) -> str:
    """A chat of its own per attempt; never a number, so never a room's chat."""
    return f"dag.{run_id}.{task_id}.{attempt}"


@dataclass(frozen=True)
class Job:
    run_id: str
    task: TaskSpec
    attempt: int
    prompt: str | None  #: rendered with the upstream outputs; None: warm (see run.py), sent by Go
    owner: str | None
    run: Address  #: the run actor, told the result


async def task_actor(ctx: ActorContext, services: DagServices, job: Job) -> None:
    if job.task.is_command:
        await _tell(job, await _command(services, job))
    else:
        await _agent(ctx, services, job)


async def _tell(job: Job, msg: object) -> None:
    try:
        # Awaited, but it cannot hold up a loop serving others: this actor
        # serves this one attempt, and its run actor's mailbox is sized for
        # one report per slot, so this waits, if ever, for a moment.
        await job.run.send(msg)
    except ActorError:
        pass  # the run ended or restarts: a restarted run starts a new attempt


async def _agent(ctx: ActorContext, services: DagServices, job: Job) -> None:
    """Run the attempt on the agent and tell the run its result (the answer
    is told before the socket's closing handshake: dependents need not wait
    for it)."""
    task, attempt = job.task, job.attempt
    assert task.agent is not None
    base_url = services.agent_url(task.agent)
    if base_url is None:
        await _tell(job, AttemptFailed(task.id, attempt, f"agent {task.agent!r} is not served by this node"))
        return
    session_id = session_id_for(job.run_id, task.id)
    chat_id = chat_id_for(job.run_id, task.id, attempt)
    log = ctx.log.bind(session_id=session_id, attempt=attempt, chat_id=chat_id, agent=task.agent)
    text: list[str] = []
    artifacts: list[str] = []
    told = sent = False
    prompt = job.prompt
    # A warm socket that fails before its message is sent is replaced once by
    # a fresh one: nothing of the attempt had reached the agent.
    tries = 2 if prompt is None else 1
    for try_ in range(tries):
        try:
            # The scheduler's deadline is the task's timeout; a silent agent is
            # caught by it, so the socket's own stall clock is as long.
            async with open_agent_connection(base_url, chat_id, idle_timeout=float(task.timeout_s)) as conn:
                if prompt is None:
                    prompt = await _wait_go(ctx)
                    if prompt is None:
                        return  # stopped before its turn came (skipped, cancelled, the run ended)
                await conn.send_user_message(prompt)
                sent = True
                log.info("dag.task.sent")
                result = await _converse(ctx, services, job, conn, session_id, text, artifacts, log)
                told = True
                await _tell(job, result)
                return
        except AgentConnectionError as exc:
            log.info("dag.task.agent_failed", error=type(exc).__name__)
            if told:
                return  # a close that failed after the result was told changes nothing
            if not sent and try_ + 1 < tries:
                continue
            if prompt is None:
                return  # warm, never started: its run starts a fresh actor when the time comes
            await _tell(job, AttemptFailed(task.id, attempt, _short(str(exc))))
            return


async def _wait_go(ctx: ActorContext) -> str | None:
    """A warm attempt's prompt, once its run starts it (None: stopped first)."""
    while True:
        try:
            msg = await ctx.mailbox.receive()
        except trio.EndOfChannel:
            return None
        if isinstance(msg, Go):
            return msg.prompt


async def _converse(
    ctx: ActorContext, services: DagServices, job: Job, conn: AgentConnection, session_id: str,
    text: list[str], artifacts: list[str], log: Any,
) -> object:
    """The answer to the USER_MESSAGE sent: the attempt's result (``log``
    bound to the attempt already: a bind per task is not free)."""
    task, attempt = job.task, job.attempt
    async for frame in conn:
        if isinstance(frame, Late):
            continue
        if isinstance(frame, TextChunk):
            text.append(frame.text)
        elif isinstance(frame, SendFile):
            artifacts.append(frame.path)
        elif isinstance(frame, CustomUpdate) and frame.confirm is not None:
            ask = frame.confirm
            await _tell(
                job, AttemptBlocked(task.id, attempt, f"{ask.action}: {ask.details}".strip(": "), "".join(text))
            )
            approved = await _decide(ctx, services, job, session_id, ask.request_id, ask.action, ask.details)
            await conn.send_confirm_response(ask.request_id, approved)
            await _tell(job, AttemptRecovered(task.id, attempt, approved))
        elif isinstance(frame, End):
            log.info("dag.task.answered", chars=sum(map(len, text)))
            return AttemptSucceeded(task.id, attempt, "".join(text), tuple(artifacts))
        elif isinstance(frame, AgentError):
            return AttemptFailed(task.id, attempt, _short(f"the agent failed: {frame.message}"))
    return AttemptFailed(task.id, attempt, "the agent closed the socket before END")


async def _decide(
    ctx: ActorContext, services: DagServices, job: Job, session_id: str, request_id: str, action: str, details: str
) -> bool:
    if services.gate is None:
        return False  # nobody to ask: default deny
    assert job.task.agent is not None
    ask = ConfirmAsk(
        job.run_id, job.task.id, job.attempt, session_id, job.task.agent, job.owner, request_id, action, details
    )
    return await services.gate.decide(ctx, ask)


async def _command(services: DagServices, job: Job) -> object:
    task, attempt = job.task, job.attempt
    assert task.command is not None
    cap = services.command_output_cap
    kept = bytearray()
    cut = 0
    try:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                lambda task_status: trio.run_process(
                    list(task.command or ()), cwd=task.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, check=False, task_status=task_status,
                )
            )
            assert process.stdout is not None
            async for chunk in process.stdout:
                room = cap - len(kept)
                kept += chunk[: max(room, 0)]
                cut += max(len(chunk) - max(room, 0), 0)
        code = process.returncode
    except OSError as exc:
        return AttemptFailed(task.id, attempt, _short(f"the command could not start: {exc.strerror or exc}"))
    output = kept.decode("utf-8", "replace")
    if cut:
        output += f"\n[output cut: {cut} more bytes]"
    if code != 0:
        tail = output[-300:].strip()
        return AttemptFailed(task.id, attempt, _short(f"exit status {code}" + (f": {tail}" if tail else "")))
    return AttemptSucceeded(task.id, attempt, output)


def _short(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
