"""``lambda-actors run``: the Matrix bot, for operators.

Every way this command ends is one of the exit statuses below, and every
ending but a bug is one or two lines on stderr saying what is wrong and what
to do (never a traceback):

- 0: a clean stop (SIGINT / SIGTERM; answers in progress are told they were
  interrupted);
- 1: the supervision tree gave up (its restarts ran out), or a bug (then a
  traceback follows: please report it);
- 2: a configuration mistake: agents.yaml, supervision.toml, node.toml,
  ``--http`` or the environment (every mistake at once, each with its file
  and entry);
- 3: the homeserver refused the credentials (wrong password or token);
- 4: the homeserver did not answer at start (after ``--homeserver-wait``
  seconds of retries, each logged with the URL);
- 5: a local path is unusable: ``--data-dir``, ``--control-socket``, the
  database, a configuration file that cannot be read, or an ``--http``
  address the API cannot listen on (a port already taken).

The statuses are what a service manager keys on: the systemd unit in
``deploy/`` restarts the bot on failure except after 2, 3 and 5, which no
restart can fix.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import resources
from pathlib import Path

import structlog
import trio

from ..runtime.errors import IntensityExceeded
from ..runtime.groups import leaves
from ..runtime.supervision_config import SupervisionConfig, SupervisionConfigError, parse_supervision_config
from ..node.config import (
    DEFAULT_LISTEN,
    Listen,
    NodeConfig,
    NodeConfigError,
    load_node_config,
    parse_listen,
    unbuilt_mode,
)
from .config import AgentsConfig, ConfigError, MatrixSettings, UnreadableConfig, load_agents_config
from .logs import SecretMask, configure_logging

log = structlog.get_logger("lambda_actors.run")

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_CONFIG = 2
EXIT_CREDENTIALS = 3
EXIT_UNREACHABLE = 4
EXIT_PATH = 5

#: Names the agents.yaml when --config is not given (a service's environment).
CONFIG_ENV = "LAMBDA_ACTORS_CONFIG"
#: Comma-separated faults to inject (chaos runs and tests only, never production).
FAULTS_ENV = "LAMBDA_ACTORS_FAULTS"

#: The supervision policy shipped inside the package.
SHIPPED_SUPERVISION = "lambda_actors/bot/supervision.toml (shipped)"

EPILOG = f"""\
environment:
  MATRIX_HOMESERVER          the homeserver's base URL, e.g. https://matrix.example.org (required)
  MATRIX_USER_ID             the bot's full Matrix id, e.g. @lambda:example.org (required)
  MATRIX_PASSWORD            the bot's password; the bot logs in once and keeps its
                             session in DATA_DIR/session.json (0600), reusing it
  MATRIX_ACCESS_TOKEN        instead of the password: an access token of the bot
  MATRIX_PASSWORD_FILE       a file holding the password (container / systemd secrets)
  MATRIX_ACCESS_TOKEN_FILE   a file holding the access token
  {CONFIG_ENV}       the agents.yaml to use when --config is not given
  Exactly one of the password or the token, directly or as a file.

exit status:
  0  clean stop (SIGINT or SIGTERM)
  1  the supervision tree gave up, or a bug (with a traceback: please report it)
  2  configuration mistake (agents.yaml, supervision.toml, node.toml, --http, environment)
  3  the homeserver refused the credentials
  4  the homeserver did not answer at start
  5  a local path is unusable (data dir, control socket, database, config file, --http port)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"agents.yaml: who talks to which agent (required unless {CONFIG_ENV} names it)",
    )
    parser.add_argument(
        "--supervision",
        type=Path,
        default=None,
        metavar="FILE",
        help="supervision.toml: restart policies (default: the policy shipped with the package)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        metavar="DIR",
        help="the bot's state: database and session, created 0700 (default: ./data)",
    )
    parser.add_argument(
        "--control-socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="serve the control socket (actors, kill, stats, deadletters) at this path, mode 0600",
    )
    parser.add_argument(
        "--homeserver-wait",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how long to retry an unreachable homeserver at start before exiting with 4 (default: %(default)g)",
    )
    parser.add_argument(
        "--node-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="node.toml: the node's HTTP API and its clients (default: node.toml beside the agents.yaml; "
        "a missing default file means all defaults)",
    )
    parser.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help=f"where the HTTP API listens, or 'off' (default: node.toml's [api] listen, else {DEFAULT_LISTEN})",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def _fail(status: int, message: str) -> int:
    print(f"lambda-actors: {message}", file=sys.stderr)
    return status


