"""The demo (``scripts/demo``, the README's first command) plays every step.

It runs in this process against the session's Synapse, so the test costs the
conversation and not another homeserver start; the command itself adds only
the Synapse start, the working directory and the log file around the same
:func:`play_demo`.
"""

from lambda_actors.cli import main
from lambda_actors.loopback.demo import STEPS, play_demo


async def test_the_demo_plays_every_step_against_a_real_synapse(synapse, tmp_path):
    lines: list[str] = []
    report = await play_demo(tmp_path, homeserver=synapse, write=lines.append)
    transcript = "\n".join(lines)
    assert report.ok, transcript
    assert [step.title for step in report.steps] == [title for title, _ in STEPS]
    # The conversation was printed as it happened, both sides of it.
    assert "alice ▶ tell me a story about supervisors and actors [[slow]]" in transcript
    assert "bot   ◀ ✎ echo: tell me a story" in transcript  # the streamed answer's edits
    assert "alice ▶ 📎 notes.txt" in transcript
    assert "bot   ◀ 📎 report.txt (m.file" in transcript
    assert "confirmation" in transcript and "approved" in transcript
    assert "Started over" in transcript
    assert "⚠" in transcript and "echo: are you back?" in transcript


def test_the_demo_command_refuses_a_keep_directory_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("mine")
    assert main(["demo", "--keep", str(tmp_path)]) == 2
    assert "give a new or empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["something.txt"]
