"""``lambda-actors demo``: the whole system on loopback, talking, in under a minute.

It is the README's first command, so it must work on a fresh machine with
nothing running: it starts a throwaway Synapse in a working directory, two
fake agents and the bot (in this process), then plays a scripted user,
"alice", through what the bot does: onboarding, a streamed answer, a file
each way, a confirmation, ``!clear``, an agent crash and recovery, and
``!context``. The conversation is printed as alice's client sees it::

    [Chat 1] alice ▶ tell me a story
    [Chat 1] bot   ◀ echo: tell
    [Chat 1] bot   ◀ ✎ echo: tell me a st

Each step checks what it shows; the first step that does not get what it
expects stops the demo with a message saying what was expected and what
came instead, and the exit status is 1. Everything started is stopped
either way. The working directory is removed after a successful run unless
``--keep DIR`` names one; after a failure it is kept, for its logs.

:func:`play_demo` is the demo without the command line, so the end-to-end
test runs the very same script against the test session's Synapse.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, TextIO

import trio

from ..agent.fake import FakeAgent
from ..agent.protocol import UserMessage
from ..bot.logs import SecretMask, configure_logging
from .homeserver import Homeserver
from ..runtime.groups import leaves
from .profiles import LOOPBACK, LOOPBACK_TIMING
from .stack import LoopbackStack, open_loopback_stack
from .user import Answer, ScriptedUser, Seen

__all__ = ["STEPS", "DemoReport", "StepResult", "add_arguments", "play_demo", "run"]

#: How long one expectation of a step may take before the step fails.
STEP_TIMEOUT = 20.0
#: The fake agents cut answers into this many chunks, spaced this far apart
#: in the streaming step.
AGENT_OPTIONS = {"chunks": 8, "slow_interval": 0.25}
LOG_NAME = "bot.log"
#: A notice longer than this many lines (the welcome, with the help text) is
#: shortened in the transcript.
_MAX_LINES = 4


class StepFailed(Exception):
    """A step did not see what it expected; the message says what and what came instead."""


@dataclass
class StepResult:
    title: str
    ok: bool
    summary: str


@dataclass
class DemoReport:
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return len(self.steps) == len(STEPS) and all(step.ok for step in self.steps)


# -- the transcript ------------------------------------------------------------


class Transcript:
    """Prints what a scripted user's client sees, in order, as it arrives.

    :meth:`flush` is synchronous (so it cannot interleave with itself) and is
    called both by :meth:`follow` whenever the client syncs and by the steps
    before they print, so a step's header never overtakes the previous
    step's last messages.
    """

    def __init__(self, user: ScriptedUser, user_name: str, bot_id: str, write: Callable[[str], Any]) -> None:
        self.user = user
        self.user_name = user_name
        self.bot_id = bot_id
        self.write = write
        self._cursor = 0
        #: The latest body shown per bot message, so an edit repeating it
        #: (the "done" mark on an answer already complete) is not printed twice.
        self._shown: dict[str, str] = {}

    async def follow(self) -> None:
        while True:
            await self.user.wait_until(lambda: len(self.user.seen) > self._cursor, timeout=math.inf)
            self.flush()

    def flush(self) -> None:
        while self._cursor < len(self.user.seen):
            seen = self.user.seen[self._cursor]
            self._cursor += 1
            line = self._format(seen)
            if line is not None:
                self.write(line)

    def _room(self, room_id: str) -> str:
        # Every room alice did not create herself came with an invitation
        # that names it; the one she created is her direct chat with the bot.
        name = next((i.name for i in self.user.invites if i.room_id == room_id), None)
        return f"[{name or 'DM'}]"

    def _format(self, seen: Seen) -> str | None:
        content = seen.content
        if seen.sender == self.user.user_id:
            who, arrow = self.user_name, "▶"
        elif seen.sender == self.bot_id:
            who, arrow = "bot", "◀"
        else:
            return None
        if seen.type == "m.reaction":
            key = (content.get("m.relates_to") or {}).get("key", "")
            text = f"{key} (reaction)"
        elif seen.type != "m.room.message":
            return None
        elif (content.get("m.relates_to") or {}).get("rel_type") == "m.replace":
            target = content["m.relates_to"].get("event_id", "")
            body = str((content.get("m.new_content") or {}).get("body", ""))
            if self._shown.get(target) == body:
                return None
            self._shown[target] = body
            text = "✎ " + body
        elif content.get("msgtype") in ("m.file", "m.image", "m.audio", "m.video"):
            size = (content.get("info") or {}).get("size")
            text = f"📎 {content.get('body', '')} ({content.get('msgtype')}, {size} bytes)"
        else:
            text = str(content.get("body", ""))
            self._shown[seen.event_id] = text
        prefix = f"{self._room(seen.room_id):<9}{who:<6}{arrow} "
        return prefix + _indent(_shorten(text), " " * len(prefix))


def _shorten(text: str) -> str:
    """A long message cut to its first paragraph (at most :data:`_MAX_LINES` lines)."""
    lines = text.splitlines() or [""]
    if len(lines) <= _MAX_LINES:
        return "\n".join(lines)
    keep = lines[:_MAX_LINES]
    if "" in keep:
        keep = keep[: keep.index("")]
    return "\n".join(keep + [f"… ({len(lines) - len(keep)} more lines)"])


def _indent(text: str, padding: str) -> str:
    return text.replace("\n", "\n" + padding)


# -- the steps -----------------------------------------------------------------


@dataclass
class Demo:
    """What the steps share: the stack, alice, her rooms, the transcript."""

    stack: LoopbackStack
    alice: ScriptedUser
    transcript: Transcript
    dm: str = ""
    chat1: str = ""

    @property
    def agent(self) -> FakeAgent:
        """alice's agent (``agent-0``: user ``i`` is served by agent ``i % 2``)."""
        return self.stack.agents[0]

    async def say(self, text: str) -> str:
        return await self.alice.say(self.chat1, text)

    async def reply(self, event_id: str, check: Callable[[Answer], bool], expected: str) -> Answer:
        """The bot's complete reply to ``event_id`` once ``check`` accepts it.

        Raises :class:`StepFailed` naming ``expected`` and what the bot said
        if that does not happen within :data:`STEP_TIMEOUT`.
        """

        def ready() -> Answer | None:
            answer = self.alice.answer_so_far(event_id)
            return answer if answer.done and check(answer) else None

        try:
            return await self.alice.wait_until(ready, STEP_TIMEOUT)
        except trio.TooSlowError:
            said = self.alice.answer_so_far(event_id).text or "nothing"
            raise StepFailed(f"expected {expected} within {STEP_TIMEOUT:g} s; the bot said: {said!r}") from None

    async def notice(self, room_id: str, contains: str, expected: str) -> Seen:
        try:
            return await self.alice.notice(room_id, contains, STEP_TIMEOUT)
        except trio.TooSlowError:
            raise StepFailed(f"expected {expected} within {STEP_TIMEOUT:g} s, and it did not come") from None

    def chat_id_of(self, text: str) -> str:
        """The chat id on which alice's agent received ``text`` (the latest such message)."""
        found = [r.chat_id for r in self.agent.received if isinstance(r.frame, UserMessage) and r.frame.text == text]
        if not found:
            raise StepFailed(f"the agent never received {text!r}")
        return found[-1]


