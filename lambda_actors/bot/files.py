"""Files between users and agents, kept strictly inside the agent's workspace.

Both directions cross a trust boundary. A user's file name is chosen by
whoever sent it, so it is reduced to a safe base name before it touches the
disk, and it is created with ``O_EXCL`` so two uploads can never overwrite each
other (or anything else). A path the agent asks us to send
(``AGENT_EVENT_SEND_FILE``) is chosen by a program that may be buggy or
hostile, and the bot can read far more of the host than the agent can, so
the path must resolve inside that agent's ``workspace_path`` after every
symlink, name a regular file, and stay under the size cap; the bytes are then
read through a descriptor opened with ``O_NOFOLLOW`` and checked with
``fstat`` against what was resolved, so swapping the file for a symlink
between the check and the read gains nothing.

Refusals raise :class:`UnsafeAgentFile`, whose message is written for the
user and never shows a host path outside the workspace.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "AGENT_WORKSPACE",
    "INCOMING_DIR",
    "ResolvedFile",
    "UnsafeAgentFile",
    "incoming_path",
    "msgtype_for",
    "read_agent_file",
    "resolve_agent_file",
    "safe_file_name",
    "save_incoming",
]

#: Where an agent sees its own workspace, inside its container.
AGENT_WORKSPACE = PurePosixPath("/workspace")
#: Folder of the workspace that receives the user's files.
INCOMING_DIR = "incoming"

# Linux allows 255 bytes per name; the stamp, '-' and " (NNNN)" must fit too.
_MAX_NAME_BYTES = 150
_MAX_EXT_BYTES = 16
_MAX_STAMP_LEN = 64
_MAX_CLASHES = 10_000
# Longer than PATH_MAX, or a name longer than NAME_MAX, cannot exist anyway;
# refusing early keeps the messages clear and the work bounded.
_MAX_PATH_BYTES = 4096
_MAX_COMPONENT_BYTES = 255
# Categories removed from user file names: controls (including NUL and
# newlines), format characters (bidi overrides that disguise an extension),
# lone surrogates (unencodable) and line/paragraph separators.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class UnsafeAgentFile(Exception):
    """A file cannot be moved between the user and the agent; the message says why.

    The message is meant for the user as is: it names the path the agent
    gave (shortened) and the reason, never a host path.
    """


@dataclass(frozen=True)
class ResolvedFile:
    """An agent's file, checked and ready to upload.

    ``path`` is the real path on this host (for the bot only; never show it),
    ``relative`` the path inside the workspace, ``name`` the file name to show
    the user. ``device``/``inode`` pin the exact file that was checked, so
    :func:`read_agent_file` can refuse a file swapped in afterwards.
    """

    path: Path
    relative: str
    name: str
    size: int
    mimetype: str
    msgtype: str
    device: int
    inode: int
    max_bytes: int


# --- incoming: user -> agent ------------------------------------------------------


def safe_file_name(filename: str) -> str:
    """Reduce a user-supplied file name to a harmless base name.

    Directories are dropped (both '/' and '\\'), control and invisible
    formatting characters removed, leading dots and surrounding spaces
    stripped (no hidden files, no '..'), and the name shortened to a fixed
    number of UTF-8 bytes, keeping a short extension. Never empty.
    """
    name = unicodedata.normalize("NFC", filename)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    name = name.strip().lstrip(".").strip()
    # Trailing dots and spaces vanish on some file systems and confuse others.
    name = name.rstrip(". ")
    if not name:
        return "file"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > _MAX_EXT_BYTES or not ext.strip():
        stem, ext = name, ""
    else:
        ext = "." + ext
    return _cut_utf8(stem, _MAX_NAME_BYTES - len(ext.encode())).rstrip() + ext


def incoming_path(workspace: Path, filename: str, stamp: str) -> Path:
    """Where a user's file would be saved now: the first free candidate.

    ``<workspace>/incoming/<stamp>-<safe name>``, or with `` (1)``, `` (2)``...
    before the extension when that name is taken. Only a preview:
    :func:`save_incoming` claims the name atomically.
    """
    folder = Path(workspace) / INCOMING_DIR
    for name in _candidates(filename, stamp):
        if not os.path.lexists(folder / name):
            return folder / name
    raise UnsafeAgentFile(f"could not find a free name for {_show(filename)} in the agent's incoming folder")


def save_incoming(workspace: Path, filename: str, data: bytes, stamp: str) -> str:
    """Save a user's file into the agent's workspace; return its relative path.

    The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` inside an
    ``incoming`` folder opened without following symlinks, so an existing
    file (or a symlink the agent planted) is never written through: on a
    clash the next `` (n)`` name is tried. The relative path (e.g.
    ``incoming/20240101-120000-report (1).pdf``) is what the agent gets.
    """
    workspace = Path(workspace)
    folder = workspace / INCOMING_DIR
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except FileNotFoundError:
        raise UnsafeAgentFile("the agent's workspace is not available, so the file was not saved") from None
    except OSError:
        pass  # e.g. a file or dangling symlink called "incoming": refused just below
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise UnsafeAgentFile(
            "the agent's incoming folder is not a plain folder (perhaps a symlink), so the file was not saved"
        ) from None
    try:
        for name in _candidates(filename, stamp):
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except FileExistsError:
                continue
            try:
                _write_all(fd, data)
            except BaseException:
                os.close(fd)
                os.unlink(name, dir_fd=dir_fd)
                raise
            os.close(fd)
            return f"{INCOMING_DIR}/{name}"
    finally:
        os.close(dir_fd)
    raise UnsafeAgentFile(f"could not find a free name for {_show(filename)} in the agent's incoming folder")


def _candidates(filename: str, stamp: str) -> Iterator[str]:
    if not stamp or len(stamp) > _MAX_STAMP_LEN or safe_file_name(stamp) != stamp or "/" in stamp:
        raise ValueError(f"stamp {stamp!r} must be a short plain name such as 20240101-120000")
    safe = safe_file_name(filename)
    stem, dot, ext = safe.rpartition(".")
    if not dot or not stem:
        stem, ext = safe, ""
    else:
        ext = "." + ext
    yield f"{stamp}-{safe}"
    for n in range(1, _MAX_CLASHES):
        yield f"{stamp}-{stem} ({n}){ext}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --- outgoing: agent -> user ------------------------------------------------------


def msgtype_for(mimetype: str) -> str:
    """The Matrix message type for a file of this MIME type."""
    major = mimetype.split("/", 1)[0].lower()
    return {"image": "m.image", "audio": "m.audio", "video": "m.video"}.get(major, "m.file")


def resolve_agent_file(workspace_path: Path, requested: str, max_bytes: int) -> ResolvedFile:
    """Check a path an agent asked to send, and describe the file it names.

    Accepted forms: relative to the workspace (``out/report.pdf``), absolute
    under ``/workspace/`` (the agent's own view), or absolute under the bot's
    ``workspace_path``. Nothing is decoded: ``%2e%2e`` is a literal name. The
    path must have no ``..`` part, must still be inside the workspace once
    every symlink is resolved, and must name a regular file of at most
    ``max_bytes``. Raises :class:`UnsafeAgentFile` otherwise.
    """
    shown = _show(requested)
    if not isinstance(requested, str) or not requested.strip():
        raise UnsafeAgentFile("the agent asked to send a file but gave no path")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in requested):
        raise UnsafeAgentFile(f"the agent asked to send {shown}, whose path holds control characters; refused")
    encoded = requested.encode("utf-8")
    if len(encoded) > _MAX_PATH_BYTES or any(len(p.encode()) > _MAX_COMPONENT_BYTES for p in requested.split("/")):
        raise UnsafeAgentFile(f"the agent asked to send {shown}, whose path is too long; refused")
    if "\\" in requested:
        raise UnsafeAgentFile(f"the agent asked to send {shown}; backslashes are not allowed in file paths")

    workspace = Path(workspace_path)
    parts = _inside_parts(workspace, requested, shown)
    if ".." in parts:
        raise UnsafeAgentFile(f"the agent asked to send {shown}; paths with '..' are not allowed")
    if not parts:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which is its whole workspace, not a file")

    try:
        root = Path(os.path.realpath(workspace, strict=True))
    except OSError:
        raise UnsafeAgentFile("the agent's workspace is not available, so its file cannot be sent") from None
    # Resolve every symlink first and check containment before touching the
    # target: whether something exists outside the workspace is none of the
    # agent's business, so a link pointing out is refused the same way
    # whether or not its target exists.
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if real == root:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which is its whole workspace, not a file")
    if not real.is_relative_to(root):
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which points outside its workspace; refused")
    try:
        info = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, but there is no such file in its workspace") from None
    except OSError:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which cannot be read") from None
    _check_file(info, shown, max_bytes)
    name = parts[-1]
    mimetype = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return ResolvedFile(
        path=real,
        relative=real.relative_to(root).as_posix(),
        name=name,
        size=info.st_size,
        mimetype=mimetype,
        msgtype=msgtype_for(mimetype),
        device=info.st_dev,
        inode=info.st_ino,
        max_bytes=max_bytes,
    )


def read_agent_file(resolved: ResolvedFile) -> bytes:
    """Read a resolved file's bytes, refusing anything but that very file.

    Opened with ``O_NOFOLLOW`` (a symlink swapped in fails) and
    ``O_NONBLOCK`` (a FIFO swapped in cannot hang us), then ``fstat`` must
    show a regular file with the resolved device and inode, and no more than
    ``max_bytes`` are read.
    """
    shown = _show(resolved.relative)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(resolved.path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeAgentFile(f"{shown} was replaced by a symlink before it could be sent; refused") from None
        raise UnsafeAgentFile(f"{shown} disappeared or became unreadable before it could be sent") from None
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (resolved.device, resolved.inode):
            raise UnsafeAgentFile(f"{shown} was replaced by another file before it could be sent; refused")
        _check_file(info, shown, resolved.max_bytes)
        chunks = []
        remaining = resolved.max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > resolved.max_bytes:
        raise UnsafeAgentFile(f"{shown} grew beyond the {_size(resolved.max_bytes)} limit while being sent; refused")
    return data


def _inside_parts(workspace: Path, requested: str, shown: str) -> list[str]:
    """The path's parts below the workspace root, before any resolving.

    '.' and empty parts are dropped ('./a//b' is 'a/b'); '..' is kept so the
    caller refuses it.
    """
    # PurePosixPath drops '.' and empty parts but keeps '..', which is what
    # we want: a lexical view, with no file-system access yet.
    parts = PurePosixPath(requested).parts
    if not PurePosixPath(requested).is_absolute():
        return list(parts)
    for root in (AGENT_WORKSPACE, PurePosixPath(workspace)):
        if parts[: len(root.parts)] == root.parts:
            return list(parts[len(root.parts) :])
    raise UnsafeAgentFile(f"the agent asked to send {shown}, an absolute path outside its workspace; refused")


def _check_file(info: os.stat_result, shown: str, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which is not a regular file; refused")
    if info.st_size > max_bytes:
        raise UnsafeAgentFile(
            f"the agent asked to send {shown} ({_size(info.st_size)}), which is over the {_size(max_bytes)} limit"
        )


def _show(path: object) -> str:
    """The path as the user may see it: printable, quoted, at most 80 characters."""
    text = str(path) if isinstance(path, str) else repr(path)
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > 80:
        text = text[:60] + "…" + text[-19:]
    return f'"{text}"'


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")
