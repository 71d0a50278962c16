"""AnswerStream: when to post, when to edit, how to split, and that nothing is lost or repeated."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.bot.streaming import (
    CUT_NOTE,
    INTERRUPTED,
    PART_BYTES,
    AnswerStream,
    EditPart,
    PostPart,
    StreamAction,
    _fit,
    json_size,
)
from lambda_actors.matrix import content as contents

EMPTY = "(The agent finished without writing an answer.)"


@dataclass
class Sent:
    at: float
    action: StreamAction


def collect(log: list[Sent], at: float, actions: list[StreamAction]) -> list[StreamAction]:
    log.extend(Sent(at, a) for a in actions)
    return actions


def final_bodies(log: list[Sent]) -> list[str]:
    last: dict[int, str] = {}
    for sent in log:
        last[sent.action.part_no] = sent.action.body
    return [last[n] for n in sorted(last)]


def check_shape(log: list[Sent], stream: AnswerStream) -> None:
    """Parts numbered 0..n, each a post then edits 1..k, within every limit."""
    by_part: dict[int, list[Sent]] = defaultdict(list)
    for sent in log:
        by_part[sent.action.part_no].append(sent)
        assert json_size(sent.action.body) <= stream.max_bytes
        assert sent.action.body
    assert sorted(by_part) == list(range(len(by_part)))
    for sends in by_part.values():
        assert isinstance(sends[0].action, PostPart)
        edits = [s for s in sends[1:]]
        assert all(isinstance(s.action, EditPart) for s in edits)
        assert [s.action.edit_no for s in edits] == list(range(1, len(edits) + 1))
        assert len(edits) <= stream.max_edits
        # Every edit but the part's last is throttled.
        for before, edit in zip(sends, edits[:-1]):
            assert edit.at >= before.at + stream.min_interval
    keys = [(s.action.part_no, s.action.edit_no) for s in log]
    assert len(keys) == len(set(keys)), "transaction ids would repeat"


# --- the first message ----------------------------------------------------------


def test_quick_answer_is_a_single_message() -> None:
    stream = AnswerStream(first_delay=1.0)
    assert stream.text("Hello", 0.0) == []
    assert stream.text(", world", 0.3) == []
    assert stream.end(0.5) == [PostPart(0, "Hello, world")]
    assert stream.finished


def test_first_post_waits_first_delay_then_edits_follow_the_interval() -> None:
    stream = AnswerStream(first_delay=1.0, min_interval=1.0)
    assert stream.text("Hel", 10.0) == []
    assert stream.next_due() == 11.0
    assert stream.tick(10.9) == []
    assert stream.tick(11.0) == [PostPart(0, "Hel")]
    assert stream.next_due() is None
    assert stream.text("lo", 11.2) == []
    assert stream.next_due() == 12.0
    assert stream.text(" there", 11.9) == []
    assert stream.tick(12.0) == [EditPart(0, 1, "Hello there")]
    assert stream.text("!", 12.5) == []
    assert stream.end(12.6) == [EditPart(0, 2, "Hello there!")]


def test_whitespace_alone_is_not_posted() -> None:
    stream = AnswerStream(first_delay=0)
    assert stream.text("\n\n  ", 0.0) == []
    assert stream.next_due() is None
    assert stream.text("Hi", 0.1) == [PostPart(0, "\n\n  Hi")]


def test_edits_are_throttled_under_a_flood_of_chunks() -> None:
    stream = AnswerStream(first_delay=0, min_interval=1.0)
    log: list[Sent] = []
    for i in range(100):
        now = i / 20
        collect(log, now, stream.text(f"{i} ", now))
    collect(log, 5.0, stream.end(5.0))
    check_shape(log, stream)
    assert [s.at for s in log] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert final_bodies(log) == ["".join(f"{i} " for i in range(100))]


def test_edits_stop_at_max_edits_until_the_end() -> None:
    stream = AnswerStream(first_delay=0, min_interval=1.0, max_edits=3)
    log: list[Sent] = []
    for i in range(20):
        collect(log, float(i), stream.text(f"line {i}\n", float(i)))
    assert [type(s.action) for s in log] == [PostPart, EditPart, EditPart]
    assert stream.next_due() is None
    collect(log, 20.0, stream.end(20.0))
    assert log[-1].action == EditPart(0, 3, "".join(f"line {i}\n" for i in range(20)))
    check_shape(log, stream)


def test_final_edit_is_not_delayed_by_the_throttle() -> None:
    stream = AnswerStream(first_delay=0, min_interval=10.0)
    assert stream.text("a", 0.0) == [PostPart(0, "a")]
    assert stream.text("b", 0.1) == []
    assert stream.end(0.2) == [EditPart(0, 1, "ab")]


def test_end_without_change_sends_nothing_more() -> None:
    stream = AnswerStream(first_delay=0)
    assert stream.text("done", 0.0) == [PostPart(0, "done")]
    assert stream.end(3.0) == []


# --- parts -------------------------------------------------------------------------


def test_long_answer_continues_in_a_new_part_split_after_a_newline() -> None:
    stream = AnswerStream(first_delay=0, max_bytes=100)
    capacity = 100 - 25
    first_line = "x" * 50 + "\n"
    log: list[Sent] = []
    collect(log, 0.0, stream.text(first_line, 0.0))
    collect(log, 0.1, stream.text("y" * 60, 0.1))
    # Part 0 already showed exactly its final text, so no edit is needed.
    assert [s.action for s in log] == [PostPart(0, first_line), PostPart(1, "y" * 60)]
    collect(log, 0.2, stream.end(0.2))
    check_shape(log, stream)
    assert "".join(final_bodies(log)) == first_line + "y" * 60
    assert all(len(body.encode()) <= capacity for body in final_bodies(log))


def test_huge_single_chunk_is_split_into_full_parts() -> None:
    stream = AnswerStream(first_delay=5, max_bytes=1000)
    text = "z" * 3000
    log: list[Sent] = []
    collect(log, 0.0, stream.text(text, 0.0))
    collect(log, 0.1, stream.end(0.1))
    check_shape(log, stream)
    assert "".join(final_bodies(log)) == text
    assert len(final_bodies(log)) == 4


def test_parts_never_split_a_character() -> None:
    stream = AnswerStream(first_delay=0, max_bytes=64)
    text = "🎉é漢" * 30
    log: list[Sent] = []
    for i, char in enumerate(text):
        collect(log, i * 0.01, stream.text(char, i * 0.01))
    collect(log, 9.0, stream.end(9.0))
    check_shape(log, stream)
    assert "".join(final_bodies(log)) == text


def test_whitespace_tail_after_a_full_part_is_not_posted() -> None:
    stream = AnswerStream(first_delay=0, max_bytes=100)
    log: list[Sent] = []
    collect(log, 0.0, stream.text("a" * 75, 0.0))
    collect(log, 0.1, stream.text("\n", 0.1))
    collect(log, 0.2, stream.end(0.2))
    assert final_bodies(log) == ["a" * 75]


# --- tools -----------------------------------------------------------------------------


def test_tool_calls_show_as_one_status_line_replaced_and_removed() -> None:
    stream = AnswerStream(first_delay=0, min_interval=1.0)
    assert stream.text("Let me look.", 0.0) == [PostPart(0, "Let me look.")]
    assert stream.tool_call("search", 1.0) == [EditPart(0, 1, "Let me look.\n\n⚙ running search…")]
    assert stream.tool_call("search", 1.5) == []  # argument chunks of the same call
    assert stream.tool_call("fetch_page", 1.6) == []
    assert stream.tick(2.0) == [EditPart(0, 2, "Let me look.\n\n⚙ running fetch_page…")]
    assert stream.tool_result("search", 2.5) == []  # not the tool shown
    assert stream.tool_result("fetch_page", 3.0) == [EditPart(0, 3, "Let me look.")]
    assert stream.tool_call("calc", 3.1) == []  # throttled: shown at the next tick, if any
    assert stream.end(3.2) == []  # the message already shows the whole answer


def test_status_line_alone_can_start_the_answer_and_goes_at_the_end() -> None:
    stream = AnswerStream(first_delay=1.0)
    assert stream.tool_call("search", 0.0) == []
    assert stream.tick(1.0) == [PostPart(0, "⚙ running search…")]
    assert stream.text("Found it.", 1.2) == []
    assert stream.end(1.3) == [EditPart(0, 1, "Found it.")]


def test_tool_only_answer_ends_with_the_empty_answer_note() -> None:
    stream = AnswerStream(first_delay=0)
    assert stream.tool_call("search", 0.0) == [PostPart(0, "⚙ running search…")]
    assert stream.end(5.0) == [EditPart(0, 1, EMPTY)]


def test_a_short_tool_never_flashes_a_message() -> None:
    stream = AnswerStream(first_delay=1.0)
    assert stream.tool_call("ls", 0.0) == []
    assert stream.tool_result(None, 0.2) == []
    assert stream.next_due() is None
    assert stream.text("ok", 0.4) == []
    assert stream.end(0.5) == [PostPart(0, "ok")]


def test_tool_names_are_cleaned_and_shortened() -> None:
    stream = AnswerStream(first_delay=0)
    [post] = stream.tool_call("evil\x1b[2J\nname" + "x" * 100, 0.0)
    assert "\x1b" not in post.body and "\n" not in post.body
    assert len(post.body) < 80
    stream2 = AnswerStream(first_delay=0)
    assert stream2.tool_call("", 0.0) == [PostPart(0, "⚙ running a tool…")]


# --- failures and odd input ----------------------------------------------------------


def test_failure_appends_the_marker_to_the_last_part() -> None:
    stream = AnswerStream(first_delay=0)
    stream.text("Half an ans", 0.0)
    stream.tool_call("search", 0.1)
    assert stream.fail("⚠ The agent failed: connection lost.", 0.2) == [
        EditPart(0, 1, "Half an ans\n\n⚠ The agent failed: connection lost.")
    ]
    assert stream.finished


def test_failure_before_any_text_posts_the_marker_alone() -> None:
    stream = AnswerStream()
    assert stream.fail(INTERRUPTED, 0.0) == [PostPart(0, INTERRUPTED)]


def test_empty_answer_gets_a_note() -> None:
    assert AnswerStream().end(0.0) == [PostPart(0, EMPTY)]
    assert AnswerStream(empty_answer="(nothing)").end(0.0) == [PostPart(0, "(nothing)")]


def test_input_after_the_end_is_ignored() -> None:
    stream = AnswerStream(first_delay=0)
    stream.text("answer", 0.0)
    stream.end(1.0)
    assert stream.text("late chunk", 1.1) == []
    assert stream.tool_call("x", 1.2) == []
    assert stream.tool_result("x", 1.2) == []
    assert stream.tick(9.0) == []
    assert stream.end(9.0) == []
    assert stream.fail("boom", 9.0) == []
    assert stream.next_due() is None


def test_time_running_backwards_does_not_break_the_throttle() -> None:
    stream = AnswerStream(first_delay=0, min_interval=1.0)
    assert stream.text("a", 100.0) == [PostPart(0, "a")]
    assert stream.text("b", 50.0) == []
    assert stream.tick(100.5) == []
    assert stream.tick(101.0) == [EditPart(0, 1, "ab")]


def test_lone_surrogates_become_replacement_characters() -> None:
    stream = AnswerStream(first_delay=0)
    [post] = stream.text("a\ud800b", 0.0)
    assert post.body == "a\ufffdb"
    post.body.encode("utf-8")


@pytest.mark.parametrize(
    "kwargs",
    [{"min_interval": -1}, {"first_delay": -0.1}, {"max_edits": 0}, {"max_bytes": 63}, {"max_parts": 0}],
)
def test_invalid_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AnswerStream(**kwargs)


# --- sizes and counts (issue 10) ----------------------------------------------------


def test_the_final_edit_of_a_full_part_stays_under_the_event_limit() -> None:
    """An edit carries the body twice; with the default part size the whole
    content, escapes included, leaves room for the event's envelope."""
    stream = AnswerStream(first_delay=0)
    worst = '"\\' * 40_000  # each character doubles in JSON
    log: list[Sent] = []
    collect(log, 0, stream.text("start", 0))
    collect(log, 1, stream.text(worst, 1))
    collect(log, 2, stream.end(2))
    for sent in log:
        body = sent.action.body
        assert json_size(body) <= PART_BYTES
        event = contents.edit("$target", {**contents.text(body), "org.lambda.source": "$x", "org.lambda.done": True})
        import json

        assert len(json.dumps(event, ensure_ascii=False).encode()) < 65_536 - 3_000
    assert "".join(final_bodies(log)) == "start" + worst


