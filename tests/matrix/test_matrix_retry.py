"""Errors, retries and what goes on the wire: the transport's rules.

The homeserver side here is httpx's in-process ``MockTransport`` (pure logic:
which answer leads to which retry), plus one real refused connection.
"""

from __future__ import annotations

import json
import random
import socket

import httpx
import nio
import pytest
import structlog
import trio

from lambda_actors import Backoff
from lambda_actors.matrix import (
    HomeserverUnavailable,
    InvalidMediaUrl,
    InvalidToken,
    MatrixClient,
    MatrixError,
    MatrixFailure,
    MediaTooLarge,
    RateLimited,
    RemoteMediaUnavailable,
    RetryPolicy,
    content,
)
from lambda_actors.matrix import _nio
from lambda_actors.matrix.errors import error_from_response
from lambda_actors.matrix.retry import DEFAULT_BACKOFF, call_with_retries
from lambda_actors.matrix.transport import public_url

TOKEN = "syt_secret_token_value"


def _client(handler, **options) -> MatrixClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return MatrixClient("http://hs.test", access_token=TOKEN, user_id="@bot:hs.test", http=http, **options)


def _error(status: int, errcode: str, **extra) -> httpx.Response:
    return httpx.Response(status, json={"errcode": errcode, "error": "nope", **extra})


# -- error mapping ---------------------------------------------------------------


def test_matrix_retry_errors_map_status_and_errcode_to_types():
    limited = error_from_response(429, {}, b'{"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 2500}')
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 2.5
    from_header = error_from_response(429, {"Retry-After": "7"}, b"{}")
    assert isinstance(from_header, RateLimited) and from_header.retry_after_s == 7
    assert error_from_response(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"").retry_after_s == 1.0
    token = error_from_response(401, {}, b'{"errcode": "M_UNKNOWN_TOKEN", "error": "x", "soft_logout": true}')
    assert isinstance(token, InvalidToken) and token.soft_logout
    assert isinstance(error_from_response(413, {}, b'{"errcode": "M_TOO_LARGE"}'), MediaTooLarge)
    html = error_from_response(502, {}, b"<html>Bad gateway</html>")
    assert (type(html), html.status, html.errcode, html.message) == (MatrixError, 502, "M_UNKNOWN", "<html>Bad gateway</html>")
    odd = error_from_response(400, {}, b'{"errcode": 5, "error": ["x"], "retry_after_ms": "soon"}')
    assert (odd.errcode, odd.message) == ("M_UNKNOWN", "")


