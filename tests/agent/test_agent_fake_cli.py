"""``lambda-actors fake-agent`` as operators run it: a process printing its URL."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from lambda_actors.agent import protocol as p
from lambda_actors.agent.client import open_agent_connection

COMMAND = str(Path(sys.executable).with_name("lambda-actors"))
HANG = 30


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


async def test_agent_fake_cli_serves_prints_its_url_and_stops_on_sigterm(tmp_path):
    workspace = tmp_path / "ws"
    command = [COMMAND, "fake-agent", "--port", "0", "--workspace", str(workspace),
               "--prefix", "/agent_0/", "--misbehave", "tool", "--misbehave", "file:out.txt"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(HANG):
            url = (await read_line(process.stdout)).strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/agent_0/")
            async with open_agent_connection(url, 21) as conn:
                await conn.send_user_message("hello process")
                frames = []
                while not frames or not isinstance(frames[-1], p.End):
                    frames.append(await conn.receive())
            assert isinstance(frames[0], p.ToolCallChunk)
            assert p.SendFile("outbox/out.txt") in frames
            assert (workspace / "outbox" / "out.txt").is_file()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()


def test_agent_fake_cli_refuses_an_unknown_mode_with_exit_2(tmp_path):
    result = subprocess.run(
        [COMMAND, "fake-agent", "--workspace", str(tmp_path), "--misbehave", "explode"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "unknown mode 'explode'" in result.stderr and "no-status" in result.stderr