def test_json_size_counts_escapes() -> None:
    assert json_size("ab") == 2
    assert json_size('"') == 2 and json_size("\n") == 2 and json_size("\x00") == 6
    assert json_size("é") == 2 and json_size("🎉") == 4
    assert json_size(_fit('"' * 100, 51)) <= 51


def test_an_answer_over_max_parts_is_cut_with_a_note() -> None:
    stream = AnswerStream(first_delay=0, max_bytes=1000, max_parts=2)
    log: list[Sent] = []
    collect(log, 0, stream.text("a" * 5000, 0))
    collect(log, 1, stream.text("more text that is dropped", 1))
    collect(log, 2, stream.end(2))
    bodies = final_bodies(log)
    assert len(bodies) == 2 and stream.cut
    assert bodies[1].endswith("\n\n" + CUT_NOTE.format(parts=2))
    assert "dropped" not in "".join(bodies)
    assert all(json_size(b) <= 1000 for b in bodies)


def test_a_cut_answer_that_fails_keeps_the_note_and_the_marker() -> None:
    stream = AnswerStream(first_delay=0, max_bytes=400, max_parts=1)
    log: list[Sent] = []
    collect(log, 0, stream.text("b" * 1000, 0))
    collect(log, 1, stream.fail(INTERRUPTED, 1))
    (body,) = final_bodies(log)
    assert "cut here" in body and "interrupted" in body
    assert json_size(body) <= 400


