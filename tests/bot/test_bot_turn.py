"""The turn machine (bot/turn.py): one test per rule of its docstring and of
connection.py's, with no socket and no homeserver."""

from __future__ import annotations

from lambda_actors.agent import protocol as p
from lambda_actors.approvals.agent import confirmation_id
from lambda_actors.agent.client import (
    AgentBusy,
    AgentClosed,
    AgentDropped,
    AgentStalled,
    AgentUnreachable,
    FrameTooLarge,
    Late,
    NoStatus,
    TooManyFrames,
)
from lambda_actors.bot.limits import Limits
from lambda_actors.bot.streaming import INTERRUPTED, EditPart, PostPart
from lambda_actors.bot.turn import (
    AGENT_FAILED,
    INTERRUPTED_KIND,
    LIMIT_KIND,
    Ask,
    VERDICT_GRACE,
    Deliveries,
    Fetch,
    Finish,
    Log,
    OutsideAnswer,
    Reply,
    Say,
    Show,
    Turn,
    TurnSettings,
    confirmation_key,
    failure_text,
)

SETTINGS = TurnSettings(label="Agent 0", namespace="agent-0/7", edit_interval=1.0, confirmation_timeout=60.0)


def turn(**limits: int) -> Turn:
    settings = SETTINGS if not limits else TurnSettings(
        label="Agent 0", namespace="agent-0/7", confirmation_timeout=60.0, limits=Limits(**limits)
    )
    return Turn(settings, "$event")


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def shown(actions: list) -> list:
    return [part for a in actions if isinstance(a, (Show, Finish)) for part in a.parts]


# --- rule 1: streaming -------------------------------------------------------------


def test_text_streams_through_the_answer_stream_and_ticks_when_due() -> None:
    t = turn()
    assert t.frame(p.TextChunk("hel"), 0.0) == []
    due = t.next_due()
    assert due == 1.0  # first_delay of the stream
    (show,) = t.tick(due)
    assert show == Show((PostPart(0, "hel"),))
    t.frame(p.TextChunk("lo"), 1.5)
    assert shown(t.tick(t.next_due())) == [EditPart(0, 1, "hello")]


def test_tool_frames_show_a_status_line() -> None:
    t = turn()
    t.frame(p.ToolCallChunk(tool_name="search", args="{}"), 0.0)
    assert "running search" in shown(t.tick(1.0))[0].body


def test_a_long_answer_is_cut_at_answer_parts_with_a_note() -> None:
    t = Turn(TurnSettings(label="A", namespace="a/1", limits=Limits(answer_parts=2), part_bytes=1000), "$e")
    t.frame(p.TextChunk("x" * 5000), 0.0)
    parts = shown(t.frame(p.End(), 1.0))
    assert t.stream.cut
    assert {part.part_no for part in parts} <= {0, 1}
    assert "cut here" in parts[-1].body


# --- rule 2: the end ------------------------------------------------------------------


def test_end_finishes_with_the_whole_answer_and_no_error() -> None:
    t = turn()
    t.frame(p.TextChunk("all of it"), 0.0)
    (finish,) = t.frame(p.End(), 0.1)
    assert finish == Finish((PostPart(0, "all of it"),), None)
    assert t.finished and t.next_due() is None


def test_end_with_nothing_new_repeats_the_last_edit_with_the_done_marker() -> None:
    t = turn()
    t.frame(p.TextChunk("shown"), 0.0)
    t.tick(1.0)  # posted
    (finish,) = t.frame(p.End(), 1.1)
    assert finish.parts == (EditPart(0, 1, "shown"),)


def test_end_after_unreadable_frames_says_so() -> None:
    t = turn()
    t.frame(p.TextChunk("answer"), 0.0)
    logs = t.frame(p.MalformedFrame(reason="not JSON"), 0.1)
    assert of(logs, Log)[0].level == "warning"
    (finish,) = t.frame(p.End(), 0.2)
    assert "1 unreadable frame(s)" in finish.parts[-1].body


def test_an_error_frame_finishes_as_agent_failed_with_the_agents_message() -> None:
    t = turn()
    (finish,) = t.frame(p.AgentError(message="disk full"), 0.0)
    assert finish.error == AGENT_FAILED
    assert "Agent 0 reported an error: disk full" in finish.parts[-1].body