async def onboarding(demo: Demo) -> str:
    alice = demo.alice
    demo.dm = await alice.start_dm(demo.stack.bot_id)
    await demo.notice(demo.dm, "Hello! I connect you to", "the bot's welcome in the direct chat")
    try:
        demo.chat1 = await alice.accept_invite("Chat 1", STEP_TIMEOUT)
    except trio.TooSlowError:
        raise StepFailed(f'expected an invitation to "Chat 1" within {STEP_TIMEOUT:g} s') from None
    await demo.notice(demo.chat1, 'This is "Chat 1"', 'the welcome in "Chat 1"')
    space = next((i for i in alice.invites if i.is_space), None)
    if space is None:
        raise StepFailed("expected an invitation to alice's Space")
    return f'the bot joined, made the Space "{space.name}" with "Chat 1" in it, and alice joined "Chat 1"'


async def streamed_answer(demo: Demo) -> str:
    text = "tell me a story about supervisors and actors [[slow]]"
    answer = await demo.reply(
        await demo.say(text), lambda a: "echo: tell me a story" in a.text, "the echo of the story, streamed"
    )
    if len(answer.parts) != 1 or answer.edits < 2:
        raise StepFailed(f"expected one message growing by edits; got {len(answer.parts)} message(s), {answer.edits} edit(s)")
    return f"one message, grown by {answer.edits} edits while the agent wrote"


