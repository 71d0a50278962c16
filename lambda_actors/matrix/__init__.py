"""The Matrix client layer: Trio + httpx for I/O, matrix-nio's sans-I/O parts
for building requests and parsing answers, our own small values for events.

- :class:`MatrixClient` (``client``): every operation the bot needs.
- ``events``: pure parsing of sync answers into frozen event values.
- ``content``: the event contents we send (text, edits, reactions, files, Spaces).
- ``errors``: what can go wrong, typed; ``retry``: the single retry policy.
"""

from .client import BOT_SYNC_FILTER, Download, MatrixClient, Session
from .errors import (
    HomeserverUnavailable,
    InvalidMediaUrl,
    InvalidToken,
    MatrixError,
    MatrixFailure,
    MediaTooLarge,
    RateLimited,
    RemoteMediaUnavailable,
)
from .events import (
    Edit,
    FileMessage,
    Invite,
    Membership,
    OtherEvent,
    Reaction,
    RoomBatch,
    RoomEvent,
    SyncBatch,
    TextMessage,
    parse_events,
    parse_sync,
)
from .retry import RetryPolicy

__all__ = [
    "BOT_SYNC_FILTER",
    "Download",
    "Edit",
    "FileMessage",
    "HomeserverUnavailable",
    "MatrixFailure",
    "InvalidMediaUrl",
    "InvalidToken",
    "Invite",
    "MatrixClient",
    "MatrixError",
    "MediaTooLarge",
    "Membership",
    "OtherEvent",
    "RateLimited",
    "RemoteMediaUnavailable",
    "Reaction",
    "RetryPolicy",
    "RoomBatch",
    "RoomEvent",
    "Session",
    "SyncBatch",
    "TextMessage",
    "parse_events",
    "parse_sync",
]