# --- rule 3: failure --------------------------------------------------------------------


def test_a_failed_socket_keeps_the_text_and_blames_the_agent_in_users_words() -> None:
    t = turn()
    t.frame(p.TextChunk("half an"), 0.0)
    error = AgentDropped("ws://secret@host/v1/agent_ws/7/", "closed mid-answer", 1006, None)
    (finish,) = t.fail(failure_text("Agent 0", error), AGENT_FAILED)
    body = finish.parts[-1].body
    assert body.startswith("half an") and "could not answer: it closed the connection" in body
    assert "ws://" not in body and finish.error == AGENT_FAILED


def test_a_stop_says_interrupted_and_never_blames_the_agent() -> None:
    t = turn()
    t.frame(p.TextChunk("working on it"), 0.0)
    (finish,) = t.fail(INTERRUPTED, INTERRUPTED_KIND)
    assert finish.error == INTERRUPTED_KIND
    assert "interrupted" in finish.parts[-1].body and "could not answer" not in finish.parts[-1].body


def test_failure_texts_name_the_cause_for_users() -> None:
    url = "ws://h/v1/agent_ws/1/"
    cases = {
        AgentBusy(url, "x", 409): "another client holds this chat",
        AgentUnreachable(url, "x"): "cannot be reached",
        NoStatus(url, "x"): "did not get ready",
        AgentStalled(url, "x"): "stopped responding",
        FrameTooLarge(url, "x"): "too large",
        TooManyFrames(url, "x"): "more than it was asked for",
        AgentClosed(url, "x"): "closed the connection",
    }
    for error, words in cases.items():
        text = failure_text("Agent 0", error)
        assert words in text and text.endswith("Please send your message again.") and "ws://" not in text


def test_inputs_after_the_end_change_nothing() -> None:
    t = turn()
    t.frame(p.End(), 0.0)
    assert of(t.frame(p.TextChunk("late"), 0.1), Show) == []
    assert t.fail(INTERRUPTED, INTERRUPTED_KIND) == []
    assert t.tick(5.0) == []


# --- rule 4: confirmations -------------------------------------------------------------


def ask(t: Turn, request_id: str = "r1", action: str = "delete_file", details: str = "old.txt", now: float = 0.0) -> list:
    return t.frame(p.CustomUpdate(payload={}, confirm=p.ConfirmRequest(request_id, action, details)), now)


def test_a_confirmation_is_asked_under_a_key_namespaced_by_agent_and_chat() -> None:
    t = turn()
    (question,) = ask(t)
    assert question == Ask("agent-0/7/r1", 0, "delete_file", "old.txt")
    assert question.key == confirmation_key("agent-0/7", "r1")
    # Two agents using the same request id never share a key.
    other = Turn(TurnSettings(label="B", namespace="agent-1/7"), "$e2")
    assert ask(other)[0].key != question.key


def test_confirmations_are_numbered_in_the_order_the_answer_asks_them() -> None:
    # The number goes into the record's id: a replayed turn asking the same
    # things in the same order finds the same records.
    t = turn()
    assert [a.number for a in ask(t, "r1") + ask(t, "r2") + ask(t, "r3")] == [0, 1, 2]


def test_a_confirmations_record_id_comes_from_what_caused_it() -> None:
    # A turn replayed after a crash asks the same thing: the same record, and
    # an answer given meanwhile counts. Anything else is another record.
    same = confirmation_id("$event", "agent-0/7", 0, "delete_file", "old.txt")
    assert same == confirmation_id("$event", "agent-0/7", 0, "delete_file", "old.txt") and same.startswith("apr_")
    others = {
        confirmation_id("$other", "agent-0/7", 0, "delete_file", "old.txt"),
        confirmation_id("$event", "agent-1/7", 0, "delete_file", "old.txt"),
        confirmation_id("$event", "agent-0/7", 1, "delete_file", "old.txt"),
        confirmation_id("$event", "agent-0/7", 0, "delete_dir", "old.txt"),
        confirmation_id("$event", "agent-0/7", 0, "delete_file", "new.txt"),
    }
    assert same not in others and len(others) == 5


