"""HTTP to one homeserver: authentication, bodies, timeouts, errors and retries.

Every request of the Matrix layer passes through :meth:`Transport.request`
(or :meth:`Transport.download`), so the rules live here once:

- the access token goes in an ``Authorization: Bearer`` header, never in a URL;
- JSON bodies are sent as bytes with ``Content-Type: application/json``, and
  a POST or PUT without a body sends ``{}`` (Synapse refuses an empty body);
- a non-2xx answer becomes a typed error (:func:`errors.error_from_response`);
- retries follow :mod:`lambda_actors.matrix.retry`, and their warnings name
  the homeserver by :func:`public_url` (no credentials, no query string);
- an invalid token is logged once, clearly, and every later request fails at
  once with the same error instead of hammering the homeserver.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

from .errors import InvalidToken, MatrixError, MediaTooLarge, RemoteMediaUnavailable, error_from_response
from .retry import RetryPolicy, call_with_retries

__all__ = ["Transport", "public_url"]

log = structlog.get_logger("lambda_actors.matrix")

# Reads other than the sync long-poll: generous, since Synapse can stall a
# few seconds under load, but short enough that a dead server is noticed.
DEFAULT_READ_TIMEOUT_S = 60.0
# Added to a long-poll's own timeout to get its read timeout.
LONG_POLL_MARGIN_S = 30.0

_JSON = "application/json"


def public_url(url: str) -> str:
    """*url* as logs may show it: scheme, host, port and path; any
    ``user:password@``, query string or fragment removed."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


class Transport:
    """One homeserver, one identity (the access token, if any).

    *http* may be a shared ``httpx.AsyncClient``; if not given one is made and
    :meth:`aclose` closes it.
    """

    def __init__(
        self,
        homeserver_url: str,
        *,
        access_token: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.homeserver_url = homeserver_url.rstrip("/")
        #: The URL for logs and errors: what an operator needs to find the server, nothing secret.
        self.public_url = public_url(homeserver_url)
        self.retry = retry
        self._token = access_token
        self._token_rejected: InvalidToken | None = None
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(DEFAULT_READ_TIMEOUT_S, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    def __repr__(self) -> str:
        # Never show the token, not even in a traceback's locals.
        return f"Transport({self.public_url!r}, authenticated={self._token is not None})"

    @property
    def access_token(self) -> str | None:
        return self._token

    @access_token.setter
    def access_token(self, token: str | None) -> None:
        self._token = token
        self._token_rejected = None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: str | bytes | None = None,
        *,
        content_type: str = _JSON,
        idempotent: bool,
        authenticated: bool = True,
        read_timeout_s: float | None = None,
        what: str,
    ) -> Any:
        """Send one request (with retries); return its parsed JSON body.

        *path* starts with ``/_matrix/``. *what* names the request in logs.
        Raises :class:`~lambda_actors.matrix.errors.MatrixError` (or a
        subclass) or :class:`~lambda_actors.matrix.errors.HomeserverUnavailable`.
        """
        headers = self._headers(authenticated)
        if body is None and method in ("POST", "PUT"):
            body = "{}"
        if body is not None:
            headers["Content-Type"] = content_type
        content = body.encode() if isinstance(body, str) else body
        url = self.homeserver_url + path
        timeout = self._timeout(read_timeout_s)

        async def attempt() -> Any:
            response = await self._http.request(method, url, content=content, headers=headers, timeout=timeout)
            if response.status_code >= 300:
                raise self._error(response.status_code, response.headers, response.content)
            try:
                return json.loads(response.content)
            except ValueError:
                raise MatrixError(
                    response.status_code, "M_NOT_JSON", f"{what}: the homeserver's answer is not JSON"
                ) from None

        return await call_with_retries(self.retry, attempt, idempotent=idempotent, what=what, homeserver=self.public_url)

    async def download(self, path: str, *, max_bytes: int, what: str) -> tuple[bytes, httpx.Headers]:
        """GET a media file of at most *max_bytes*; return its bytes and the response headers.

        The body is streamed and abandoned as soon as it exceeds *max_bytes*
        (:class:`~lambda_actors.matrix.errors.MediaTooLarge`), so an
        oversized file never sits in memory. A 502/504 that is a Matrix error
        (the homeserver's own answer, not a proxy's page) is
        :class:`~lambda_actors.matrix.errors.RemoteMediaUnavailable`, not retried.
        """
        headers = self._headers(authenticated=True)
        url = self.homeserver_url + path

        async def attempt() -> tuple[bytes, httpx.Headers]:
            async with self._http.stream("GET", url, headers=headers, timeout=self._timeout(None)) as response:
                if response.status_code >= 300:
                    # An error body is small; cap it anyway.
                    body = await _read_capped(response, 65536)
                    error = self._error(response.status_code, response.headers, body)
                    if response.status_code in (502, 504) and _is_matrix_error(body):
                        raise RemoteMediaUnavailable(error.status, error.errcode, error.message)
                    raise error
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(int(declared), max_bytes)
                data = await _read_capped(response, max_bytes + 1)
                if len(data) > max_bytes:
                    raise _too_large(None, max_bytes)
                return data, response.headers

        return await call_with_retries(self.retry, attempt, idempotent=True, what=what, homeserver=self.public_url)

    def _headers(self, authenticated: bool) -> dict[str, str]:
        if not authenticated:
            return {}
        if (rejected := self._token_rejected) is not None:
            # A fresh exception each time: re-raising one instance would keep
            # growing its traceback.
            raise InvalidToken(rejected.status, rejected.errcode, rejected.message, rejected.soft_logout)
        if self._token is None:
            raise InvalidToken(401, "M_MISSING_TOKEN", "this client has no access token: log in first")
        return {"Authorization": f"Bearer {self._token}"}

    def _timeout(self, read_timeout_s: float | None) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=read_timeout_s or DEFAULT_READ_TIMEOUT_S)

    def _error(self, status: int, headers: httpx.Headers, body: bytes) -> MatrixError:
        error = error_from_response(status, headers, body)
        if isinstance(error, InvalidToken) and self._token is not None:
            if self._token_rejected is None:
                log.error(
                    "matrix.invalid_token",
                    homeserver=self.public_url,
                    errcode=error.errcode,
                    soft_logout=error.soft_logout,
                    advice="the access token was rejected; every request will fail until the bot logs in again",
                )
            self._token_rejected = error
        return error


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)


def _is_matrix_error(body: bytes) -> bool:
    """True if *body* is a Matrix error object (so the homeserver itself wrote it)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("errcode"), str)


def _too_large(size: int | None, max_bytes: int) -> MediaTooLarge:
    told = f"{size} bytes" if size is not None else "more than that"
    return MediaTooLarge(413, "M_TOO_LARGE", f"the file is larger than the {max_bytes}-byte limit ({told})")
