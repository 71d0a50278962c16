"""No access token or password in any log line while the bot does its work.

The bot's logging is configured as in production, but *without* the secret
mask, so that this test sees what the code itself logs: the mask is the
second line of defence, and this checks the first.
"""

import io
import logging
import sqlite3

import pytest
import structlog
from harness.chat import onboard

from lambda_actors.bot.logs import SecretMask, configure_logging


@pytest.fixture
def captured_logs():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    configure_logging(SecretMask(), level="DEBUG", stream=stream)
    for name in ("httpx", "httpcore", "hpack", "nio"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.handlers[:], level, config = saved
    root.setLevel(level)
    structlog.configure(**config)


async def test_no_secret_reaches_a_log_line(captured_logs, bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(chat1, "hello"))
    await alice.answer(await alice.send_file(chat1, "a.txt", b"abc"))
    await alice.answer(await alice.say(chat1, "with a file [[file:r.txt]]"))
    await alice.answer(await alice.say(chat1, "broken [[drop]]"))
    await bot_stack.stop_bot()  # a login again, and a shutdown
    await bot_stack.start_bot()
    await alice.answer(await alice.say(chat1, "after restart"))
    logs = captured_logs.getvalue()
    assert "connection.delivered" in logs  # the capture really saw the bot's lines
    database = bot_stack.homeserver.directory / "homeserver.db"
    tokens = [t for (t,) in sqlite3.connect(database).execute("SELECT token FROM access_tokens")]
    secrets = [*tokens, bot_stack.bot_user.password, *(u.password for u in bot_stack.users.values())]
    assert len(tokens) >= 4
    leaked = [s for s in secrets if s in logs]
    assert leaked == []


def test_the_mask_hides_a_secret_that_reaches_a_log_line():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    try:
        configure_logging(SecretMask(["s3cret-token-value"]), stream=stream)
        structlog.get_logger("test").warning("oops", detail="Bearer s3cret-token-value", other=["s3cret-token-value"])
        logging.getLogger("stdlib").warning("url was https://x/?access_token=s3cret-token-value")
    finally:
        root.handlers[:], level, config = saved
        root.setLevel(level)
        structlog.configure(**config)
    assert "s3cret-token-value" not in stream.getvalue()
    assert stream.getvalue().count("***") == 3