async def file_to_agent(demo: Demo) -> str:
    data = b"Meeting notes: ship the demo.\n"
    await demo.reply(
        await demo.alice.send_file(demo.chat1, "notes.txt", data),
        lambda a: "notes.txt is ready" in a.text,
        '"notes.txt is ready"',
    )
    expected = f"notes.txt: {len(data)} bytes"
    answer = await demo.reply(
        await demo.say("what did I send you?"), lambda a: expected in a.text, f"the agent to report {expected!r}"
    )
    line = next(line for line in answer.text.splitlines() if expected in line)
    return f"the agent found the file in its workspace ({line.strip()})"


async def file_from_agent(demo: Demo) -> str:
    answer = await demo.reply(
        await demo.say("write me a report [[file:report.txt]]"), lambda a: bool(a.files), "an m.file from the agent"
    )
    sent = answer.files[0]
    download = await demo.alice.client.download(sent["url"], max_bytes=1_000_000)
    written = (demo.agent.workspace / "outbox" / "report.txt").read_bytes()
    if download.data != written:
        raise StepFailed(f"the downloaded {sent['body']} ({len(download.data)} bytes) is not what the agent wrote")
    return f"alice downloaded {sent['body']} ({len(download.data)} bytes, the same bytes the agent wrote)"


async def confirmation(demo: Demo) -> str:
    event_id = await demo.say("tidy up my workspace [[confirm]]")
    await demo.notice(demo.chat1, "asks for your approval", "the bot to ask for permission")
    await demo.say("!yes")
    await demo.reply(event_id, lambda a: ": approved" in a.text, "the agent's answer saying approved")
    return "the agent asked, alice said !yes, the agent went ahead"


async def clear(demo: Demo) -> str:
    before = demo.chat_id_of("tidy up my workspace [[confirm]]")
    await demo.reply(await demo.say("!clear"), lambda a: "Started over" in a.text, '"Started over"')
    await demo.reply(await demo.say("hello again"), lambda a: "echo: hello again" in a.text, '"echo: hello again"')
    after = demo.chat_id_of("hello again")
    if after == before:
        raise StepFailed(f"expected the agent to see a new chat id after !clear; it still saw chat {before}")
    return f"the agent saw chat {before} before and a fresh chat {after} after"


async def crash_and_recovery(demo: Demo) -> str:
    crash = "this answer will break off [[drop]]"
    await demo.reply(await demo.say(crash), lambda a: "⚠" in a.text, "an error message (⚠) in the answer")
    await demo.reply(await demo.say("are you back?"), lambda a: "echo: are you back?" in a.text, '"echo: are you back?"')
    sockets = demo.agent.connections[demo.chat_id_of("are you back?")]
    return f"alice was told the answer broke off; the bot reconnected (socket {sockets} of this chat) and answered"


async def context(demo: Demo) -> str:
    answer = await demo.reply(
        await demo.say("!context"), lambda a: "Chat id:" in a.text, "the context (agent, chat id, waiting files)"
    )
    return "; ".join(line.strip() for line in answer.text.splitlines()[:2])


Step = Callable[[Demo], Awaitable[str]]
STEPS: list[tuple[str, Step]] = [
    ("Onboarding: alice invites the bot to a direct chat", onboarding),
    ("A streamed answer", streamed_answer),
    ("A file from alice to her agent", file_to_agent),
    ("A file from the agent to alice", file_from_agent),
    ("A confirmation", confirmation),
    ("!clear: a new conversation with the agent", clear),
    ("The agent crashes mid-answer, and recovers", crash_and_recovery),
    ("!context", context),
]


async def play_steps(demo: Demo, write: Callable[[str], Any]) -> list[StepResult]:
    """Run :data:`STEPS` in order; stop at the first that fails (the next ones build on it)."""
    results = []
    for number, (title, step) in enumerate(STEPS, 1):
        demo.transcript.flush()
        write("")
        write(f"── {number}/{len(STEPS)} {title} " + "─" * max(3, 60 - len(title)))
        try:
            summary = await step(demo)
        except StepFailed as exc:
            demo.transcript.flush()
            write(f"   ✗ {exc}")
            results.append(StepResult(title, False, str(exc)))
            break
        demo.transcript.flush()
        write(f"   ✓ {summary}")
        results.append(StepResult(title, True, summary))
    return results


