"""Files between users and agents, kept strictly inside the agent's workspace.

Both directions cross a trust boundary, and the file system is shared with a
program that may be buggy or hostile (the agent can create, rename and swap
anything in its workspace while the bot works there). So the bot never asks
the kernel to resolve a path inside the workspace: every step starts from an
open descriptor and names one component, with ``O_NOFOLLOW``.

- **Agent → user** (:func:`load_agent_file`, for ``AGENT_EVENT_SEND_FILE``):
  the workspace is opened once; each component is opened below the previous
  one (``openat(dir_fd, name, O_PATH | O_NOFOLLOW)``) and ``fstat``-ed on the
  descriptor just opened. A directory becomes the next step's ``dir_fd``; a
  symlink is read and its target walked the same way from where it stands
  (a target that climbs above the workspace, or is absolute outside it, is
  refused before anything outside is touched); the last component must be a
  regular file within the size cap, and is opened for reading from the same
  directory descriptor and checked to be the very inode that was examined.
  The bytes are read through that descriptor. There is no second walk by
  path, so swapping a directory for a symlink at any moment gains nothing:
  the swap is either seen (a symlink, walked inside the workspace) or not
  (the old directory, still inside).
- **User → agent** (:func:`save_incoming`): a user's file name is reduced to
  a safe base name and created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in
  ``<workspace>/incoming/``, itself opened with ``O_NOFOLLOW`` below the
  workspace's descriptor; nothing is ever written through a planted symlink
  or over an existing file. :func:`remove_incoming` deletes such a file the
  same way.

Refusals raise :class:`UnsafeAgentFile`, whose message is written for the
user and never shows a host path outside the workspace.

Hard links are not refused: with the kernel's ``protected_hardlinks`` (the
default on Linux) a program can only link a file it could already read and
write, so a hard link gives the agent nothing it did not have.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = [
    "AGENT_WORKSPACE",
    "INCOMING_DIR",
    "AgentFile",
    "UnsafeAgentFile",
    "load_agent_file",
    "msgtype_for",
    "remove_incoming",
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
# The kernel's own limit on symlinks followed in one lookup (MAXSYMLINKS).
_MAX_SYMLINKS = 40
# Directory descriptors held open at once by one walk (one per level, so that
# a '..' in a symlink's target returns to the very directory it came from).
_MAX_DEPTH = 128
# Categories removed from user file names: controls (including NUL and
# newlines), format characters (bidi overrides that disguise an extension),
# lone surrogates (unencodable) and line/paragraph separators.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}

# O_PATH opens a name without opening the object behind it (no read access
# needed, no FIFO that blocks, no device driver called): enough to fstat it
# and to use it as a dir_fd. Linux only, like the rest of the bot.
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_ROOT_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_STEP_FLAGS = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in at the last moment cannot hang the read.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafeAgentFile(Exception):
    """A file cannot be moved between the user and the agent; the message says why.

    The message is meant for the user as is: it names the path the agent
    gave (shortened) and the reason, never a host path.
    """


@dataclass(frozen=True)
class AgentFile:
    """A file an agent sent, checked and read: ready to upload.

    ``relative`` is where it is inside the workspace once symlinks are
    followed, ``name`` the file name to show the user (the last component the
    agent asked for), ``data`` its bytes, read through the descriptor that
    was checked.
    """

    relative: str
    name: str
    size: int
    mimetype: str
    msgtype: str
    data: bytes = field(repr=False)


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


def save_incoming(workspace: Path, filename: str, data: bytes, stamp: str) -> str:
    """Save a user's file into the agent's workspace; return its relative path.

    The ``incoming`` folder is created (0755) and opened below the
    workspace's descriptor without following a symlink, and the file is
    created in it with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (0644), so an existing
    file (or a symlink the agent planted) is never written through: on a
    clash the next `` (n)`` name is tried. The relative path (e.g.
    ``incoming/20240101-120000-report (1).pdf``) is what the agent gets.
    Blocking: call it from a worker thread.
    """
    candidates = _candidates(filename, stamp)  # a bad stamp fails before any I/O
    dir_fd = _open_incoming(workspace, create=True, purpose="so the file was not saved")
    try:
        for name in candidates:
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


def remove_incoming(workspace: Path, relative: str) -> bool:
    """Delete a file :func:`save_incoming` made (``incoming/<name>``); False if it is already gone.

    The name is unlinked below the ``incoming`` folder's descriptor (opened
    without following a symlink), and unlinking never follows a symlink, so
    an agent that swaps its ``incoming`` folder for a link cannot make the bot
    delete anything outside. Anything but ``incoming/<one plain name>`` is a
    programming error (``ValueError``).
    """
    folder, _, name = relative.partition("/")
    if folder != INCOMING_DIR or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{relative!r} is not a path save_incoming() returns (incoming/<name>)")
    dir_fd = _open_incoming(workspace, create=False, purpose="so the file was not removed")
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(dir_fd)
    return True


def _open_incoming(workspace: Path, *, create: bool, purpose: str) -> int:
    """A descriptor of ``<workspace>/incoming``, refusing a symlink in its place."""
    root = _open_workspace(workspace, f"the agent's workspace is not available, {purpose}")
    try:
        if create:
            try:
                os.mkdir(INCOMING_DIR, 0o755, dir_fd=root)
            except FileExistsError:
                pass  # a folder (fine), or a file or symlink: refused just below
        try:
            return os.open(INCOMING_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
        except FileNotFoundError:
            if not create:
                raise UnsafeAgentFile(f"the agent's incoming folder is gone, {purpose}") from None
            raise UnsafeAgentFile(f"the agent's incoming folder could not be created, {purpose}") from None
        except OSError:
            raise UnsafeAgentFile(
                f"the agent's incoming folder is not a plain folder (perhaps a symlink), {purpose}"
            ) from None
    finally:
        os.close(root)


def _candidates(filename: str, stamp: str) -> Iterator[str]:
    if not stamp or len(stamp) > _MAX_STAMP_LEN or safe_file_name(stamp) != stamp or "/" in stamp:
        raise ValueError(f"stamp {stamp!r} must be a short plain name such as 20240101-120000")
    return _numbered(safe_file_name(filename), stamp)


def _numbered(safe: str, stamp: str) -> Iterator[str]:
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


def load_agent_file(workspace_path: Path, requested: str, max_bytes: int) -> AgentFile:
    """Check a path an agent asked to send and read the file it names.

    Accepted forms: relative to the workspace (``out/report.pdf``), absolute
    under ``/workspace/`` (the agent's own view), or absolute under the bot's
    ``workspace_path``. Nothing is decoded: ``%2e%2e`` is a literal name. The
    path must have no ``..`` part; symlinks are followed only while they stay
    inside the workspace; the result must be a regular file of at most
    ``max_bytes``. Raises :class:`UnsafeAgentFile` otherwise. Blocking (it
    reads the file): call it from a worker thread.
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
    parts = _inside_parts(workspace, requested)
    if parts is None:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, an absolute path outside its workspace; refused")
    if ".." in parts:
        raise UnsafeAgentFile(f"the agent asked to send {shown}; paths with '..' are not allowed")
    if not parts:
        raise UnsafeAgentFile(f"the agent asked to send {shown}, which is its whole workspace, not a file")

    root = _open_workspace(workspace, "the agent's workspace is not available, so its file cannot be sent")
    walk = _Walk(root, workspace, shown)
    try:
        relative, data = walk.run(parts, max_bytes)
    finally:
        walk.close()
    name = parts[-1]
    mimetype = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return AgentFile(relative, name, len(data), mimetype, msgtype_for(mimetype), data)


class _Walk:
    """One lookup below the workspace's descriptor, one component at a time.

    ``stack`` holds (name, descriptor) of each directory entered below the
    root; the current directory is its top (or the root). A '..' (only ever
    from a symlink's target: the agent's own path may hold none) pops it, and
    popping past the root means the link points outside.
    """

    def __init__(self, root: int, workspace: Path, shown: str) -> None:
        self.root = root
        self.workspace = workspace
        self.shown = shown
        self.stack: list[tuple[str, int]] = []

    def close(self) -> None:
        for _, fd in self.stack:
            os.close(fd)
        self.stack.clear()
        os.close(self.root)

    def refuse(self, why: str) -> UnsafeAgentFile:
        return UnsafeAgentFile(f"the agent asked to send {self.shown}, {why}")

    @property
    def here(self) -> int:
        return self.stack[-1][1] if self.stack else self.root

    def run(self, parts: list[str], max_bytes: int) -> tuple[str, bytes]:
        pending = list(reversed(parts))  # the next component is at the end
        links = 0
        while pending:
            name = pending.pop()
            if name == "..":
                if not self.stack:
                    raise self.refuse("which points outside its workspace; refused")
                os.close(self.stack.pop()[1])
                continue
            fd = self._step(name)
            try:
                info = os.fstat(fd)
                if stat.S_ISLNK(info.st_mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise self.refuse("which goes through too many symlinks (perhaps a loop); refused")
                    pending.extend(reversed(self._link_target(name)))
                    continue
                if pending:
                    if not stat.S_ISDIR(info.st_mode):
                        raise self.refuse("which cannot be read (a part of its path is not a folder)")
                    if len(self.stack) >= _MAX_DEPTH:
                        raise self.refuse("whose folders are nested too deeply; refused")
                    self.stack.append((name, fd))
                    fd = -1  # now owned by the stack
                    continue
                _check_file(info, self.shown, max_bytes)
                data = self._read(name, info, max_bytes)
                return "/".join([*(n for n, _ in self.stack), name]), data
            finally:
                if fd >= 0:
                    os.close(fd)
        # The path ended on a directory: the root itself, or a folder in it.
        if not self.stack:
            raise self.refuse("which is its whole workspace, not a file")
        raise self.refuse("which is a folder, not a file")

    def _step(self, name: str) -> int:
        try:
            return os.open(name, _STEP_FLAGS, dir_fd=self.here)
        except FileNotFoundError:
            raise self.refuse("but there is no such file in its workspace") from None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise self.refuse("which cannot be read (a part of its path is not a folder)") from None
            raise self.refuse("which cannot be read") from None

    def _link_target(self, name: str) -> list[str]:
        """The components to walk instead of symlink *name*, from where it stands."""
        try:
            target = os.readlink(name, dir_fd=self.here)
        except OSError:
            # Swapped for something else since it was opened: refuse rather than guess.
            raise self.refuse("which changed while it was being checked; refused") from None
        if not target:
            raise self.refuse("which is a broken symlink; refused")
        if target.startswith("/"):
            inside = _inside_parts(self.workspace, target)
            if inside is None:
                raise self.refuse("which points outside its workspace; refused")
            # An absolute target inside the workspace starts again from its root.
            for _, fd in self.stack:
                os.close(fd)
            self.stack.clear()
            return inside
        return [p for p in target.split("/") if p not in ("", ".")]

    def _read(self, name: str, examined: os.stat_result, max_bytes: int) -> bytes:
        """Open *name* for reading below the same directory descriptor; read it
        only if it is still the inode that was examined."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.here)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.refuse("which was replaced by a symlink before it could be sent; refused") from None
            raise self.refuse("which disappeared or became unreadable before it could be sent") from None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != (examined.st_dev, examined.st_ino):
                raise self.refuse("which was replaced by another file before it could be sent; refused")
            _check_file(info, self.shown, max_bytes)
            chunks = []
            remaining = max_bytes + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise self.refuse(f"which grew beyond the {_size(max_bytes)} limit while being sent; refused")
        return data


def _open_workspace(workspace: Path, message: str) -> int:
    """A descriptor of the workspace folder itself (the operator's path: trusted)."""
    try:
        return os.open(workspace, _ROOT_FLAGS)
    except OSError:
        raise UnsafeAgentFile(message) from None


def _inside_parts(workspace: Path, requested: str) -> list[str] | None:
    """The path's parts below the workspace root, before any resolving; None
    for an absolute path outside the workspace.

    '.' and empty parts are dropped ('./a//b' is 'a/b'); '..' is kept so the
    caller decides.
    """
    # PurePosixPath drops '.' and empty parts but keeps '..': a lexical view,
    # with no file-system access yet.
    path = PurePosixPath(requested)
    parts = path.parts
    if not path.is_absolute():
        return list(parts)
    for root in (AGENT_WORKSPACE, PurePosixPath(workspace)):
        if parts[: len(root.parts)] == root.parts:
            return list(parts[len(root.parts) :])
    return None


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


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{int(n)} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")
