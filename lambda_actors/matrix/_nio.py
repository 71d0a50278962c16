"""How we use matrix-nio's sans-I/O parts: its request builders and response parsers.

nio's ``Api`` builders put the access token in the query string; URLs end up
in logs (httpx logs every request line), so we call the builders with a
placeholder token and cut the ``access_token`` parameter out: the real token
never enters a URL and only travels in the ``Authorization`` header.

nio's response parsers log every body they validate at DEBUG (a login body
holds an access token) and a WARNING on a schema mismatch; we silence that
logger and raise a :class:`~lambda_actors.matrix.errors.MatrixError` instead,
which says what was expected.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import nio.responses

from .errors import MatrixError

_PLACEHOLDER_TOKEN = "placeholder"


class Request(NamedTuple):
    method: str
    path: str
    body: str | None


def build(builder: Callable[..., tuple[Any, ...]], *args: Any, **kwargs: Any) -> Request:
    """Call a ``nio.Api`` builder; return its request without any access token in the path.

    Builders that take a token take it first: pass the rest of their
    arguments here, without it.
    """
    built = builder(*args, **kwargs)
    method, path = built[0], built[1]
    body = built[2] if len(built) > 2 else None
    return Request(method, strip_token(path), body)


def authenticated(builder: Callable[..., tuple[Any, ...]], *args: Any, **kwargs: Any) -> Request:
    """:func:`build` for builders whose first parameter is the access token.

    Checked, because nio moves it between releases (0.26 made it a keyword at
    the end of ``Api.download``): a placeholder passed in the wrong place
    would silently shift every argument.
    """
    if not _token_first(builder):
        raise TypeError(f"nio.Api.{builder.__name__} does not take the access token first: use _nio.build()")
    return build(builder, _PLACEHOLDER_TOKEN, *args, **kwargs)


@functools.cache
def _token_first(builder: Callable[..., Any]) -> bool:
    return next(iter(inspect.signature(builder).parameters), None) == "access_token"


def strip_token(path: str) -> str:
    """Remove ``access_token`` from *path*'s query, keeping every other parameter."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"]
    return parts.path + (f"?{urlencode(kept)}" if kept else "")


R = TypeVar("R")


def parse(response_class: type[R], body: Any, *args: Any, status: int = 200) -> R:
    """Parse a successful answer with nio's *response_class*; raise if it is not one.

    nio returns an error object instead of raising when a body does not match
    its schema; a 2xx body that does not match is a homeserver we do not
    understand, which the caller must hear about.
    """
    result = response_class.from_dict(body if isinstance(body, dict) else {}, *args)  # type: ignore[attr-defined]  # every nio Response class has from_dict; the base is untyped
    if isinstance(result, nio.responses.ErrorResponse):
        errcode = result.status_code if isinstance(result.status_code, str) else "M_BAD_JSON"
        raise MatrixError(
            status,
            errcode,
            f"the homeserver's answer is not a valid {response_class.__name__.removesuffix('Response')} response",
        )
    return result


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


# nio.responses logs whole response bodies (tokens included) at DEBUG.
logging.getLogger("nio.responses").addFilter(_DropAll())
