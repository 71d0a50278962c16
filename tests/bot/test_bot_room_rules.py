"""The room's rules (bot/room_rules.py), one test per rule of its docstring, no homeserver."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambda_actors.approvals.gate import Answer
from lambda_actors.approvals.record import Via
from lambda_actors.bot import room_rules as r
from lambda_actors.bot.actors.services import ERROR_KEY, POISON_MARK
from lambda_actors.bot.commands import HELP_TEXT
from lambda_actors.bot.config import AgentConfig, AgentsConfig
from lambda_actors.bot.limits import Limits
from lambda_actors.bot.store import RoomBinding, StagedFile
from lambda_actors.matrix import events as ev

BOT, ALICE, BOB, MALLORY = "@bot:x", "@alice:x", "@bob:x", "@mallory:x"
ROOM = "!room:x"
NOW = 1_700_000_000.0
AGENTS = AgentsConfig(
    agents=(
        AgentConfig("agent-0", "Agent 0", "http://a0", Path("/w0"), max_file_bytes=1000),
        AgentConfig("agent-1", "Agent 1", "http://a1", Path("/w1")),
    ),
    user_agents={ALICE: "agent-0", BOB: "agent-1"},
    limits=Limits(rooms_per_user_per_hour=3, staged_bytes_per_room=5000),
)
BOUND = RoomBinding(ROOM, ALICE, "agent-0", 7, "Chat 1", "!space:x")
FACTS = r.RoomFacts(room_id=ROOM, bot_user_id=BOT, binding=BOUND, owner_rooms=(BOUND,))


def text(body: str, sender: str = ALICE, event_id: str = "$t") -> ev.TextMessage:
    return ev.TextMessage(event_id, ROOM, sender, 1, "m.text", body)


def invite(sender: str = ALICE, *, direct: bool = True, members: int | None = 1, encrypted: bool = False) -> ev.Invite:
    return ev.Invite("", ROOM, sender, 0, is_direct=direct, room_name=None, member_count=members, encrypted=encrypted)


def file(size: int | None = 100) -> ev.FileMessage:
    return ev.FileMessage("$f", ROOM, ALICE, 1_700_000_000_000, "m.file", "mxc://x/abc", "a.txt", None, size, "a.txt")


def rules(**kwargs) -> r.RoomRules:
    return r.RoomRules(kwargs.pop("agents", AGENTS), **kwargs)


def finish_bodies(actions: list) -> list[str]:
    [last] = [a for a in actions if isinstance(a, r.Finish)]
    return [say.body for say in last.says]


def says(actions: list) -> list[r.Say]:
    found: list[r.Say] = []
    for action in actions:
        if isinstance(action, r.Finish):
            found.extend(action.says)
        elif isinstance(action, (r.Post, r.SetAside, r.SayNow)):
            found.append(action.say)
    return found


# -- 1. poison -----------------------------------------------------------------------


def test_an_event_that_crashed_the_room_three_times_is_set_aside_with_a_notice():
    [action] = rules().handle(text("hello"), replace(FACTS, failures=r.POISON_LIMIT), NOW)
    assert isinstance(action, r.SetAside)
    assert "could not be handled and was set aside; the operator has the details" in action.say.body
    assert action.say.error == "set_aside"


def test_an_event_that_crashed_fewer_times_is_handled_again():
    actions = rules().handle(text("hello"), replace(FACTS, failures=r.POISON_LIMIT - 1), NOW)
    assert [type(a) for a in actions] == [r.Deliver]


def test_the_poison_fault_crashes_on_its_mark_only_when_injected():
    with pytest.raises(r.InjectedFault):
        rules(faults=frozenset({"poison"})).handle(text(f"x {POISON_MARK} y"), FACTS, NOW)
    assert [type(a) for a in rules().handle(text(f"x {POISON_MARK} y"), FACTS, NOW)] == [r.Deliver]
    # Even with the fault on, a poison event already set aside is not handled again.
    [aside] = rules(faults=frozenset({"poison"})).handle(text(POISON_MARK), replace(FACTS, failures=3), NOW)
    assert isinstance(aside, r.SetAside)


# -- 2. our own events, unusable events ----------------------------------------------------


def test_our_own_events_and_unusable_ones_are_just_marked_handled():
    assert rules().handle(text("echo", sender=BOT), FACTS, NOW) == [r.Finish()]
    assert rules().handle(None, FACTS, NOW) == [r.Finish()]


# -- 3. invitations ------------------------------------------------------------------------


def test_a_configured_users_first_invite_joins_onboards_and_binds_the_direct_chat():
    facts = r.RoomFacts(room_id=ROOM, bot_user_id=BOT)
    join, onboard = rules().handle(invite(), facts, NOW)
    assert join == r.Join()
    assert onboard == r.Onboard(ALICE, "agent-0", create_first_chat=True, bind_here=True, room_name="Direct chat", encrypted=False)


def test_a_repeated_invite_creates_no_second_chat():
    facts = r.RoomFacts(room_id="!dm2:x", bot_user_id=BOT, owner_rooms=(BOUND,))
    _, onboard = rules().handle(invite(), facts, NOW)
    assert onboard.create_first_chat is False


def test_an_encrypted_invite_is_not_bound_and_is_welcomed_with_where_to_talk():
    _, onboard = rules().handle(invite(encrypted=True), r.RoomFacts(room_id=ROOM, bot_user_id=BOT), NOW)
    assert onboard.bind_here is False and onboard.encrypted is True
    welcome = r.welcome("Agent 0", ALICE, "Chat 1", [BOUND], encrypted=True)
    assert "“Chat 1” in your Space “Lambda — alice”" in welcome.body and welcome.error == "encrypted"


def test_an_unknown_user_is_refused_before_the_bot_leaves():
    actions = rules().handle(invite(MALLORY), r.RoomFacts(room_id=ROOM, bot_user_id=BOT), NOW)
    kinds = [type(a) for a in actions]
    assert kinds[:4] == [r.Join, r.SayNow, r.Leave, r.Finish]
    assert "Sorry, I only work for" in actions[1].say.body


def test_a_group_room_from_an_unknown_user_is_left_without_joining_or_a_word():
    actions = rules().handle(invite(MALLORY, direct=False, members=3), r.RoomFacts(room_id=ROOM, bot_user_id=BOT), NOW)
    assert [type(a) for a in actions] == [r.Log, r.Leave, r.Finish] and says(actions) == []


def test_the_welcome_names_the_first_chat_and_the_space():
    welcome = r.welcome("Agent 0", ALICE, "Chat 1", [BOUND], encrypted=False)
    assert "“Chat 1”" in welcome.body and "Lambda — alice" in welcome.body and HELP_TEXT in welcome.body
    assert welcome.error is None


# -- 4. adoption -----------------------------------------------------------------------------


def test_an_unbound_room_asks_for_its_members_then_adopts_a_direct_chat():
    facts = r.RoomFacts(room_id=ROOM, bot_user_id=BOT)
    assert rules().handle(text("hi"), facts, NOW) == [r.NeedMembers()]
    bind, log, again = rules().handle(text("hi"), replace(facts, members=frozenset({ALICE, BOT})), NOW)
    assert isinstance(bind, r.Bind) and bind.fresh_context and bind.binding.owner == ALICE and bind.binding.agent_id == "agent-0"
    assert again == r.Again()


def test_a_room_marked_as_the_nodes_own_is_never_adopted():
    # A DAG status room: the bot and a run's owner, who writes in it.
    facts = r.RoomFacts(room_id=ROOM, bot_user_id=BOT, members=frozenset({ALICE, BOT}), service_room=True)
    actions = rules().handle(text("hi"), facts, NOW)
    assert actions[-1] == r.Finish() and not any(isinstance(a, r.Bind) for a in actions)


def test_an_unbound_room_with_others_in_it_is_not_adopted():
    facts = r.RoomFacts(room_id=ROOM, bot_user_id=BOT, members=frozenset({ALICE, BOB, BOT}))
    actions = rules().handle(text("hi"), facts, NOW)
    assert actions[-1] == r.Finish() and not any(isinstance(a, r.Bind) for a in actions)


# -- 5. not the owner -----------------------------------------------------------------------


def test_nothing_from_a_non_owner_reaches_the_agent_or_gets_an_answer():
    for event in (text("hi", sender=BOB), text("!new", sender=BOB), text("!yes", sender=MALLORY)):
        actions = rules().handle(event, FACTS, NOW)
        assert actions == [r.Finish()]


# -- 6. encryption ----------------------------------------------------------------------------


def test_the_room_becoming_encrypted_gets_a_notice_naming_where_to_talk():
    event = ev.OtherEvent("$e", ROOM, ALICE, 1, "m.room.encryption", {"algorithm": "x"}, "")
    [finish] = rules().handle(event, FACTS, NOW)
    [say] = finish.says
    assert say.error == "encrypted" and "“Chat 1”" in say.body
    assert "invite me to one" in r.encrypted_notice(ALICE, [])


# -- 7. configuration drift -------------------------------------------------------------------


def test_a_room_whose_agent_was_removed_is_rebound_to_the_owners_agent_in_a_fresh_context():
    retired = replace(BOUND, agent_id="agent-9")
    room_rules = rules()
    log, bind, post, again = room_rules.handle(text("hi"), replace(FACTS, binding=retired), NOW)
    assert isinstance(log, r.Log) and log.level == "warning" and log.event == "room.agent_removed"
    assert bind == r.Bind(replace(retired, agent_id="agent-0"), fresh_context=True)
    assert "agent-9" in post.say.body and "Agent 0" in post.say.body and "fresh conversation" in post.say.body
    assert post.say.error == "agent_removed" and post.say.done is False
    assert again == r.Again()


def test_a_room_whose_agent_is_gone_with_no_replacement_answers_so_and_warns_once():
    agents = replace(AGENTS, user_agents={BOB: "agent-1"})
    retired = replace(BOUND, agent_id="agent-9")
    room_rules = rules(agents=agents)
    first = room_rules.handle(text("hi", event_id="$1"), replace(FACTS, binding=retired), NOW)
    second = room_rules.handle(text("again", event_id="$2"), replace(FACTS, binding=retired), NOW)
    assert [type(a) for a in first] == [r.Log, r.Finish] and [type(a) for a in second] == [r.Finish]
    [say] = says(second)
    assert say.error == "agent_removed" and "no longer configured" in say.body


def test_bindings_to_retired_agents_are_found_at_start():
    retired = replace(BOUND, room_id="!old:x", agent_id="agent-9")
    archived = replace(retired, room_id="!older:x", archived=True)
    assert r.drifted_bindings([BOUND, retired, archived], AGENTS) == [retired]


# -- 8. approvals (the API's requests and the agents' confirmations: one gate) -------------------

APPROVAL = r.ApprovalPrompt("apr_1", "deploy", "$approval-prompt")
OTHER_APPROVAL = r.ApprovalPrompt("apr_2", "drop the table", "$other-prompt")


def reply(body: str, to: str) -> ev.TextMessage:
    return ev.TextMessage("$t", ROOM, ALICE, 1_700_000_000_500, "m.text", body, reply_to=to)


def test_a_reaction_on_a_prompt_goes_to_the_nodes_gate_with_its_send_time():
    facts = replace(FACTS, approvals=(APPROVAL, OTHER_APPROVAL))
    [ask] = rules().handle(ev.Reaction("$r", ROOM, ALICE, 1_700_000_000_500, "❌", "$other-prompt"), facts, NOW)
    assert ask == r.AskApprovals(Answer(ALICE, False, Via.REACTION, 1_700_000_000.5, "apr_2"))
    assert rules().handle(ev.Reaction("$r", ROOM, ALICE, 1, "✅", "$elsewhere"), facts, NOW) == [r.Finish()]
    assert rules().handle(ev.Reaction("$r", ROOM, ALICE, 1, "🎉", "$approval-prompt"), facts, NOW) == [r.Finish()]


def test_a_yes_in_reply_to_a_prompt_answers_that_prompt_whatever_else_waits():
    facts = replace(FACTS, approvals=(APPROVAL, OTHER_APPROVAL))
    [ask] = rules().handle(reply("!yes", "$approval-prompt"), facts, NOW)
    assert ask == r.AskApprovals(Answer(ALICE, True, Via.COMMAND, 1_700_000_000.5, "apr_1"))
    [ask] = rules().handle(reply("!no", "$other-prompt"), facts, NOW)
    assert ask == r.AskApprovals(Answer(ALICE, False, Via.COMMAND, 1_700_000_000.5, "apr_2"))


@pytest.mark.parametrize("waiting", [(APPROVAL,), (APPROVAL, OTHER_APPROVAL)])
def test_a_bare_yes_or_no_goes_to_the_gate_which_decides_the_one_waiting_or_asks_which(waiting):
    # One gate, not two: the rules never pick among records themselves.
    [ask] = rules().handle(text("!no"), replace(FACTS, approvals=waiting), NOW)
    assert ask == r.AskApprovals(Answer(ALICE, False, Via.COMMAND, 0.001, None))


def test_a_bare_yes_with_nothing_waiting_says_so_and_asks_nobody():
    assert finish_bodies(rules().handle(text("!yes"), FACTS, NOW)) == ["Nothing is waiting for your answer."]


def test_context_lists_everything_waiting_for_an_answer():
    [body] = finish_bodies(rules().handle(text("!context"), replace(FACTS, approvals=(APPROVAL, OTHER_APPROVAL)), NOW))
    assert "Waiting for your answer: deploy; drop the table" in body


# -- 9. files -----------------------------------------------------------------------------------


def test_a_file_is_downloaded_within_the_agents_size_and_the_rooms_budget():
    [download] = rules().handle(file(), FACTS, NOW)
    assert download == r.Download("mxc://x/abc", "a.txt", "agent-0", 1000, 1_700_000_000_000)
    [nearly_full] = rules().handle(file(), replace(FACTS, staged_bytes=4500), NOW)
    assert nearly_full.max_bytes == 500


def test_a_file_past_the_rooms_staged_budget_is_refused_with_a_limit_notice():
    for facts, event in ((replace(FACTS, staged_bytes=5000), file(None)), (replace(FACTS, staged_bytes=4000), file(2000))):
        [say] = says(rules().handle(event, facts, NOW))
        assert say.error == "limit" and "!remove" in say.body


def test_file_notices_say_what_happened():
    assert r.file_staged("a.txt", 2).body.startswith("📎 a.txt is ready") and "2 files waiting" in r.file_staged("a.txt", 2).body
    refused = r.file_refused("a.txt", "its address is malformed")
    assert refused.error == "file" and "malformed" in refused.body


# -- 10. commands ---------------------------------------------------------------------------------


def test_help_unknown_and_misused_commands_are_answered_without_the_agent():
    assert finish_bodies(rules().handle(text("!help"), FACTS, NOW)) == [HELP_TEXT]
    assert "Unknown command !frob" in finish_bodies(rules().handle(text("!frob"), FACTS, NOW))[0]
    assert "Usage: !rename <name>" in finish_bodies(rules().handle(text("!rename"), FACTS, NOW))[0]


def test_new_creates_a_chat_marked_by_its_event_under_the_hourly_limit():
    [create] = rules().handle(text("!new Research", event_id="$n1"), replace(FACTS, rooms_created_last_hour=2), NOW)
    assert create == r.CreateChat(ALICE, "agent-0", "Research", r.creation_marker("chat", "$n1"))
    [again] = rules().handle(text("!new Research", event_id="$n1"), FACTS, NOW)
    [other] = rules().handle(text("!new Research", event_id="$n2"), FACTS, NOW)
    assert again.marker == create.marker != other.marker


def test_new_at_the_hourly_limit_says_when_to_try_again():
    facts = replace(FACTS, rooms_created_last_hour=3, room_slot_free_at=NOW + 600)
    [finish] = rules().handle(text("!new"), facts, NOW)
    [say] = finish.says
    assert say.error == "limit" and "3 an hour" in say.body and r._clock(NOW + 600) in say.body


def test_remove_drops_the_chosen_file_or_all_and_deletes_them():
    staged = (StagedFile(11, "incoming/a", "a.txt", 10), StagedFile(12, "incoming/b", "b.txt", 10))
    facts = replace(FACTS, staged=staged)
    unstage, finish = rules().handle(text("!remove 2"), facts, NOW)
    assert unstage == r.Unstage((12,)) and finish.says[0].body == "Removed b.txt."
    unstage, finish = rules().handle(text("!remove all"), facts, NOW)
    assert unstage == r.Unstage(None) and finish.says[0].body == "Removed 2 waiting files."
    assert finish_bodies(rules().handle(text("!remove 3"), facts, NOW)) == ["There is no file 3; !list shows 2."]
    assert "1. a.txt\n2. b.txt" in finish_bodies(rules().handle(text("!list"), facts, NOW))[0]


def test_rename_archive_clear_chats_and_context():
    rename, bind, _ = rules().handle(text("!rename Deep"), FACTS, NOW)
    assert rename == r.RenameRoom("Deep") and bind == r.Bind(replace(BOUND, name="Deep"))
    bind, _ = rules().handle(text("!archive"), FACTS, NOW)
    assert bind.binding.archived
    bind, finish = rules().handle(text("!reset"), FACTS, NOW)
    assert bind == r.Bind(BOUND, fresh_context=True) and "Started over" in finish.says[0].body
    assert "• Chat 1 ← here" in finish_bodies(rules().handle(text("!chats"), FACTS, NOW))[0]
    context = finish_bodies(rules().handle(text("!context"), FACTS, NOW))[0]
    assert "Agent: Agent 0 (agent-0) — available" in context and "Chat id: 7" in context


# -- 11. one turn at a time ---------------------------------------------------------------------------


def test_a_text_goes_to_the_agent_only_when_no_turn_is_in_flight():
    room_rules = rules()
    [deliver] = room_rules.handle(text("hi"), FACTS, NOW)
    assert deliver.text == "hi" and (deliver.agent_id, deliver.chat_id) == ("agent-0", 7)
    assert deliver.undeliverable.error == "undeliverable"
    room_rules.turn_started("$t")
    assert room_rules.handle(text("next", event_id="$u"), FACTS, NOW) == [r.Wait()]
    # Commands are not held back by the turn.
    assert finish_bodies(room_rules.handle(text("!help", event_id="$h"), FACTS, NOW)) == [HELP_TEXT]
    assert room_rules.turn_done("$t") and room_rules.in_flight is None


def test_an_archived_room_or_a_parked_agent_answers_at_once():
    [say] = says(rules().handle(text("hi"), replace(FACTS, binding=replace(BOUND, archived=True)), NOW))
    assert say.error == "archived"
    [say] = says(rules().handle(text("hi"), replace(FACTS, parked={"agent-0": NOW + 30}), NOW))
    assert say.error == "agent_unavailable" and "next try at" in say.body


events = st.one_of(
    st.builds(lambda b: text(b), st.sampled_from(["hi", "!help", "!yes", "!no", "!new", "!list", "✅"])),
    st.builds(lambda k: ev.Reaction("$r", ROOM, ALICE, 1, k, "$p"), st.sampled_from(["✅", "❌", "🎉"])),
    st.just(file()),
)


@given(st.lists(events, max_size=12), st.booleans())
def test_past_a_waiting_message_only_confirmation_answers_are_admitted(sequence, waiting):
    for event in sequence:
        admitted = r.admit("$x", event, in_flight="$busy", waiting=waiting)
        assert admitted == (not waiting or r.is_confirmation_answer(event))
        if isinstance(event, ev.Reaction) or (isinstance(event, ev.TextMessage) and event.body in ("!yes", "!no")):
            assert r.is_confirmation_answer(event)
    # The turn in flight itself is never handled twice.
    assert not r.admit("$busy", text("hi"), in_flight="$busy", waiting=False)


@given(st.text(max_size=200), st.integers(min_value=0, max_value=2), st.booleans())
def test_any_text_from_the_owner_gets_a_defined_outcome_and_every_warning_carries_its_kind(body, failures, busy):
    room_rules = rules()
    if busy:
        room_rules.turn_started("$busy")
    actions = room_rules.handle(text(body), replace(FACTS, failures=failures), NOW)
    assert actions and isinstance(actions[-1], (r.Finish, r.Deliver, r.Wait, r.CreateChat, r.AskApprovals))
    for say in says(actions):
        if say.body.startswith("⚠"):
            assert say.error is not None


# -- 12. a lost turn -----------------------------------------------------------------------------------


def test_a_turn_whose_connection_ended_before_answering_ends_with_an_error():
    room_rules = rules()
    room_rules.turn_started("$t")
    event_id, say = room_rules.turn_lost(handled=False)
    assert event_id == "$t" and say.error == "undeliverable" and "became unavailable" in say.body
    assert room_rules.in_flight is None
    room_rules.turn_started("$u")
    assert room_rules.turn_lost(handled=True) is None and room_rules.in_flight is None
    assert room_rules.turn_lost(handled=False) is None  # nothing in flight


def test_a_turn_whose_connection_restarts_waits_for_the_next_incarnation():
    room_rules = rules()
    room_rules.turn_started("$t")
    # The message may still be in the connection's mailbox, which outlives a restart.
    assert room_rules.turn_lost(handled=False, gone_for_good=False) == r.KeepWatching()
    assert room_rules.in_flight == "$t"
    # Answered by then: the turn is over, whether or not TurnDone comes.
    assert room_rules.turn_lost(handled=True, gone_for_good=False) is None and room_rules.in_flight is None


# -- replay-safe creation ------------------------------------------------------------------------------


def test_a_creation_replayed_after_a_crash_finds_its_room_by_the_marker():
    marker = r.creation_marker("chat", "$n1")
    assert marker == r.creation_marker("chat", "$n1") != r.creation_marker("space", "$n1")
    state = r.creation_state(marker)
    assert state["type"] == r.CREATED_STATE and state["content"] == {"marker": marker}
    candidates = r.unknown_rooms(["!known:x", "!a:x", "!b:x"], {"!known:x"})
    assert candidates == ["!a:x", "!b:x"]
    assert r.find_marked({"!a:x": None, "!b:x": {"marker": marker}}, marker) == "!b:x"
    assert r.find_marked({"!a:x": {"marker": "other"}, "!b:x": "junk"}, marker) is None


def test_error_kinds_travel_in_the_notice_content():
    from lambda_actors.bot.actors.services import notice

    item = notice(ROOM, "x", ("$t",), "⚠ no", source="$t", error="set_aside")
    assert item.content[ERROR_KEY] == "set_aside"
    assert ERROR_KEY not in notice(ROOM, "x", ("$t",), "fine").content


# -- the turn rule over whole conversations ------------------------------------------------------------


def _process(room_rules: r.RoomRules, inbox: list, handled: set, delivered: list) -> None:
    """The room actor's loop over its inbox (room.py's ``process``), with the rules alone."""
    facts = replace(FACTS, approvals=(APPROVAL,))
    waiting = False
    for event in inbox:
        if event.event_id in handled or not r.admit(event.event_id, event, room_rules.in_flight, waiting):
            continue
        actions = room_rules.handle(event, facts, NOW)
        last = actions[-1]
        if isinstance(last, r.Deliver):
            room_rules.turn_started(event.event_id)
            delivered.append(event.event_id)
        elif isinstance(last, r.Wait):
            waiting = True
        else:
            handled.add(event.event_id)


@given(st.lists(st.sampled_from(["text", "yes", "help", "done"]), max_size=30))
def test_one_turn_at_a_time_in_order_and_answers_to_confirmations_pass_a_waiting_message(steps):
    room_rules, inbox, handled, delivered = rules(), [], set(), []
    for n, step in enumerate(steps):
        if step == "done":
            if room_rules.in_flight is not None:
                handled.add(room_rules.in_flight)
                assert room_rules.turn_done(room_rules.in_flight)
        else:
            body = {"text": f"message {n}", "yes": "!yes", "help": "!help"}[step]
            inbox.append(text(body, event_id=f"${n}"))
        _process(room_rules, inbox, handled, delivered)
        # At most one turn is with the agent at any time.
        assert len([e for e in delivered if e not in handled]) <= 1
        # A confirmation answer never waits, even behind a waiting message.
        assert all(e.event_id in handled for e in inbox if e.body == "!yes")
    # Texts go to the agent in the order they were written.
    texts = [e.event_id for e in inbox if e.body.startswith("message")]
    assert delivered == texts[: len(delivered)]
    # Once every turn ends, everything has been handled.
    while room_rules.in_flight is not None:
        handled.add(room_rules.in_flight)
        room_rules.turn_done(room_rules.in_flight)
        _process(room_rules, inbox, handled, delivered)
    assert {e.event_id for e in inbox} == handled and delivered == texts


def test_a_refusal_by_the_homeserver_is_told_with_its_code():
    say = r.homeserver_refused("rename this chat", "M_FORBIDDEN")
    assert say.error == "homeserver" and "rename this chat" in say.body and "M_FORBIDDEN" in say.body


# -- only the facts a rule needs are read ------------------------------------------------------------

PENDING_FACTS = replace(
    FACTS,
    approvals=(r.ApprovalPrompt("apr_1", "deploy", "$p"),),
    staged=(StagedFile(11, "incoming/a", "a.txt", 10),),
    staged_bytes=4990,
    rooms_created_last_hour=3,
    room_slot_free_at=NOW + 60,
)
_GROUPS = {
    r.OWNER_ROOMS: ("owner_rooms",),
    r.APPROVALS: ("approvals",),
    r.STAGED: ("staged", "staged_bytes"),
    r.ROOMS_CREATED: ("rooms_created_last_hour", "room_slot_free_at"),
}
_BODIES = ["hi", "!new", "!chats", "!yes", "!no", "!list", "!remove 1", "!remove all", "!context", "!help", "!clear", "!x"]


@given(
    st.one_of(
        st.builds(text, st.one_of(st.sampled_from(_BODIES), st.text(max_size=30))),
        st.builds(lambda k, t: ev.Reaction("$r", ROOM, ALICE, 1, k, t), st.sampled_from(["✅", "❌", "x"]), st.sampled_from(["$p", "$q"])),
        st.builds(lambda n: replace(file(), size=n), st.one_of(st.none(), st.integers(0, 20))),
        st.just(ev.OtherEvent("$e", ROOM, ALICE, 1, "m.room.encryption", {}, "")),
    )
)
def test_the_rules_decide_the_same_with_only_the_facts_they_say_they_need(event):
    needed = r.facts_needed(event)
    defaults = r.RoomFacts(room_id=ROOM, bot_user_id=BOT)
    lean = PENDING_FACTS
    for group, names in _GROUPS.items():
        if group not in needed:
            lean = replace(lean, **{name: getattr(defaults, name) for name in names})
    assert rules().handle(event, lean, NOW) == rules().handle(event, PENDING_FACTS, NOW)


def test_an_approval_waiting_in_an_unbound_room_is_answered_there_by_its_approver():
    # A blocked DAG task asks its run's owner in the status room, which is no chat.
    facts = r.RoomFacts(room_id=ROOM, bot_user_id=BOT, approvals=(APPROVAL,), service_room=True)
    [ask] = rules().handle(ev.Reaction("$r", ROOM, ALICE, 1_700_000_000_500, "✅", "$approval-prompt"), facts, NOW)
    assert ask == r.AskApprovals(Answer(ALICE, True, Via.REACTION, 1_700_000_000.5, "apr_1"))
    [ask] = rules().handle(text("!no"), facts, NOW)
    assert ask == r.AskApprovals(Answer(ALICE, False, Via.COMMAND, 0.001, None))
    # Anything else there, or an answer with nothing waiting for its sender, goes nowhere.
    assert not any(isinstance(a, r.AskApprovals) for a in rules().handle(text("hello"), facts, NOW))
    nothing = replace(facts, approvals=())
    assert not any(isinstance(a, (r.AskApprovals, r.Bind)) for a in rules().handle(text("!yes"), nothing, NOW))
