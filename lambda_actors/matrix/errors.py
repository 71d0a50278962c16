"""What can go wrong talking to a homeserver, as exceptions a caller can act on.

Every exception of this layer is a :class:`MatrixFailure`, so a caller that
means "the homeserver did not do it" catches one type and nothing slips past.
Below it, two families, because the caller's choices differ:

- :class:`MatrixError`: the homeserver answered and said no. It carries the
  HTTP status and the Matrix ``errcode``. Subclasses name the answers that
  call for a specific reaction: :class:`RateLimited` (wait, then try again),
  :class:`InvalidToken` (stop: no retry can fix it), :class:`MediaTooLarge`,
  :class:`RemoteMediaUnavailable` (another server's file could not be had).
- :class:`HomeserverUnavailable`: no usable answer at all (connection refused,
  timeouts, 5xx) even after the bounded retries in
  :mod:`lambda_actors.matrix.retry`.

And one refused before anything is sent: :class:`InvalidMediaUrl`, a media
link (``mxc://``) that names no file, as a message from anyone may carry.

Messages never contain access tokens or passwords.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

__all__ = [
    "HomeserverUnavailable",
    "InvalidMediaUrl",
    "MatrixFailure",
    "InvalidToken",
    "MatrixError",
    "MediaTooLarge",
    "RateLimited",
    "RemoteMediaUnavailable",
    "error_from_response",
]


class MatrixFailure(Exception):
    """Anything the Matrix layer raises: the homeserver said no
    (:class:`MatrixError`) or gave no usable answer (:class:`HomeserverUnavailable`)."""


class MatrixError(MatrixFailure):
    """The homeserver refused a request: HTTP *status*, Matrix *errcode*, its *message*."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(status, errcode, message)
        self.status = status
        self.errcode = errcode
        self.message = message

    def __str__(self) -> str:
        return f"{self.errcode} (HTTP {self.status}): {self.message}"


class RateLimited(MatrixError):
    """The homeserver asked us to slow down and to wait *retry_after_s* seconds."""

    def __init__(self, status: int, errcode: str, message: str, retry_after_s: float) -> None:
        super().__init__(status, errcode, message)
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{super().__str__()} (retry after {self.retry_after_s:.3f} s)"


class InvalidToken(MatrixError):
    """The access token is unknown, expired or missing: nothing will work until
    the bot logs in again (or is given a valid token).

    ``soft_logout`` is the homeserver's hint that the device still exists and
    a fresh password login with the same ``device_id`` keeps it.
    """

    def __init__(self, status: int, errcode: str, message: str, soft_logout: bool = False) -> None:
        super().__init__(status, errcode, message)
        self.soft_logout = soft_logout

    def __str__(self) -> str:
        return f"no valid access token ({self.errcode}, HTTP {self.status}: {self.message}); log in again or configure a valid token"


class MediaTooLarge(MatrixError):
    """A file is larger than allowed: by the homeserver (upload) or by the
    caller's ``max_bytes`` (download)."""


class RemoteMediaUnavailable(MatrixError):
    """The homeserver answered a download with a Matrix error and a 502 or
    504: it is up, but the server that holds the file failed (Synapse has
    already tried it). Not retried: another try would only wait again."""


class HomeserverUnavailable(MatrixFailure):
    """No usable answer from the homeserver after the allowed retries.

    ``__cause__`` holds the last failure (an ``httpx`` transport error, or a
    :class:`MatrixError` with a 5xx status). ``homeserver`` is the server's
    URL for the operator's log (without credentials or query); the message
    does not repeat it, since it may be shown to users.
    """

    def __init__(self, message: str, *, homeserver: str | None = None) -> None:
        super().__init__(message)
        self.homeserver = homeserver


class InvalidMediaUrl(MatrixFailure, ValueError):
    """A media link is not ``mxc://<server name>/<media id>``: refused before
    any request. The message is written for the user who sent it.

    Also a ``ValueError``: it is a bad argument, whoever chose it.
    """


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> MatrixError:
    """Turn a non-2xx answer into the most specific :class:`MatrixError`.

    Pure, so the mapping is tested without a server. A body that is not a
    Matrix error object (a proxy's HTML page, say) still gives a MatrixError,
    with errcode ``M_UNKNOWN`` and the start of the body as the message.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        errcode = parsed.get("errcode")
        errcode = errcode if isinstance(errcode, str) else "M_UNKNOWN"
        message = parsed.get("error")
        message = message if isinstance(message, str) else ""
    else:
        parsed = {}
        errcode = "M_UNKNOWN"
        message = body[:200].decode("utf-8", "replace")

    if status == 429 or errcode == "M_LIMIT_EXCEEDED":
        return RateLimited(status, errcode, message, _retry_after(parsed, headers))
    if errcode in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        return InvalidToken(status, errcode, message, soft_logout=parsed.get("soft_logout") is True)
    if status == 413 or errcode == "M_TOO_LARGE":
        return MediaTooLarge(status, errcode, message)
    return MatrixError(status, errcode, message)


# When a 429 names no wait at all, waiting a little beats hammering.
_DEFAULT_RETRY_AFTER_S = 1.0


def _retry_after(parsed: Mapping[str, object], headers: Mapping[str, str]) -> float:
    milliseconds = parsed.get("retry_after_ms")
    if isinstance(milliseconds, (int, float)) and not isinstance(milliseconds, bool):
        if math.isfinite(milliseconds) and milliseconds >= 0:
            return milliseconds / 1000
    header = _header(headers, "retry-after")
    if header is not None:
        try:
            seconds = float(header)
        except ValueError:
            seconds = -1.0  # an HTTP date: rare from homeservers; use the default
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return _DEFAULT_RETRY_AFTER_S


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