def test_matrix_retry_backoff_is_the_runtime_formula():
    # One formula for waits between tries and between restarts: the runtime's Backoff.
    assert RetryPolicy().backoff is DEFAULT_BACKOFF and isinstance(DEFAULT_BACKOFF, Backoff)
    policy = RetryPolicy(backoff=Backoff(min=0.5, max=4.0, jitter=0.25))
    assert [policy.delay_s(n, rng=None) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [policy.delay_s(n, rng=None) for n in range(1, 6)] == [policy.backoff.delay(n) for n in range(1, 6)]
    rng = random.Random(7)
    spread = [policy.delay_s(3, rng) for _ in range(200)]
    assert all(1.5 <= d <= 2.5 for d in spread) and len(set(spread)) > 100


def test_matrix_retry_policy_names_every_mistake_at_once():
    with pytest.raises(ValueError) as invalid:
        RetryPolicy(attempts=0, backoff=Backoff(min=-1.0, jitter=1.5), max_rate_limit_wait_s=-1)
    message = str(invalid.value)
    for part in ("attempts must be at least 1", "backoff.min", "backoff.jitter", "max_rate_limit_wait_s"):
        assert part in message


# -- the retry loop (virtual time) ---------------------------------------------------


async def test_matrix_retry_waits_exactly_what_a_429_asks(autojump_clock):
    answers = [RateLimited(429, "M_LIMIT_EXCEEDED", "", 3.0), RateLimited(429, "M_LIMIT_EXCEEDED", "", 2.0), "ok"]
    times = []

    async def attempt():
        times.append(trio.current_time())
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await call_with_retries(RetryPolicy(attempts=1), attempt, idempotent=False, what="t", homeserver="http://hs") == "ok"
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [3.0, 2.0]


async def test_matrix_retry_transient_failures_back_off_then_give_up(autojump_clock):
    calls = []

    async def attempt():
        calls.append(trio.current_time())
        raise httpx.ReadTimeout("slow")

    policy = RetryPolicy(attempts=4, backoff=Backoff(min=1.0, max=2.0))
    with pytest.raises(HomeserverUnavailable, match="after 4 tries") as gave_up:
        await call_with_retries(policy, attempt, idempotent=True, what="GET x", homeserver="http://hs")
    assert isinstance(gave_up.value.__cause__, httpx.ReadTimeout)
    assert [round(b - a, 6) for a, b in zip(calls, calls[1:])] == [1.0, 2.0, 2.0]


async def test_matrix_retry_ambiguous_failures_of_unsafe_requests_are_not_retried(autojump_clock):
    calls = 0

    async def attempt():
        nonlocal calls
        calls += 1
        raise httpx.ReadError("connection reset")

    with pytest.raises(HomeserverUnavailable, match="not safe to repeat"):
        await call_with_retries(RetryPolicy(), attempt, idempotent=False, what="POST createRoom", homeserver="http://hs")
    assert calls == 1

    async def refused():
        nonlocal calls
        calls += 1
        if calls < 4:
            raise httpx.ConnectError("refused")
        return "created"

    # A connection that was never made cannot have done anything: retried.
    assert await call_with_retries(RetryPolicy(), refused, idempotent=False, what="POST createRoom", homeserver="http://hs") == "created"


def test_matrix_retry_the_token_placeholder_goes_only_where_nio_takes_the_token():
    assert _nio.authenticated(nio.Api.room_leave, "!r:hs").path == "/_matrix/client/v3/rooms/%21r%3Ahs/leave"
    # Api.download takes the token last (nio >= 0.26): a placeholder put first would be the server name.
    with pytest.raises(TypeError, match="Api.download does not take the access token first"):
        _nio.authenticated(nio.Api.download, "hs", "media")


# -- the transport on the wire --------------------------------------------------------------


async def test_matrix_retry_token_travels_in_the_header_and_bodies_are_json():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "/join/" in request.url.path:
            return httpx.Response(200, json={"room_id": "!r:hs.test"})
        return httpx.Response(200, json={"event_id": "$e"})

    async with _client(handler) as client:
        await client.join("!r:hs.test")
        await client.send("!r:hs.test", "m.room.message", content.text("hi"), "t1")
    join, send = seen
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(request.url) and "access_token" not in str(request.url)
        assert request.headers["Content-Type"] == "application/json"
    assert (join.method, join.content) == ("POST", b"{}")
    assert send.method == "PUT" and send.url.path.endswith("/send/m.room.message/t1")
    assert json.loads(send.content) == {"msgtype": "m.text", "body": "hi"}


async def test_matrix_retry_a_send_is_repeated_only_with_its_transaction_id(autojump_clock):
    seen: list[str] = []
    answers = [httpx.Response(502, text="bad gateway"), _error(500, "M_UNKNOWN"), httpx.Response(200, json={"event_id": "$e"})]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return answers.pop(0)

    async with _client(handler) as client:
        assert await client.send("!r:hs.test", "m.room.message", content.text("hi"), "txn-42") == "$e"
    assert len(seen) == 3 and set(seen) == {"/_matrix/client/v3/rooms/!r:hs.test/send/m.room.message/txn-42"}


async def test_matrix_retry_create_room_is_not_repeated_after_a_server_error(autojump_clock):
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return _error(500, "M_UNKNOWN")

    async with _client(handler) as client:
        with pytest.raises(MatrixError) as failed:
            await client.create_room(name="once")
    assert calls == 1 and failed.value.status == 500


async def test_matrix_retry_a_2xx_body_nio_does_not_recognise_is_an_error():
    async with _client(lambda request: httpx.Response(200, json={"no_event_id": True})) as client:
        with pytest.raises(MatrixError, match="not a valid RoomSend response"):
            await client.send("!r:hs.test", "m.room.message", content.text("hi"), "t1")
    async with _client(lambda request: httpx.Response(200, text="<html>")) as client:
        with pytest.raises(MatrixError) as not_json:
            await client.whoami()
    assert not_json.value.errcode == "M_NOT_JSON"


async def test_matrix_retry_unreachable_homeserver_gives_up_with_a_clear_error(autojump_clock):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: connections are refused
    client = MatrixClient(f"http://127.0.0.1:{port}", access_token=TOKEN, retry=RetryPolicy(attempts=3))
    async with client:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(HomeserverUnavailable, match="after 3 tries.*ConnectError"):
                await client.whoami()
    assert [entry["event"] for entry in logs] == ["matrix.retrying", "matrix.retrying"]


async def test_matrix_retry_warnings_name_the_homeserver_without_credentials_or_query(autojump_clock):
    """An operator reading the log sees which homeserver is unreachable, and no secret."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configured = f"http://bob:hunter2@127.0.0.1:{port}/?access_token=zzz#frag"
    client = MatrixClient(configured, access_token=TOKEN, retry=RetryPolicy(attempts=3))
    async with client:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(HomeserverUnavailable) as gave_up:
                await client.whoami()
    shown = f"http://127.0.0.1:{port}"
    assert [entry["homeserver"] for entry in logs] == [shown, shown]
    assert gave_up.value.homeserver == shown
    assert shown in repr(client)
    everything = repr(logs) + str(gave_up.value) + repr(client)
    for secret in ("hunter2", "zzz", "frag", TOKEN):
        assert secret not in everything


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://matrix.example.org", "https://matrix.example.org"),
        ("https://matrix.example.org/", "https://matrix.example.org"),
        ("https://u:p@matrix.example.org:8448/base/?x=1#y", "https://matrix.example.org:8448/base"),
        ("http://[::1]:8008", "http://[::1]:8008"),
    ],
)
def test_matrix_retry_public_url_keeps_only_what_finds_the_server(url: str, shown: str):
    assert public_url(url) == shown


# -- media links from messages: anyone can write one ---------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mxc://localhost",
        "mxc:///abc",
        "mxc://localhost/",
        "https://example.org/cat.png",
        "file:///etc/passwd",
        "",
        "mxc://localhost/a/b",
        "mxc://localhost/..",
        "mxc://localhost/abc?allow_remote=true",
        "mxc://local host/abc",
        "mxc://localhost/abc\n",
        "mxc://user@localhost/abc",
        "MXC://localhost/abc",
        "mxc://" + "a" * 300 + "/abc",
        None,
        42,
    ],
)
async def test_matrix_retry_a_malformed_media_link_is_refused_without_a_request(url):
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=b"data")

    async with _client(handler) as client:
        with pytest.raises(InvalidMediaUrl) as refused:
            await client.download(url, max_bytes=100)
    assert requests == []
    assert isinstance(refused.value, MatrixFailure)
    message = str(refused.value)
    assert "cannot be fetched" in message and message.isprintable() and len(message) < 250


async def test_matrix_retry_remote_media_failing_is_a_matrix_failure_at_once():
    """Synapse answers 502 (a Matrix error) when the server holding a file
    fails, after trying it itself: no retry of ours, one MatrixFailure."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(502, json={"errcode": "M_UNKNOWN", "error": "Failed to fetch remote media"})

    async with _client(handler) as client:
        with pytest.raises(RemoteMediaUnavailable) as failed:
            await client.download("mxc://remote.example/abcDEF_12-3", max_bytes=100)
    assert isinstance(failed.value, MatrixFailure) and calls == 1
    assert failed.value.status == 502 and "Failed to fetch remote media" in str(failed.value)


async def test_matrix_retry_a_proxys_502_on_a_download_is_retried_then_a_matrix_failure(autojump_clock):
    """A 502 that is not a Matrix error is a proxy in front of a homeserver
    that is down: retried like any transient failure."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(502, text="<html>Bad gateway</html>")

    async with _client(handler, retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(HomeserverUnavailable, match="GET media.*after 3 tries") as failed:
            await client.download("mxc://remote.example/abcDEF_12-3", max_bytes=100)
    assert isinstance(failed.value, MatrixFailure) and calls == 3