def load_configuration(
    args: argparse.Namespace,
) -> tuple[AgentsConfig, SupervisionConfig, MatrixSettings, NodeConfig, Listen | None]:
    """agents.yaml, supervision.toml, node.toml, --http and the environment,
    every mistake of all of them at once.

    Raises :class:`ConfigError` (with ``problems``); :class:`UnreadableConfig`
    when every problem is a file that cannot be read.
    """
    problems: list[str] = []
    unreadable = True
    agents = supervision = settings = None
    config_path = args.config
    if config_path is None and os.environ.get(CONFIG_ENV, "").strip():
        config_path = Path(os.environ[CONFIG_ENV].strip())
    if config_path is None:
        problems.append(
            f"no agents.yaml given: pass --config FILE or set {CONFIG_ENV} to its path "
            "(see 'First real run' in the README for a minimal one)"
        )
        unreadable = False
    else:
        try:
            agents = load_agents_config(config_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            unreadable = unreadable and isinstance(exc, UnreadableConfig)
    try:
        supervision = _load_supervision(args.supervision)
    except UnreadableConfig as exc:
        problems.extend(exc.problems)
    except SupervisionConfigError as exc:
        problems.extend(str(exc).splitlines())
        unreadable = False
    try:
        settings = MatrixSettings.from_env()
    except ConfigError as exc:
        problems.extend(exc.problems)
        unreadable = unreadable and isinstance(exc, UnreadableConfig)
    node: NodeConfig | None = None
    try:
        # Beside agents.yaml by default, so it does not depend on the current folder.
        default = config_path.parent / "node.toml" if config_path is not None else None
        node = load_node_config(args.node_config or default, required=args.node_config is not None)
    except NodeConfigError as exc:
        problems.extend(str(exc).splitlines())
        unreadable = False
    # A mode the file may name (SPEC 10) but this version cannot run: refused
    # here, with the configuration mistakes (exit 2), before anything starts.
    refused = unbuilt_mode(node) if node is not None else None
    if refused is not None:
        problems.append(refused)
        unreadable = False
    listen = node.listen if node is not None else None
    if args.http is not None:
        try:
            listen = parse_listen(args.http)
        except ValueError as exc:
            problems.append(f"--http: {exc}")
            unreadable = False
    if problems:
        raise (UnreadableConfig if unreadable else ConfigError).of(problems)
    assert agents is not None and supervision is not None and settings is not None and node is not None
    return agents, supervision, settings, node, listen


def _load_supervision(path: Path | None) -> SupervisionConfig:
    if path is None:
        text = resources.files("lambda_actors.bot").joinpath("supervision.toml").read_text(encoding="utf-8")
        return parse_supervision_config(text, SHIPPED_SUPERVISION)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableConfig(f"{path}: file not found; pass the path of your supervision.toml, or leave --supervision out for the shipped policy") from None
    except IsADirectoryError:
        raise UnreadableConfig(f"{path}: is a folder, not a file; pass the path of your supervision.toml") from None
    except OSError as exc:
        raise UnreadableConfig(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    return parse_supervision_config(text, str(path))


def parse_faults(text: str) -> frozenset[str]:
    """``LAMBDA_ACTORS_FAULTS``: comma-separated fault names, blanks ignored."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def run(args: argparse.Namespace) -> int:
    try:
        agents, supervision, settings, node, listen = load_configuration(args)
    except ConfigError as exc:
        status = EXIT_PATH if isinstance(exc, UnreadableConfig) else EXIT_CONFIG
        what = "a file cannot be read" if status == EXIT_PATH else "configuration error"
        lines = exc.problems
        if len(lines) == 1:
            return _fail(status, f"{what}: {lines[0]}")
        return _fail(status, f"{len(lines)} problems ({what}):\n  " + "\n  ".join(lines))
    # Imported only now: the Matrix stack takes a while to import, and a
    # configuration mistake should be reported at once.
    from .actors.node import StartupError, run_bot

    faults = parse_faults(os.environ.get(FAULTS_ENV, ""))
    mask = SecretMask(s.reveal() for s in (settings.password, settings.access_token) if s is not None)
    configure_logging(mask, level=args.log_level, json=args.log_json)
    if faults:
        log.warning("faults.injected", faults=sorted(faults), advice=f"for chaos runs only: unset {FAULTS_ENV} in production")

    async def main() -> None:
        stop = trio.Event()
        started = False
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        if not started or stop.is_set():
                            # Still starting (e.g. waiting for the homeserver),
                            # or a second signal: stop at once.
                            log.info("bot.stop_now", signal=signal.Signals(signum).name)
                            nursery.cancel_scope.cancel()
                            return
                        log.info("bot.signal", signal=signal.Signals(signum).name)
                        stop.set()

            async def bot(task_status: trio.TaskStatus[object]) -> None:
                await run_bot(
                    settings,
                    agents,
                    supervision,
                    args.data_dir,
                    stop,
                    mask=mask,
                    control_socket=args.control_socket,
                    faults=faults,
                    homeserver_wait=args.homeserver_wait,
                    node=node,
                    http=listen,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            await nursery.start(bot)
            started = True

    try:
        trio.run(main)
    except BaseException as exc:
        startup = leaves(exc, StartupError)
        if startup:
            return _fail(startup[0].status, str(startup[0]))
        gave_up = [e for e in leaves(exc, IntensityExceeded) if "/" not in e.path]
        if gave_up:
            return _fail(
                EXIT_GAVE_UP,
                f"the supervision tree gave up: {gave_up[0]}\n"
                "  the log above shows each failure; a restart is safe (Matrix replays what was not answered)",
            )
        if leaves(exc, KeyboardInterrupt) and not leaves(exc, Exception):
            return EXIT_OK
        # A bug: the traceback is for its report.
        print("lambda-actors: stopped by a bug (traceback below); please report it", file=sys.stderr)
        raise
    return EXIT_OK