# --- properties --------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["text", "text", "text", "tool", "result", "tick"]),
        st.text(max_size=30) | st.sampled_from(["\n", "🎉" * 20, "line\n" * 10, "x" * 200]),
        st.floats(min_value=0, max_value=2.5),
    ),
    max_size=60,
)
limits = st.fixed_dictionaries(
    {
        "max_bytes": st.sampled_from([64, 65, 66, 67, 100, 1000]),
        "max_edits": st.sampled_from([1, 2, 5, 50]),
        "min_interval": st.sampled_from([0.0, 0.5, 1.0]),
        "first_delay": st.sampled_from([0.0, 1.0]),
    }
)


def play(stream: AnswerStream, script: list[tuple[str, str, float]]) -> tuple[list[Sent], str, float]:
    log: list[Sent] = []
    now = 0.0
    full = []
    for kind, arg, dt in script:
        now += dt
        if kind == "text":
            full.append(arg)
            collect(log, now, stream.text(arg, now))
        elif kind == "tool":
            collect(log, now, stream.tool_call(arg, now))
        elif kind == "result":
            collect(log, now, stream.tool_result(None, now))
        else:
            collect(log, now, stream.tick(now))
        due = stream.next_due()
        assert due is None or due >= now or stream.tick(now) == []
    return log, "".join(full), now


