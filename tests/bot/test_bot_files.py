"""Files both ways: safe incoming names, and agent paths held inside the workspace."""

from __future__ import annotations

import os
import stat
import threading
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_actors.bot.files import (
    ResolvedFile,
    UnsafeAgentFile,
    incoming_path,
    msgtype_for,
    read_agent_file,
    resolve_agent_file,
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
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    workspace = world["workspace"]
    root = os.path.realpath(workspace)
    accepted = []
    for requested in corpus(world):
        try:
            resolved = resolve_agent_file(workspace, requested, MAX_BYTES)
            data = read_agent_file(resolved)
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
        else:
            accepted.append((requested, data))
    assert accepted == []
    for path in opened:
        assert os.path.realpath(path).startswith(root + os.sep), path


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
        "loop": "not a regular file",
        "sub/report.pdf/x": "cannot be read",
    }
    for requested, reason in reasons.items():
        with pytest.raises(UnsafeAgentFile, match=reason.replace("(", r"\(").replace(".", r"\.")):
            resolve_agent_file(workspace, requested, MAX_BYTES)


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
        ("%2e%2e", "%2e%2e", "%2e%2e"),
        ("résumé.txt", "résumé.txt", "résumé.txt"),
        ("exact.bin", "exact.bin", "exact.bin"),
    ],
)
def test_legit_paths_are_accepted(world: dict[str, Path], requested: str, relative: str | None, name: str | None) -> None:
    workspace = world["workspace"]
    requested = requested.replace("{WS}", str(workspace))
    if relative is None:
        with pytest.raises(UnsafeAgentFile):
            resolve_agent_file(workspace, requested, MAX_BYTES)
        return
    resolved = resolve_agent_file(workspace, requested, MAX_BYTES)
    assert resolved.relative == relative
    assert resolved.name == name
    assert resolved.path == Path(os.path.realpath(workspace / relative))
    assert read_agent_file(resolved) == (workspace / relative).read_bytes()
    assert resolved.size == len(read_agent_file(resolved))


def test_mimetype_decides_the_matrix_msgtype(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    names = ("photo.PNG", "song.mp3", "clip.mp4", "sub/report.pdf")
    found = {name: resolve_agent_file(workspace, name, MAX_BYTES) for name in names}
    assert found["photo.PNG"].mimetype == "image/png" and found["photo.PNG"].msgtype == "m.image"
    assert found["song.mp3"].msgtype == "m.audio"
    assert found["clip.mp4"].msgtype == "m.video"
    assert found["sub/report.pdf"].mimetype == "application/pdf" and found["sub/report.pdf"].msgtype == "m.file"
    assert resolve_agent_file(workspace, "ok.txt", MAX_BYTES).msgtype == "m.file"
    (workspace / "noext").write_bytes(b"?")
    assert resolve_agent_file(workspace, "noext", MAX_BYTES).mimetype == "application/octet-stream"


@pytest.mark.parametrize(
    ("mimetype", "msgtype"),
    [("image/jpeg", "m.image"), ("IMAGE/GIF", "m.image"), ("audio/ogg", "m.audio"), ("video/webm", "m.video"), ("text/plain", "m.file"), ("", "m.file")],
)
def test_msgtype_for(mimetype: str, msgtype: str) -> None:
    assert msgtype_for(mimetype) == msgtype


def test_missing_workspace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeAgentFile, match="workspace is not available"):
        resolve_agent_file(tmp_path / "gone", "ok.txt", MAX_BYTES)


# --- the file changes between resolve and read -------------------------------------


def test_swap_for_a_symlink_after_resolving_is_refused(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    resolved = resolve_agent_file(workspace, "ok.txt", MAX_BYTES)
    (workspace / "ok.txt").unlink()
    (workspace / "ok.txt").symlink_to(world["outside"] / "secret.txt")
    with pytest.raises(UnsafeAgentFile, match="replaced by a symlink"):
        read_agent_file(resolved)


def test_swap_for_another_file_after_resolving_is_refused(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    resolved = resolve_agent_file(workspace, "ok.txt", MAX_BYTES)
    # Both files exist at once, so the new one cannot reuse the old inode.
    (workspace / "new.txt").write_bytes(b"someone else")
    os.replace(workspace / "new.txt", workspace / "ok.txt")
    with pytest.raises(UnsafeAgentFile, match="replaced by another file"):
        read_agent_file(resolved)


def test_swap_for_a_fifo_after_resolving_is_refused_without_blocking(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    resolved = resolve_agent_file(workspace, "ok.txt", MAX_BYTES)
    (workspace / "ok.txt").unlink()
    os.mkfifo(workspace / "ok.txt")
    with pytest.raises(UnsafeAgentFile):
        read_agent_file(resolved)


def test_file_growing_past_the_cap_after_resolving_is_refused(world: dict[str, Path]) -> None:
    workspace = world["workspace"]
    resolved = resolve_agent_file(workspace, "ok.txt", MAX_BYTES)
    with open(workspace / "ok.txt", "ab") as f:
        f.write(b"y" * MAX_BYTES)
    with pytest.raises(UnsafeAgentFile, match="over the 1000 bytes limit"):
        read_agent_file(resolved)


def test_file_deleted_after_resolving_is_refused(world: dict[str, Path]) -> None:
    resolved = resolve_agent_file(world["workspace"], "ok.txt", MAX_BYTES)
    (world["workspace"] / "ok.txt").unlink()
    with pytest.raises(UnsafeAgentFile, match="disappeared"):
        read_agent_file(resolved)


def test_resolved_file_is_frozen(world: dict[str, Path]) -> None:
    resolved = resolve_agent_file(world["workspace"], "ok.txt", MAX_BYTES)
    assert isinstance(resolved, ResolvedFile)
    with pytest.raises(AttributeError):
        resolved.max_bytes = 10**9  # type: ignore[misc]


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
        resolved = resolve_agent_file(world["workspace"], requested, MAX_BYTES)
    except UnsafeAgentFile as exc:
        assert SECRET.decode() not in str(exc)
        return
    assert str(resolved.path).startswith(root + os.sep)
    assert SECRET not in read_agent_file(resolved)


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


def test_incoming_path_and_clash_numbering(tmp_path: Path) -> None:
    assert incoming_path(tmp_path, "report.pdf", STAMP) == tmp_path / "incoming" / f"{STAMP}-report.pdf"
    first = save_incoming(tmp_path, "report.pdf", b"one", STAMP)
    assert incoming_path(tmp_path, "report.pdf", STAMP) == tmp_path / "incoming" / f"{STAMP}-report (1).pdf"
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
