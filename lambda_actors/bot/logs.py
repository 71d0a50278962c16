"""Logging for the bot process: structlog everywhere, secrets nowhere.

Every line goes through structlog (the standard library's loggers, httpx's
and nio's among them, are routed into it), and the last processor before
rendering masks every secret the process knows (its access token, its
password): a secret that reaches a log line by any road comes out as
``***``. That is the second line of defence; the first is that no code logs
them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, MutableMapping, TextIO

import structlog

from ..runtime.log import add_actor_path

MASK = "***"


class SecretMask:
    """structlog processor replacing every known secret in every value with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        # Short strings would mask ordinary words; real tokens are long.
        if secret and len(secret) >= 6 and secret not in self._secrets:
            self._secrets.append(secret)

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self._mask(repr(value)) if self._secrets else value

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self._secrets:
            for key, value in list(event_dict.items()):
                event_dict[key] = self._mask(value)
        return event_dict


def configure_logging(mask: SecretMask, *, level: str = "INFO", json: bool = False, stream: TextIO = sys.stderr) -> None:
    """Route all logging through structlog with ``mask`` applied last."""
    # Plain tracebacks: with rich installed, structlog's console renderer would
    # print rich ones with local variables, and a local may hold a secret.
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_actor_path,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, mask, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; keep it to warnings.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
