"""The whole system on loopback: Synapse, fake agents, the bot, scripted users.

The demo, the chaos run, the bot benchmark and the end-to-end tests all need
the same thing: a homeserver, some fake agents, an ``agents.yaml`` naming
them, the bot logged in, and users who are configured for an agent. This
module builds that once::

    async with open_loopback_stack(workdir, agents=2, users=["alice", "bob"]) as stack:
        await stack.start_bot()
        alice = await stack.scripted_user("alice")

The bot runs in this process (``start_bot``) or as a real ``lambda-actors
run`` child process (``start_bot_process``), which is what a SIGKILL test or
the chaos run kills. Either can be given injected faults (``faults={"poison"}``,
chaos runs and tests only).

The homeserver can be taken away and brought back (:func:`stop_homeserver`,
:func:`restart_homeserver`: same directory, same port, same database), as a
homeserver outage looks to the bot. A Synapse the stack starts itself listens
on a port below the kernel's ephemeral range (:func:`stable_ports`), so no
outgoing connection can take its port while it is down.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence
from urllib.parse import urlsplit

import trio

from ..bot.actors.node import run_bot
from ..bot.actors.services import Timing
from ..agent.fake import FakeAgent
from ..bot.config import MatrixSettings, Secret, parse_agents_config
from .homeserver import Homeserver, HomeserverError, RegisteredUser, register_user, start_synapse, stop_synapse
from ..matrix.client import MatrixClient
from ..node.config import NodeConfig
from ..runtime.supervision_config import SupervisionConfig
from .user import ScriptedUser


@dataclass
class LoopbackStack:
    homeserver: Homeserver
    bot_user: RegisteredUser
    agents: list[FakeAgent]
    users: dict[str, RegisteredUser]
    config_path: Path
    data_dir: Path
    nursery: trio.Nursery
    timing: Timing
    supervision: SupervisionConfig | str | Path | None
    supervisor: Any = None
    process: subprocess.Popen[bytes] | None = None
    _user_scopes: list[trio.CancelScope] = field(default_factory=list)
    _stop: trio.Event | None = None
    _stopped: trio.Event | None = None

    @property
    def bot_id(self) -> str:
        return self.bot_user.user_id

    def settings(self) -> MatrixSettings:
        return MatrixSettings(self.homeserver.url, self.bot_user.user_id, password=Secret(self.bot_user.password))

    @property
    def node_id(self) -> str:
        """The bot's node id: its account's localpart, so stacks sharing a
        homeserver never share a DAG status room (the host name would)."""
        return self.bot_user.user_id[1:].split(":", 1)[0]

    # -- the bot in this process ----------------------------------------------------

    async def start_bot(self, *, control_socket: Path | None = None, faults: Iterable[str] = ()) -> Any:
        """Run the bot in this process (in the stack's nursery); return its root supervisor.

        ``faults`` are injected faults (``"poison"``: a room crashes on a text containing ``[[poison]]``).
        """
        agents = parse_agents_config(self.config_path.read_text(), source=str(self.config_path), base_dir=self.config_path.parent)
        self._stop, self._stopped = trio.Event(), trio.Event()
        stop, stopped = self._stop, self._stopped
        # Only passed when asked for, so a bot without the fault hook still runs.
        extra: dict[str, Any] = {"faults": frozenset(faults)} if faults else {}
        extra["node"] = NodeConfig(node_id=self.node_id)

        async def serve(task_status: trio.TaskStatus[Any]) -> None:
            try:
                await run_bot(
                    self.settings(),
                    agents,
                    self.supervision,
                    self.data_dir,
                    stop,
                    timing=self.timing,
                    control_socket=control_socket,
                    task_status=task_status,
                    **extra,
                )
            finally:
                stopped.set()

        self.supervisor = await self.nursery.start(serve)
        return self.supervisor

    async def stop_bot(self) -> None:
        """Stop the in-process bot in order (as SIGTERM would) and wait for it."""
        if self._stop is not None and self._stopped is not None:
            self._stop.set()
            await self._stopped.wait()
            self._stop = self._stopped = None

    # -- the bot as a child process ---------------------------------------------------

    def start_bot_process(
        self,
        supervision_path: Path,
        log_path: Path,
        *,
        control_socket: Path | None = None,
        log_json: bool = False,
        faults: Iterable[str] = (),
        http: str = "off",
        node_config: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``lambda-actors run`` as a child process (its log goes to ``log_path``,
        one JSON object a line with ``log_json``; ``faults`` go to ``LAMBDA_ACTORS_FAULTS``;
        ``http`` is where its API listens, ``node_config`` its node.toml)."""
        if node_config is None:
            node_config = self.config_path.parent / "node.toml"
            node_config.write_text(f'node_id = "{self.node_id}"\n')
        self.process = spawn_node_process(
            self.homeserver.url, self.bot_user, self.config_path, supervision_path, self.data_dir, log_path,
            control_socket=control_socket, log_json=log_json, faults=faults, http=http, node_config=node_config,
        )
        return self.process

    def kill_bot_process(self) -> None:
        """SIGKILL the bot process: no clean-up of any kind runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    async def terminate_bot_process(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the bot process and wait (without blocking Trio) for its exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        # Waiting in a thread: the fake agents in this process must keep
        # answering while the bot finishes its answers and stops.
        try:
            return await trio.to_thread.run_sync(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    # -- the homeserver ---------------------------------------------------------------

    async def stop_homeserver(self) -> None:
        """Take the homeserver away (SIGTERM, as an outage or an upgrade would)."""
        await trio.to_thread.run_sync(stop_homeserver, self.homeserver)

    async def restart_homeserver(self) -> None:
        """Bring it back: same directory, database and port, so every token and room is as before."""
        self.homeserver = await trio.to_thread.run_sync(restart_homeserver, self.homeserver)

    # -- users --------------------------------------------------------------------------

    async def scripted_user(self, name: str, *, sync_timeout_ms: int = 2_000) -> ScriptedUser:
        """A scripted user for ``name`` (one of the stack's users), syncing in the stack's nursery."""
        registered = self.users[name]
        client = MatrixClient(self.homeserver.url, access_token=registered.access_token, user_id=registered.user_id)
        user = ScriptedUser(client, sync_timeout_ms=sync_timeout_ms)
        scope = trio.CancelScope()
        self._user_scopes.append(scope)

        async def run_user(task_status: trio.TaskStatus[None]) -> None:
            # The client closes in the same task, after its sync loop is
            # cancelled, so no request is cut off by a closed client.
            try:
                with scope:
                    await user.run(task_status=task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()

        await self.nursery.start(run_user)
        return user

    async def aclose(self) -> None:
        for scope in self._user_scopes:
            scope.cancel()
        await self.stop_bot()
        if self.process is not None:
            await self.terminate_bot_process()


def spawn_node_process(
    homeserver_url: str,
    account: RegisteredUser,
    config_path: Path,
    supervision_path: Path,
    data_dir: Path,
    log_path: Path,
    *,
    control_socket: Path | None = None,
    log_json: bool = False,
    faults: Iterable[str] = (),
    http: str = "off",
    node_config: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``lambda-actors run`` as a child process logged in as ``account``
    (the bot of one stack, or one node of several: ``loopback/cluster.py``)."""
    env = {
        **os.environ,
        "MATRIX_HOMESERVER": homeserver_url,
        "MATRIX_USER_ID": account.user_id,
        "MATRIX_PASSWORD": account.password,
    }
    env.pop("MATRIX_ACCESS_TOKEN", None)
    env.pop("LAMBDA_ACTORS_FAULTS", None)
    if faults:
        env["LAMBDA_ACTORS_FAULTS"] = ",".join(sorted(faults))
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "lambda_actors.cli", "run", "--config", str(config_path),
         "--supervision", str(supervision_path), "--data-dir", str(data_dir),
         *(["--control-socket", str(control_socket)] if control_socket else []),
         *(["--log-json"] if log_json else []),
         *(["--node-config", str(node_config)] if node_config else []),
         # No HTTP API unless asked: a fixed port would be taken by the
         # previous process (or another bot on this machine) when it is
         # restarted.
         "--http", http],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def agents_yaml(agents: Sequence[FakeAgent], user_agents: dict[str, str], *, removed: Iterable[int] = ()) -> str:
    """An agents.yaml for fake agents ``agent-0``, ``agent-1``, ... and a user → agent map.

    Agents whose numbers are in ``removed`` are left out (their ids stay
    those of their position), as an operator retiring an agent would.
    """
    gone = set(removed)
    lines = ["# Written by lambda_actors.loopback for a loopback run.", "user_agents:"]
    lines += [f'  "{user}": {agent}' for user, agent in user_agents.items()] or ["  {}"]
    lines += ["default_agent: null", "agents:"]
    for n, agent in enumerate(agents):
        if n in gone:
            continue
        lines += [
            f"  - id: agent-{n}",
            f'    label: "Agent {n}"',
            f'    base_url: "{agent.base_url}"',
            f'    workspace_path: "{agent.workspace}"',
        ]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def open_loopback_stack(
    directory: Path,
    *,
    agents: int = 2,
    users: Sequence[str] = ("alice", "bob"),
    homeserver: Homeserver | None = None,
    timing: Timing = Timing(),
    supervision: SupervisionConfig | str | Path | None = None,
    agent_options: dict[str, Any] | None = None,
) -> AsyncIterator[LoopbackStack]:
    """Start fake agents (and a Synapse, unless ``homeserver`` is given), register
    the bot and the users (user ``i`` is served by agent ``i % agents``), and
    write the agents.yaml. The bot itself is started by the caller."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own_homeserver = homeserver is None
    if own_homeserver:
        homeserver = await trio.to_thread.run_sync(start_stable_synapse, directory / "synapse")
    assert homeserver is not None
    try:
        async with trio.open_nursery() as nursery:
            fakes = []
            for n in range(agents):
                fake = FakeAgent(directory / f"agent-{n}", **(agent_options or {}))
                await nursery.start(fake.serve)
                fakes.append(fake)
            suffix = secrets.token_hex(3)

            def register(localpart: str) -> RegisteredUser:
                return register_user(
                    homeserver.url, homeserver.registration_shared_secret, f"{localpart}-{suffix}", secrets.token_urlsafe(12)
                )

            bot_user = await trio.to_thread.run_sync(register, "lambda")
            registered = {name: await trio.to_thread.run_sync(register, name) for name in users}
            config_path = directory / "agents.yaml"
            config_path.write_text(
                agents_yaml(fakes, {u.user_id: f"agent-{i % agents}" for i, u in enumerate(registered.values())})
            )
            stack = LoopbackStack(
                homeserver, bot_user, fakes, registered, config_path, directory / "bot-data", nursery, timing, supervision
            )
            try:
                yield stack
            finally:
                await stack.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if own_homeserver:
            await trio.to_thread.run_sync(stop_synapse, directory / "synapse")


# -- the homeserver, restartable ---------------------------------------------------------


def stable_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Free ports below the kernel's ephemeral range, for servers that go down and come back.

    A port picked by the kernel (port 0) comes from the ephemeral range, the
    one outgoing connections get their local ports from: while a server is
    down, one of the thousands of connections of a run could take its port
    (even connect to itself), and the server could not come back.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(max(1024, low - 12000), low))
    random.Random().shuffle(candidates)
    ports = []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise OSError(f"no {count} free ports below {low} on {host}; free some, or narrow the ephemeral range")


def start_stable_synapse(directory: Path) -> Homeserver:
    """:func:`start_synapse` on a :func:`stable_ports` port (a few tries: the machine is shared)."""
    for attempt in range(3):
        try:
            return start_synapse(directory, port=stable_ports(1)[0])
        except HomeserverError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def stop_homeserver(homeserver: Homeserver) -> None:
    """Stop a Synapse started from ``homeserver.directory`` (blocking; run it in a thread)."""
    stop_synapse(homeserver.directory)


def restart_homeserver(homeserver: Homeserver) -> Homeserver:
    """Start it again from the same directory on the same port (blocking; run it in a thread)."""
    port = urlsplit(homeserver.url).port
    if port is None:
        raise ValueError(f"{homeserver.url} names no port; a restarted Synapse must keep its port")
    return start_synapse(homeserver.directory, port=port)
