"""What an API client may ask for: the approval-request body, checked.

A trust boundary in the style of ``agent/protocol.py``: :func:`parse` never
raises; it returns the request or every problem at once, each with the JSON
path of its field and what to send instead (the API answers 400 with the
first and lists them all in the message).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..bot.config import is_matrix_user_id

__all__ = ["ApprovalRequest", "Problem", "parse"]

MAX_REQUEST_ID = 128
MAX_ACTION = 1000
MAX_DETAILS = 16 * 1024
MIN_TIMEOUT_S, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S = 10, 604_800, 600
_FIELDS = ("request_id", "approver", "agent_id", "action", "details", "timeout_s", "callback_url")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


@dataclass(frozen=True)
class ApprovalRequest:
    approver: str
    agent_id: str
    action: str
    request_id: str | None = None
    details: str | dict[str, Any] | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    callback_url: str | None = None

    @property
    def fingerprint(self) -> str:
        """The request's content, hashed: a repeat with the same ``request_id``
        is the same request only if this matches."""
        canonical = json.dumps(
            [self.approver, self.agent_id, self.action, self.details, self.timeout_s, self.callback_url],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse(body: dict[str, Any]) -> ApprovalRequest | list[Problem]:
    problems: list[Problem] = []
    unknown_fields(body, _FIELDS, problems)
    request_id = text_field(body, "request_id", problems, required=False, limit=MAX_REQUEST_ID)
    approver = user_field(body, "approver", problems)
    agent_id = text_field(body, "agent_id", problems, required=True, limit=255)
    action = text_field(body, "action", problems, required=True, limit=MAX_ACTION)
    details = body.get("details")
    if details is not None:
        if not isinstance(details, (str, dict)):
            problems.append(Problem("details", "must be a string or a JSON object"))
            details = None
        elif len(json.dumps(details, ensure_ascii=False).encode()) > MAX_DETAILS:
            problems.append(Problem("details", f"is over {MAX_DETAILS // 1024} KiB; send less"))
            details = None
    timeout_s = timeout_field(body, problems)
    callback_url = callback_field(body, problems)
    if problems or approver is None or agent_id is None or action is None:
        return problems
    return ApprovalRequest(approver, agent_id, action, request_id, details, timeout_s, callback_url)


# -- field checks shared with the other request bodies (agent registration) -------------


def unknown_fields(body: dict[str, Any], fields: tuple[str, ...], problems: list[Problem]) -> None:
    for key in body:
        if key not in fields:
            problems.append(Problem(str(key), f"unknown field; the fields are {', '.join(fields)}"))


def text_field(body: dict[str, Any], name: str, problems: list[Problem], *, required: bool, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            problems.append(Problem(name, f"missing; {name} is required"))
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(Problem(name, "must be a non-empty string"))
        return None
    if len(value) > limit:
        problems.append(Problem(name, f"is {len(value)} characters; at most {limit}"))
        return None
    return value


def user_field(body: dict[str, Any], name: str, problems: list[Problem]) -> str | None:
    """A required Matrix user id."""
    value = text_field(body, name, problems, required=True, limit=255)
    if value is not None and not is_matrix_user_id(value):
        problems.append(Problem(name, "must be a Matrix user id such as @alice:example.org"))
        return None
    return value


def timeout_field(body: dict[str, Any], problems: list[Problem]) -> int:
    timeout_s = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or not MIN_TIMEOUT_S <= timeout_s <= MAX_TIMEOUT_S:
        problems.append(Problem("timeout_s", f"must be a whole number of seconds from {MIN_TIMEOUT_S} to {MAX_TIMEOUT_S}"))
        return DEFAULT_TIMEOUT_S
    return timeout_s


def callback_field(body: dict[str, Any], problems: list[Problem]) -> str | None:
    callback_url = text_field(body, "callback_url", problems, required=False, limit=2048)
    if callback_url is not None:
        try:
            parts = urlsplit(callback_url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            problems.append(Problem("callback_url", "must be an http or https URL"))
            return None
    return callback_url
