"""The node as a child process (``lambda-actors run``) with its HTTP API on a
free port, for end-to-end tests of the API (plain helpers, not fixtures)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from harness.bot import TEST_SUPERVISION
from lambda_actors.loopback.homeserver import free_port


class NodeProcess:
    """The stack's bot run as a process with ``node_toml`` and its API on ``url``."""

    def __init__(self, stack, tmp_path: Path, node_toml: str) -> None:
        self.stack = stack
        self.node_toml = tmp_path / "node.toml"
        self.node_toml.write_text(node_toml)
        self.supervision = tmp_path / "supervision.toml"
        self.supervision.write_text(TEST_SUPERVISION)
        self.log = tmp_path / "bot.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, *, healthy: bool = True) -> None:
        """Start the process (again) and return once ``/healthz`` answers 200
        (with ``healthy=False``: answers at all, as a degraded node does)."""
        self.stack.start_bot_process(self.supervision, self.log, http=f"127.0.0.1:{self.port}", node_config=self.node_toml)
        async with httpx.AsyncClient() as client:
            with trio.fail_after(60):
                while True:
                    try:
                        status: int | None = (await client.get(f"{self.url}/healthz")).status_code
                    except httpx.TransportError:
                        status = None  # not listening yet
                    if status == 200 or (status is not None and not healthy):
                        return
                    await trio.sleep(0.1)