async def play_demo(
    workdir: Path,
    *,
    homeserver: Homeserver | None = None,
    write: Callable[[str], Any] = partial(print, flush=True),
    mask: SecretMask | None = None,
) -> DemoReport:
    """Start the stack in ``workdir`` (and a Synapse, unless ``homeserver`` is
    given), play every step, stop everything; report what happened.

    Logging is left as the caller set it up (the command sends it to a file);
    the passwords and tokens of the accounts made here are added to ``mask``.
    """
    started = time.monotonic()
    report = DemoReport()
    if homeserver is None:
        write("Starting a throwaway Synapse, two fake agents and the bot …")
    async with open_loopback_stack(
        workdir,
        agents=2,
        users=("alice", "bob"),
        homeserver=homeserver,
        timing=LOOPBACK_TIMING,
        supervision=LOOPBACK.config(),
        agent_options=AGENT_OPTIONS,
    ) as stack:
        if mask is not None:
            mask.add(stack.homeserver.registration_shared_secret)
            for account in (stack.bot_user, *stack.users.values()):
                mask.add(account.password)
                mask.add(account.access_token)
        await stack.start_bot()
        alice = await stack.scripted_user("alice")
        write(f"  homeserver  {stack.homeserver.url}")
        for n, agent in enumerate(stack.agents):
            served = [name for i, name in enumerate(stack.users) if i % len(stack.agents) == n]
            write(f"  agent-{n}     {agent.base_url} (fake agent for {', '.join(served)})")
        write(f"  bot         {stack.bot_id}")
        write(f"  alice       {alice.user_id}")
        transcript = Transcript(alice, "alice", stack.bot_id, write)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transcript.follow)
            report.steps = await play_steps(Demo(stack, alice, transcript), write)
            nursery.cancel_scope.cancel()
        write("")
        write("Stopping the bot, the fake agents" + (" and Synapse …" if homeserver is None else " …"))
    report.seconds = time.monotonic() - started
    return report


# -- the command ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (new or empty) and keep it afterwards: Synapse's files, agent workspaces, the bot's database and log",
    )
    parser.add_argument(
        "--quiet-logs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"write the bot's log lines to {LOG_NAME} in the working directory, not the console (default: on)",
    )


def run(args: argparse.Namespace) -> int:
    """Play the demo; 0 when every step passed, 1 when one failed, 2 when it cannot start, 130 on Ctrl-C."""
    if importlib.util.find_spec("synapse") is None:
        print(
            "demo: Synapse is not installed. Run scripts/setup (it installs lambda_actors[test], "
            "which brings matrix-synapse), or `pip install matrix-synapse`.",
            file=sys.stderr,
        )
        return 2
    if args.keep is not None:
        workdir = args.keep.resolve()
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            print(f"demo: --keep {args.keep}: give a new or empty directory (this one is not empty).", file=sys.stderr)
            return 2
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="lambda-actors-demo-"))
    log_path = workdir / LOG_NAME
    if args.quiet_logs:
        with open(log_path, "a", encoding="utf-8") as log_file:
            status = _play(workdir, log_file)
            # Nothing may log into the closed file (exit hooks do log).
            logging.getLogger().handlers.clear()
    else:
        status = _play(workdir, sys.stderr)
    # After a failure the directory is kept for its logs; after Ctrl-C it
    # goes, like everything else the demo started.
    if args.keep is not None or status == 1:
        if args.quiet_logs:
            print(f"The bot's log: {log_path}")
        print(f"The working directory is kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        if args.quiet_logs:
            print(f"The bot's log was {log_path}, removed with the working directory (--keep DIR keeps it).")
    return status


def _play(workdir: Path, log_stream: TextIO) -> int:
    mask = SecretMask()
    configure_logging(mask, stream=log_stream)
    try:
        report = trio.run(partial(play_demo, workdir, mask=mask))
    except BaseException as exc:
        # Trio raises what happened inside a nursery (Ctrl-C included) as an
        # exception group, so both are looked for inside groups.
        sys.stdout.flush()  # the transcript first, then the error
        if leaves(exc, KeyboardInterrupt):
            print("\ndemo: interrupted; everything it started is stopped.", file=sys.stderr)
            return 130
        if problems := leaves(exc, Exception):
            print(f"\ndemo: failed: {type(problems[0]).__name__}: {problems[0]}", file=sys.stderr)
            return 1
        raise
    if report.ok:
        print(f"\nAll {len(report.steps)} steps passed in {report.seconds:.1f} s.", flush=True)
        return 0
    failed = report.steps[-1]
    sys.stdout.flush()
    print(f"\ndemo: step {len(report.steps)} ({failed.title}) failed: {failed.summary}", file=sys.stderr)
    return 1

