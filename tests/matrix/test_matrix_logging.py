"""No access token or password ever reaches a log line.

Everything that logs is captured while real Matrix traffic runs: stdlib
logging at DEBUG (httpx, httpcore, nio and the rest) and structlog's output,
rendered as it would be in production. Synapse's own log is checked too: it
records every request line, so a token in a URL would show up there.
"""

from __future__ import annotations

import io
import logging
import socket

import pytest
import structlog

from lambda_actors.matrix import HomeserverUnavailable, InvalidToken, MatrixClient, RetryPolicy, content
from lambda_actors.runtime.backoff import Backoff


@pytest.fixture
def all_logs():
    """Every log line written during the test, as one string (call it at the end)."""
    stdlib = io.StringIO()
    handler = logging.StreamHandler(stdlib)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    noisy = [logging.getLogger(name) for name in ("httpx", "httpcore", "nio", "nio.responses", "h11", "hpack")]
    saved = [(root.level, root.handlers[:])] + [(logger.level, None) for logger in noisy]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for logger in noisy:
        logger.setLevel(logging.DEBUG)

    rendered = io.StringIO()
    structlog_config = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(rendered),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield lambda: stdlib.getvalue() + rendered.getvalue()
    finally:
        structlog.configure(**structlog_config)
        root.removeHandler(handler)
        root.setLevel(saved[0][0])
        for logger, (level, _) in zip(noisy, saved[1:]):
            logger.setLevel(level)


async def test_matrix_logging_no_token_or_password_in_any_log_line(all_logs, synapse, matrix_user, matrix_client):
    alice_user, bot_user = matrix_user("alice"), matrix_user("bot")
    alice = matrix_client(alice_user)
    bot = matrix_client(bot_user)
    session = await bot.login(bot_user.user_id, bot_user.password, device_id="LEAKCHECK")
    await bot.whoami()
    filter_id = await bot.create_filter()
    since = (await bot.sync(timeout_ms=0, filter_id=filter_id))["next_batch"]

    space_id = await bot.create_space("Lambda — Alice", invite=[alice_user.user_id])
    room_id = await bot.create_room(name="Chat 1", invite=[alice_user.user_id])
    await bot.add_to_space(space_id, room_id)
    await alice.join(room_id)
    await bot.put_state(room_id, "cis.lambda.binding", {"agent": "agent-0"})
    assert await bot.get_state(room_id, "cis.lambda.binding") == {"agent": "agent-0"}
    first = await bot.send(room_id, "m.room.message", content.text("working", msgtype="m.notice"), "leak-1")
    await bot.edit(room_id, first, content.text("done", msgtype="m.notice"), "leak-2")
    await bot.typing(room_id, True)
    mxc = await alice.upload(b"secret-free bytes", "text/plain", "notes.txt")
    await alice.send(room_id, "m.room.message", content.file_message(mxc, "notes.txt", mimetype="text/plain"), "leak-3")
    body = await bot.sync(since, timeout_ms=2_000, filter_id=filter_id)
    assert body["rooms"]["join"]
    assert (await bot.download(mxc, max_bytes=1_000)).data == b"secret-free bytes"
    await bot.messages(room_id, limit=5)
    await bot.joined_members(room_id)

    # A token that was valid and is no longer: rejected, and logged (once) without itself.
    await bot.logout()
    stale = MatrixClient(synapse.url, access_token=session.access_token)
    async with stale:
        with pytest.raises(InvalidToken):
            await stale.whoami()
    # Retries against a dead homeserver log each failure, again without the token.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = MatrixClient(f"http://127.0.0.1:{dead_port}", access_token=alice_user.access_token, retry=RetryPolicy(attempts=2, backoff=Backoff(min=0.01)))
    async with dead:
        with pytest.raises(HomeserverUnavailable):
            await dead.whoami()

    logs = all_logs()
    # The capture works: the traffic above is in it.
    assert "HTTP Request: PUT" in logs and "matrix.invalid_token" in logs and "matrix.retrying" in logs
    synapse_log = synapse.log_file.read_text()
    assert "/_matrix/client/v3/sync" in synapse_log
    secrets = {
        "alice token": alice_user.access_token,
        "bot token": bot_user.access_token,
        "bot session token": session.access_token,
        "alice password": alice_user.password,
        "bot password": bot_user.password,
    }
    leaked = {name for name, secret in secrets.items() if secret in logs}
    assert not leaked, f"secrets in our logs: {sorted(leaked)}"
    leaked_to_synapse = {name for name, secret in secrets.items() if secret in synapse_log}
    assert not leaked_to_synapse, f"secrets in Synapse's request log: {sorted(leaked_to_synapse)}"