def test_the_gates_verdict_goes_to_the_agent_under_its_own_id() -> None:
    t = turn()
    (question,) = ask(t)
    assert t.decided(question.key, True) == [Reply("r1", True)]
    # Decided once; a repeat is stale.
    assert of(t.decided(question.key, False), Reply) == []


def test_a_verdict_for_another_key_is_ignored() -> None:
    t = turn()
    ask(t)
    assert of(t.decided("agent-1/7/r1", True), Reply) == []
    assert of(t.decided("r1", True), Reply) == []


def test_a_request_id_used_twice_is_refused_at_once() -> None:
    t = turn()
    ask(t)
    again = ask(t, now=1.0)
    assert Reply("r1", False) in again and of(again, Ask) == []


def test_a_long_confirmation_text_is_cut_with_a_note_never_refused() -> None:
    t = turn(confirmation_chars=100)
    (question,) = ask(t, action="a" * 80, details="d" * 10_000)
    assert len(question.action) == 80
    assert question.details.startswith("d" * 20) and "more characters not shown" in question.details
    assert len(question.details) < 200


def test_with_no_verdict_past_the_deadline_and_its_grace_the_turn_says_no_itself() -> None:
    # The gate expires the record on time; this is for a gate that is away.
    t = turn()
    (question,) = ask(t, now=0.0)
    assert t.next_due() == 60.0 + VERDICT_GRACE
    assert of(t.tick(60.0), Reply) == []
    gave_up = t.tick(60.0 + VERDICT_GRACE)
    assert Reply("r1", False) in gave_up and of(gave_up, Say)[0].body.startswith("⌛ No answer reached me in time, so no")
    assert t.tick(100.0) == [] and of(t.decided(question.key, True), Reply) == []  # said once


def test_a_gate_that_cannot_be_asked_means_no_at_once_and_the_owner_hears_why() -> None:
    t = turn()
    (question,) = ask(t)
    refused = t.not_asked(question.key)
    assert Reply("r1", False) in refused
    assert "could not ask you" in of(refused, Say)[0].body
    assert t.pending_keys == frozenset() and t.not_asked(question.key) == []


def test_the_end_of_a_turn_drops_its_pending_confirmations() -> None:
    t = turn()
    ask(t)
    t.frame(p.End(), 1.0)
    assert t.pending_keys == frozenset()


# --- rule 5: files ----------------------------------------------------------------------


def test_files_are_fetched_numbered_up_to_the_limit_then_one_note() -> None:
    t = turn(answer_files=2)
    actions = [a for n in range(5) for a in t.frame(p.SendFile(path=f"out/{n}.txt"), 0.0)]
    assert of(actions, Fetch) == [Fetch(0, "out/0.txt"), Fetch(1, "out/1.txt")]
    (note,) = of(actions, Say)
    assert note.error == LIMIT_KIND and "more than 2 files" in note.body


# --- rule 6: other frames ------------------------------------------------------------------


def test_status_late_unknown_and_progress_frames_change_nothing() -> None:
    t = turn()
    for frame in (
        p.Status(state="ready", chat_id="7"),
        Late(p.TextChunk("old")),
        p.UnknownFrame(type="AGENT_EVENT_NEW", raw={}),
        p.CustomUpdate(payload={"kind": "progress"}),
    ):
        actions = t.frame(frame, 0.0)
        assert all(isinstance(a, Log) for a in actions), frame
    assert t.next_due() is None


# --- the connection's books ------------------------------------------------------------------


def test_deliveries_are_queued_in_order_and_never_overwritten() -> None:
    queue: Deliveries[str] = Deliveries()
    assert queue.offer("$a", "first") and queue.offer("$b", "second")
    assert queue.take() == "first"
    assert not queue.offer("$a", "again")  # the current turn, delivered twice
    assert not queue.offer("$b", "again")  # already waiting
    queue.done()
    assert queue.take() == "second"
    assert queue.offer("$c", "third") and queue.drain() == ["third"] and len(queue) == 0


def test_frames_outside_an_answer_are_bounded_between_answers() -> None:
    outside = OutsideAnswer(budget=3)
    assert [outside.frame() for _ in range(4)] == [False, False, False, True]
    outside.answer_started()
    assert outside.frame() is False
