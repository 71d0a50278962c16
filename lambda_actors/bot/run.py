"""``lambda-actors run``: the Matrix bot, for operators.

Exit status: 0 after a clean stop (SIGINT / SIGTERM), 2 for a broken
configuration (one message naming the file, the entry and what is wrong),
3 when the homeserver refuses the bot's credentials.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from ..matrix.errors import InvalidToken
from ..runtime.supervision_config import SupervisionConfigError, load_supervision_config
from .config import ConfigError, MatrixSettings, load_agents_config
from .logs import SecretMask, configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config/agents.yaml"), help="agents.yaml (default: %(default)s)")
    parser.add_argument(
        "--supervision", type=Path, default=Path("supervision.toml"), help="supervision.toml (default: %(default)s)"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the SQLite state lives (default: %(default)s)")
    parser.add_argument(
        "--control-socket", type=Path, default=None, help="serve the control socket (actors, kill, stats) at this path"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")


def run(args: argparse.Namespace) -> int:
    from .actors.node import run_bot

    try:
        agents = load_agents_config(args.config)
        supervision = load_supervision_config(args.supervision)
        settings = MatrixSettings.from_env()
    except (ConfigError, SupervisionConfigError) as exc:
        print(f"lambda-actors: configuration error: {exc}", file=sys.stderr)
        return 2
    mask = SecretMask(s.reveal() for s in (settings.password, settings.access_token) if s is not None)
    configure_logging(mask, level=args.log_level, json=args.log_json)

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stop.set()
                        return

            nursery.start_soon(stop_on_signal)
            await run_bot(settings, agents, supervision, args.data_dir, stop, mask=mask, control_socket=args.control_socket)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except InvalidToken as exc:
        print(
            f"lambda-actors: the homeserver refused the bot's credentials ({exc.errcode}). "
            "Check MATRIX_ACCESS_TOKEN / MATRIX_PASSWORD and MATRIX_USER_ID.",
            file=sys.stderr,
        )
        return 3
    return 0
