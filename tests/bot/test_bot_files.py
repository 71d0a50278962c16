"""Files both ways: safe incoming names, and agent paths held inside the workspace."""

from __future__ import annotations

import os
import stat
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_actors.bot.files import (
    AgentFile,
    UnsafeAgentFile,
    load_agent_file,
    msgtype_for,
    remove_incoming,
    safe_file_name,
    save_incoming,
)

CORPUS = Path(__file__).with_name("hostile_paths.txt")
SECRET = b"TOP-SECRET-CONTENT-outside-the-workspace"
MAX_BYTES = 1000
STAMP = "20240102-030405"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """agents/0 (our workspace), agents/1 (another agent's), outside/secret.txt."""
    workspace = tmp_path / "agents" / "0"
    other = tmp_path / "agents" / "1"
    outside = tmp_path / "outside"
    for folder in (workspace / "sub", workspace / "folder", other, outside):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (other / "private.txt").write_bytes(SECRET)
    (workspace / "ok.txt").write_bytes(b"hello")
    (workspace / "sub" / "report.pdf").write_bytes(b"%PDF-1.4")
    (workspace / "photo.PNG").write_bytes(b"\x89PNG")
    (workspace / "song.mp3").write_bytes(b"ID3")
    (workspace / "clip.mp4").write_bytes(b"\x00\x00")
    (workspace / "résumé.txt").write_bytes(b"cv")
    (workspace / "%2e%2e").write_bytes(b"literal name")
    (workspace / "exact.bin").write_bytes(b"x" * MAX_BYTES)
    (workspace / "big.bin").write_bytes(b"x" * (MAX_BYTES + 1))
    os.mkfifo(workspace / "fifo")
    os.mknod(workspace / "sock", stat.S_IFSOCK | 0o600)
    (workspace / "link_out").symlink_to("../../outside/secret.txt")
    (workspace / "abs_link_out").symlink_to(outside / "secret.txt")
    (workspace / "dir_link_out").symlink_to(outside)
    (workspace / "link_to_other_agent").symlink_to("../1/private.txt")
    (workspace / "dangling_out").symlink_to("/nonexistent/lambda-test/x")
    (workspace / "chain_mid").symlink_to("sub/../link_out")
    (workspace / "chain_out").symlink_to("chain_mid")
    (workspace / "loop").symlink_to("loop")
    (workspace / "link_to_root").symlink_to(".")
    (workspace / "link_to_dir").symlink_to("folder")
    (workspace / "link_in").symlink_to("sub/report.pdf")
    # Escapes only a walk that follows links could meet: up from a subfolder,
    # absolute in the agent's view or the bot's, and a pair pointing at each
    # other through the outside.
    (workspace / "sub" / "deep_out").symlink_to("../../../outside/secret.txt")
    (workspace / "abs_ws_escape").symlink_to("/workspace/../../outside/secret.txt")
    (workspace / "abs_host_escape").symlink_to(f"{workspace}/../1/private.txt")
    (workspace / "ping").symlink_to("../../outside/pong")
    (outside / "pong").symlink_to(workspace / "ok.txt")
    return {"workspace": workspace, "other": other, "outside": outside, "root": tmp_path}


def corpus(world: dict[str, Path]) -> list[str]:
    fills = {
        "{WS}": str(world["workspace"]),
        "{OTHER}": str(world["other"]),
        "{OUT}": str(world["outside"]),
        "{NUL}": "\x00",
        "{NL}": "\n",
        "{TAB}": "\t",
        "{DEL}": "\x7f",
        "{ESC}": "\x1b",
        "{LONG}": "a/" * 2100 + "x",
        "{LONGNAME}": "n" * 300,
    }
    paths = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line == "":
            continue
        if line == "{EMPTY}":
            paths.append("")
            continue
        for key, value in fills.items():
            line = line.replace(key, value)
        paths.append(line)
    return paths


def test_corpus_has_at_least_fifty_distinct_paths(world: dict[str, Path]) -> None:
    paths = corpus(world)
    assert len(set(paths)) == len(paths) >= 50