@settings(max_examples=400, deadline=None)
@given(limits, events)
def test_property_parts_read_in_order_are_exactly_the_answer(kwargs: dict, script: list) -> None:
    stream = AnswerStream(**kwargs)
    log, full, now = play(stream, script)
    collect(log, now + 0.01, stream.end(now + 0.01))
    check_shape(log, stream)
    joined = "".join(final_bodies(log))
    if not full.strip():
        assert joined == EMPTY[: len(joined)]
    else:
        # Only an unreadable whitespace-only tail after a full part may be left out.
        assert full.startswith(joined)
        assert full[len(joined) :].strip() == ""
    assert "⚙" not in joined or "⚙" in full


@settings(max_examples=200, deadline=None)
@given(limits, events, st.text(min_size=1, max_size=40).filter(lambda m: m.strip()))
def test_property_failure_keeps_the_text_and_ends_with_the_marker(kwargs: dict, script: list, marker: str) -> None:
    stream = AnswerStream(**kwargs)
    log, full, now = play(stream, script)
    collect(log, now, stream.fail(marker, now))
    check_shape(log, stream)
    joined = "".join(final_bodies(log))
    shown_marker = _fit(marker.strip(), min(512, stream.max_bytes // 4) - 4)
    assert joined.endswith(shown_marker)
    kept = joined[: len(joined) - len(shown_marker)].removesuffix("\n\n")
    assert full.startswith(kept) and full[len(kept) :].strip() == ""


@settings(max_examples=200, deadline=None)
@given(limits, events)
def test_property_ticking_when_due_always_flushes(kwargs: dict, script: list) -> None:
    """A caller that sleeps until next_due() and ticks is shown the latest text."""
    stream = AnswerStream(**kwargs)
    log, full, now = play(stream, script)
    for _ in range(200):
        due = stream.next_due()
        if due is None:
            break
        now = max(now, due)
        assert collect(log, now, stream.tick(now)) or stream.next_due() != due
    check_shape(log, stream)
    # Drained: unless the last part ran out of intermediate edits, what the
    # user sees is all the text so far (plus the status line, if any).
    last_part = [s for s in log if s.action.part_no == log[-1].action.part_no] if log else []
    if full.strip() and len(last_part) < stream.max_edits:
        shown = log[-1].action.body
        text = shown.rsplit("\n\n⚙", 1)[0] if "⚙" not in full else shown
        # (A whitespace-only start of a new part is not shown until text follows.)
        assert full.rstrip().endswith(text.rstrip()) or shown.startswith("⚙")
