"""Event contents we send, built in one place so every sender agrees on their shape.

Pure functions returning plain dicts, ready for
:meth:`~lambda_actors.matrix.client.MatrixClient.send`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["edit", "file_message", "msgtype_for", "reaction", "space_child", "space_parent", "text"]


def text(body: str, *, msgtype: str = "m.text", html: str | None = None) -> dict[str, Any]:
    """A text message; ``msgtype="m.notice"`` for the bot's own output (clients
    and other bots treat notices as automated), ``html`` for rich text."""
    content: dict[str, Any] = {"msgtype": msgtype, "body": body}
    if html is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    return content


def edit(target_event_id: str, new_content: Mapping[str, Any]) -> dict[str, Any]:
    """Replace *target_event_id*'s content with *new_content* (``m.replace``).

    Clients that understand edits show ``m.new_content``; the outer body,
    prefixed with ``*`` by convention, is the fallback for those that do not.
    """
    fallback = dict(new_content)
    if isinstance(fallback.get("body"), str):
        fallback["body"] = "* " + fallback["body"]
    fallback.pop("formatted_body", None)
    fallback.pop("format", None)
    return {
        **fallback,
        "m.new_content": dict(new_content),
        "m.relates_to": {"rel_type": "m.replace", "event_id": target_event_id},
    }


def reaction(target_event_id: str, key: str) -> dict[str, Any]:
    """An ``m.reaction`` content: *key* (an emoji, usually) on *target_event_id*."""
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": target_event_id, "key": key}}


def msgtype_for(mimetype: str | None) -> str:
    """``m.image`` / ``m.audio`` / ``m.video`` by MIME type; ``m.file`` otherwise."""
    major = (mimetype or "").split("/", 1)[0]
    return {"image": "m.image", "audio": "m.audio", "video": "m.video"}.get(major, "m.file")


def file_message(
    url: str,
    filename: str,
    *,
    mimetype: str | None = None,
    size: int | None = None,
    msgtype: str | None = None,
) -> dict[str, Any]:
    """A file message for an uploaded ``mxc://`` *url*; the msgtype follows the
    MIME type unless given."""
    info: dict[str, Any] = {}
    if mimetype is not None:
        info["mimetype"] = mimetype
    if size is not None:
        info["size"] = size
    return {
        "msgtype": msgtype or msgtype_for(mimetype),
        "body": filename,
        "filename": filename,
        "url": url,
        "info": info,
    }


def space_child(via: Sequence[str], *, suggested: bool = False, order: str | None = None) -> dict[str, Any]:
    """``m.space.child`` content (state key: the child room id). *via* names
    servers to join through; an empty *via* would remove the child."""
    content: dict[str, Any] = {"via": list(via), "suggested": suggested}
    if order is not None:
        content["order"] = order
    return content


def space_parent(via: Sequence[str], *, canonical: bool = True) -> dict[str, Any]:
    """``m.space.parent`` content (state key: the Space's room id)."""
    return {"via": list(via), "canonical": canonical}