def test_every_hostile_path_is_refused_and_nothing_outside_is_read(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every descriptor the walk opens is checked for what it really names
    # (the kernel's own view, /proc/self/fd), not for the name passed in.
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(path, *args, **kwargs)
        opened.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    workspace = world["workspace"]
    root = os.path.realpath(workspace)
    accepted = []
    for requested in corpus(world):
        try:
            accepted.append((requested, load_agent_file(workspace, requested, MAX_BYTES)))
        except UnsafeAgentFile as exc:
            message = str(exc)
            assert message and len(message) < 300 and message.isprintable(), (requested, message)
            assert SECRET.decode() not in message
            # The user may see what the agent asked for, but no host path
            # the agent did not write itself.
            if str(world["outside"]) not in requested:
                assert str(world["outside"]) not in message, (requested, message)
            if str(world["root"]) not in requested:
                assert str(world["root"]) not in message, (requested, message)
    assert accepted == []
    assert opened
    for path in opened:
        assert path == root or path.startswith(root + os.sep), path


def test_refusal_reasons_say_what_is_wrong(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    reasons = {
        "../outside/secret.txt": "'..' are not allowed",
        "/etc/passwd": "absolute path outside its workspace",
        "link_out": "points outside its workspace",
        "dangling_out": "points outside its workspace",
        "folder": "is a folder, not a file",
        "fifo": "not a regular file",
        "sock": "not a regular file",
        "big.bin": "over the 1000 bytes limit",
        "missing.txt": "no such file in its workspace",
        "ok.txt\x00": "control characters",
        "..\\x": "backslashes are not allowed",
        "": "gave no path",
        ".": "whole workspace",
        "link_to_root": "whole workspace",
        "n" * 300: "too long",
        "loop": "too many symlinks",
        "chain_out": "points outside its workspace",
        "sub/report.pdf/x": "cannot be read",
    }
    for requested, reason in reasons.items():
        with pytest.raises(UnsafeAgentFile, match=reason.replace("(", r"\(").replace(".", r"\.")):
            load_agent_file(workspace, requested, MAX_BYTES)


@pytest.mark.parametrize(
    ("requested", "relative", "name"),
    [
        ("ok.txt", "ok.txt", "ok.txt"),
        ("./ok.txt", "ok.txt", "ok.txt"),
        ("/workspace/ok.txt", "ok.txt", "ok.txt"),
        ("/workspace//sub/./report.pdf", "sub/report.pdf", "report.pdf"),
        ("sub//report.pdf", "sub/report.pdf", "report.pdf"),
        ("{WS}/sub/report.pdf", "sub/report.pdf", "report.pdf"),
        ("link_in", "sub/report.pdf", "link_in"),
        ("link_to_root/ok.txt", "ok.txt", "ok.txt"),
        ("link_to_dir/../ok.txt", None, None),
        ("link_to_dir", None, None),
        ("up_and_back", "sub/report.pdf", "up_and_back"),
        ("abs_link_in", "sub/report.pdf", "abs_link_in"),
        ("%2e%2e", "%2e%2e", "%2e%2e"),
        ("résumé.txt", "résumé.txt", "résumé.txt"),
        ("exact.bin", "exact.bin", "exact.bin"),
    ],
)
def test_legit_paths_are_accepted(world: dict[str, Path], requested: str, relative: str | None, name: str | None) -> None:
    workspace = world["workspace"]
    requested = requested.replace("{WS}", str(workspace))
    # Symlinks that stay inside are followed: one climbing up and back down,
    # one absolute in the agent's own view.
    (workspace / "sub" / "up").symlink_to("../folder")
    (workspace / "up_and_back").symlink_to("sub/up/../sub/report.pdf")
    (workspace / "abs_link_in").symlink_to("/workspace/sub/report.pdf")
    if relative is None:
        with pytest.raises(UnsafeAgentFile):
            load_agent_file(workspace, requested, MAX_BYTES)
        return
    loaded = load_agent_file(workspace, requested, MAX_BYTES)
    assert loaded.relative == relative
    assert loaded.name == name
    assert loaded.data == (workspace / relative).read_bytes()
    assert loaded.size == len(loaded.data)


def test_mimetype_decides_the_matrix_msgtype(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    names = ("photo.PNG", "song.mp3", "clip.mp4", "sub/report.pdf")
    found = {name: load_agent_file(workspace, name, MAX_BYTES) for name in names}
    assert found["photo.PNG"].mimetype == "image/png" and found["photo.PNG"].msgtype == "m.image"
    assert found["song.mp3"].msgtype == "m.audio"
    assert found["clip.mp4"].msgtype == "m.video"
    assert found["sub/report.pdf"].mimetype == "application/pdf" and found["sub/report.pdf"].msgtype == "m.file"
    assert load_agent_file(workspace, "ok.txt", MAX_BYTES).msgtype == "m.file"
    (workspace / "noext").write_bytes(b"?")
    assert load_agent_file(workspace, "noext", MAX_BYTES).mimetype == "application/octet-stream"


@pytest.mark.parametrize(
    ("mimetype", "msgtype"),
    [("image/jpeg", "m.image"), ("IMAGE/GIF", "m.image"), ("audio/ogg", "m.audio"), ("video/webm", "m.video"), ("text/plain", "m.file"), ("", "m.file")],
)
def test_msgtype_for(mimetype: str, msgtype: str) -> None:
    assert msgtype_for(mimetype) == msgtype


def test_missing_workspace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeAgentFile, match="workspace is not available"):
        load_agent_file(tmp_path / "gone", "ok.txt", MAX_BYTES)


# --- races: the workspace changes while the walk runs ------------------------------


def _race(attempt, swap, *, at_least: int = 3000) -> tuple[int, int]:
    """Run *attempt* over and over while another thread runs *swap* in a loop.

    Returns (accepted, refused). Runs until at least *at_least* attempts have
    been made and both outcomes have been seen (so the race really happened),
    within a bound on attempts.
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def swapper() -> None:
        try:
            while not stop.is_set():
                swap()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    accepted = refused = 0
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the swap lands mid-walk
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for attempts in range(1, 50 * at_least):
            if attempt():
                accepted += 1
            else:
                refused += 1
            if attempts >= at_least and accepted and refused:
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert errors == []
    return accepted, refused


def test_racing_a_directory_swapped_for_a_symlink_never_reads_outside(world: dict[str, Path]) -> None:
    """The issue's attack: ``dir/secret.txt`` asked for while ``dir`` flips
    between a real folder and a symlink to a folder outside (which holds a
    ``secret.txt`` too). Thousands of tries; not one outside byte."""
    workspace = world["workspace"]
    (workspace / "dir").mkdir()
    (workspace / "dir" / "secret.txt").write_bytes(b"inside")
    (workspace / "link").symlink_to(world["outside"])

    def swap() -> None:
        os.rename(workspace / "dir", workspace / "hold")
        os.rename(workspace / "link", workspace / "dir")
        os.rename(workspace / "dir", workspace / "link")
        os.rename(workspace / "hold", workspace / "dir")

    def attempt() -> bool:
        try:
            loaded = load_agent_file(workspace, "dir/secret.txt", MAX_BYTES)
        except UnsafeAgentFile as exc:
            assert SECRET.decode() not in str(exc)
            return False
        assert loaded.data == b"inside", loaded.data
        return True

    accepted, refused = _race(attempt, swap, at_least=10_000)
    assert accepted and refused


def test_racing_a_file_swapped_for_a_symlink_never_reads_outside(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    (workspace / "out").mkdir()
    (workspace / "out" / "a.txt").write_bytes(b"inside")
    (workspace / "out" / "b.txt").symlink_to(world["outside"] / "secret.txt")

    def swap() -> None:
        os.rename(workspace / "out" / "a.txt", workspace / "out" / "hold")
        os.rename(workspace / "out" / "b.txt", workspace / "out" / "a.txt")
        os.rename(workspace / "out" / "a.txt", workspace / "out" / "b.txt")
        os.rename(workspace / "out" / "hold", workspace / "out" / "a.txt")

    def attempt() -> bool:
        try:
            loaded = load_agent_file(workspace, "out/a.txt", MAX_BYTES)
        except UnsafeAgentFile:
            return False
        assert loaded.data == b"inside", loaded.data
        return True

    accepted, refused = _race(attempt, swap, at_least=1000)
    assert accepted and refused


# The last step is two opens of one name below one directory descriptor: an
# O_PATH open that is examined, then the open for reading. These tests put a
# swap exactly between the two, by wrapping os.open.


def _swap_before_reading(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    real_open = os.open

    def open_then_swap(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_ACCMODE == os.O_RDONLY and not flags & getattr(os, "O_PATH", 0) and path == "ok.txt":
            swap()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_then_swap)


def test_file_swapped_for_a_symlink_before_reading_is_refused(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = world["workspace"]

    def swap() -> None:
        (workspace / "ok.txt").unlink()
        (workspace / "ok.txt").symlink_to(world["outside"] / "secret.txt")

    _swap_before_reading(monkeypatch, swap)
    with pytest.raises(UnsafeAgentFile, match="replaced by a symlink"):
        load_agent_file(workspace, "ok.txt", MAX_BYTES)


def test_file_swapped_for_another_file_before_reading_is_refused(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = world["workspace"]

    def swap() -> None:
        # Both files exist at once, so the new one cannot reuse the old inode.
        (workspace / "new.txt").write_bytes(b"someone else")
        os.replace(workspace / "new.txt", workspace / "ok.txt")

    _swap_before_reading(monkeypatch, swap)
    with pytest.raises(UnsafeAgentFile, match="replaced by another file"):
        load_agent_file(workspace, "ok.txt", MAX_BYTES)


def test_file_swapped_for_a_fifo_before_reading_is_refused_without_blocking(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = world["workspace"]

    def swap() -> None:
        (workspace / "ok.txt").unlink()
        os.mkfifo(workspace / "ok.txt")

    _swap_before_reading(monkeypatch, swap)
    with pytest.raises(UnsafeAgentFile, match="replaced by another file"):
        load_agent_file(workspace, "ok.txt", MAX_BYTES)


def test_file_growing_past_the_cap_before_reading_is_refused(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = world["workspace"]

    def swap() -> None:
        with open(workspace / "ok.txt", "ab") as f:
            f.write(b"y" * MAX_BYTES)

    _swap_before_reading(monkeypatch, swap)
    with pytest.raises(UnsafeAgentFile, match="over the 1000 bytes limit"):
        load_agent_file(workspace, "ok.txt", MAX_BYTES)


def test_file_deleted_before_reading_is_refused(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = world["workspace"]
    _swap_before_reading(monkeypatch, (workspace / "ok.txt").unlink)
    with pytest.raises(UnsafeAgentFile, match="disappeared"):
        load_agent_file(workspace, "ok.txt", MAX_BYTES)


def test_symlinks_are_followed_only_a_bounded_number_of_times(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    (workspace / "l0").symlink_to("ok.txt")
    for i in range(1, 45):
        (workspace / f"l{i}").symlink_to(f"l{i - 1}")
    assert load_agent_file(workspace, "l39", MAX_BYTES).data == b"hello"
    with pytest.raises(UnsafeAgentFile, match="too many symlinks"):
        load_agent_file(workspace, "l44", MAX_BYTES)


def test_agent_file_is_frozen(world: dict[str, Path]) -> None:
    loaded = load_agent_file(world["workspace"], "ok.txt", MAX_BYTES)
    assert isinstance(loaded, AgentFile)
    assert "hello" not in repr(loaded)  # the bytes stay out of logs
    with pytest.raises(AttributeError):
        loaded.data = b"other"  # type: ignore[misc]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["..", ".", "", "sub", "ok.txt", "link_out", "dir_link_out", "secret.txt", "outside", "workspace", "agents", "1", "~", "%2e%2e", "\x00", "\\", "link_to_root"])
        | st.text(max_size=6),
        max_size=8,
    ),
    st.booleans(),
)
def test_fuzz_no_path_reaches_outside_the_workspace(world: dict[str, Path], parts: list[str], absolute: bool) -> None:
    requested = ("/" if absolute else "") + "/".join(parts)
    root = os.path.realpath(world["workspace"])
    try:
        loaded = load_agent_file(world["workspace"], requested, MAX_BYTES)
    except UnsafeAgentFile as exc:
        assert SECRET.decode() not in str(exc)
        return
    assert os.path.realpath(world["workspace"] / loaded.relative).startswith(root + os.sep)
    assert SECRET not in loaded.data


# --- incoming: user -> agent -------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\bob\\notes.txt", "notes.txt"),
        (".bashrc", "bashrc"),
        ("...", "file"),
        ("..", "file"),
        ("", "file"),
        ("dir/", "file"),
        ("a\x00b\n.txt", "ab.txt"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("  spaced name .txt  ", "spaced name.txt"),
        ("trailing.", "trailing"),
        ("photo (1).jpg", "photo (1).jpg"),
        ("Ünïcødé 🎉.md", "Ünïcødé 🎉.md"),
    ],
)
def test_safe_file_name(given_name: str, safe: str) -> None:
    assert safe_file_name(given_name) == safe


def test_safe_file_name_shortens_but_keeps_the_extension() -> None:
    name = safe_file_name("é" * 500 + ".tar.gz")
    assert name.endswith(".gz")
    assert len(name.encode()) <= 150
    assert name.startswith("éééé")
    long_ext = safe_file_name("x." + "e" * 300)
    assert len(long_ext.encode()) <= 150


@given(st.text(max_size=400))
def test_fuzz_safe_file_name_is_always_one_harmless_component(name: str) -> None:
    safe = safe_file_name(name)
    assert safe and len(safe.encode("utf-8")) <= 150
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".") and safe == safe.strip()
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in safe)
    assert safe_file_name(safe) == safe


def test_save_incoming_numbers_clashing_names(tmp_path: Path) -> None:
    first = save_incoming(tmp_path, "report.pdf", b"one", STAMP)
    second = save_incoming(tmp_path, "../report.pdf", b"two", STAMP)
    third = save_incoming(tmp_path, "report.pdf", b"three", STAMP)
    noext = [save_incoming(tmp_path, "README", b"r", STAMP) for _ in range(2)]
    assert first == f"incoming/{STAMP}-report.pdf"
    assert second == f"incoming/{STAMP}-report (1).pdf"
    assert third == f"incoming/{STAMP}-report (2).pdf"
    assert noext == [f"incoming/{STAMP}-README", f"incoming/{STAMP}-README (1)"]
    assert [(tmp_path / p).read_bytes() for p in (first, second, third)] == [b"one", b"two", b"three"]


def test_save_incoming_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "incoming").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    (workspace / "incoming" / f"{STAMP}-a.txt").symlink_to(victim)
    relative = save_incoming(workspace, "a.txt", b"user data", STAMP)
    assert relative == f"incoming/{STAMP}-a (1).txt"
    assert victim.read_bytes() == b"untouched"


def test_save_incoming_refuses_an_incoming_folder_that_is_a_symlink(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    elsewhere = tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    (workspace / "incoming").symlink_to(elsewhere)
    with pytest.raises(UnsafeAgentFile, match="not a plain folder"):
        save_incoming(workspace, "a.txt", b"data", STAMP)
    assert list(elsewhere.iterdir()) == []


def test_save_incoming_refuses_a_missing_workspace(tmp_path: Path) -> None:
    with pytest.raises(UnsafeAgentFile, match="workspace is not available"):
        save_incoming(tmp_path / "gone", "a.txt", b"data", STAMP)


@pytest.mark.parametrize("stamp", ["", "a/b", ".hidden", "x" * 65, "a\x00"])
def test_bad_stamp_is_a_programming_error(tmp_path: Path, stamp: str) -> None:
    with pytest.raises(ValueError, match="stamp"):
        save_incoming(tmp_path, "a.txt", b"", stamp)


def test_concurrent_saves_of_one_name_never_overwrite_each_other(tmp_path: Path) -> None:
    count = 16
    barrier = threading.Barrier(count)
    results: list[str] = []
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            barrier.wait()
            results.append(save_incoming(tmp_path, "same.txt", f"content {i}".encode() * 1000, STAMP))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == count
    contents = {(tmp_path / r).read_bytes() for r in results}
    assert contents == {f"content {i}".encode() * 1000 for i in range(count)}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=64))
def test_fuzz_save_incoming_lands_directly_in_incoming(tmp_path_factory: pytest.TempPathFactory, name: str, data: bytes) -> None:
    workspace = tmp_path_factory.mktemp("ws")
    relative = save_incoming(workspace, name, data, STAMP)
    folder, _, file_name = relative.partition("/")
    assert folder == "incoming" and file_name and "/" not in file_name
    assert file_name.startswith(f"{STAMP}-")
    assert (workspace / relative).read_bytes() == data
    assert sorted(p.name for p in workspace.rglob("*")) == sorted(["incoming", file_name])


def test_remove_incoming_deletes_the_saved_file_once(tmp_path: Path) -> None:
    relative = save_incoming(tmp_path, "a.txt", b"data", STAMP)
    assert remove_incoming(tmp_path, relative) is True
    assert not (tmp_path / relative).exists()
    assert remove_incoming(tmp_path, relative) is False


def test_remove_incoming_never_deletes_outside_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    elsewhere = tmp_path / "elsewhere"
    (workspace / "incoming").mkdir(parents=True)
    elsewhere.mkdir()
    victim = elsewhere / f"{STAMP}-a.txt"
    victim.write_bytes(b"untouched")
    # A planted symlink is removed itself, never what it points to.
    (workspace / "incoming" / f"{STAMP}-a.txt").symlink_to(victim)
    assert remove_incoming(workspace, f"incoming/{STAMP}-a.txt") is True
    assert victim.read_bytes() == b"untouched"
    # The incoming folder swapped for a symlink to elsewhere: refused.
    (workspace / "incoming").rmdir()
    (workspace / "incoming").symlink_to(elsewhere)
    with pytest.raises(UnsafeAgentFile, match="not a plain folder"):
        remove_incoming(workspace, f"incoming/{STAMP}-a.txt")
    assert victim.read_bytes() == b"untouched"


@pytest.mark.parametrize("relative", ["a.txt", "incoming/", "incoming/..", "incoming/x/y", "../incoming/a", "outgoing/a"])
def test_remove_incoming_takes_only_what_save_incoming_returns(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="incoming/<name>"):
        remove_incoming(tmp_path, relative)
