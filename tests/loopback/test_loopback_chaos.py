"""The loopback profile and the chaos run's counting rules, without a homeserver.

The chaos run itself needs Synapse (``tests/e2e/test_e2e_chaos.py``); how it
reads the bot's log, attributes parks, and tells an answer from a side
notice are pure rules, tested here.
"""

from __future__ import annotations

import json
from pathlib import Path

from lambda_actors.bot.actors.services import DONE_KEY, ERROR_AGENT_REMOVED, ERROR_KEY, SOURCE_KEY
from lambda_actors.loopback.chaos import (
    AnswerSeen,
    ChaosOptions,
    Watcher,
    agent_parks,
    answered_twice,
    expected_echo,
    read_bot_log,
    shows_foreign_text,
)
from lambda_actors.loopback.probe import ProbeSample, recovered_at
from lambda_actors.loopback.profiles import CHAOS, LOOPBACK
from lambda_actors.loopback.user import Seen
from lambda_actors.runtime.supervision_config import load_supervision_config

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_profiles_have_the_shape_of_the_repositorys_supervision_toml():
    production = load_supervision_config(REPOSITORY / "lambda_actors" / "bot" / "supervision.toml")
    for profile in (LOOPBACK, CHAOS):
        config = profile.config()
        assert set(config.entries) == set(production.entries), profile.name
        assert dict(config.defaults) == dict(production.defaults), profile.name


def test_the_chaos_profile_differs_from_the_loopback_one_only_in_its_agent_and_room_numbers():
    connection, agent = "node/agents/agent-2/chat-1", "node/agents/agent-2"
    loopback, chaos = LOOPBACK.config(), CHAOS.config()
    assert (loopback.policy_for(agent).intensity, chaos.policy_for(agent).intensity) == (1, 12)
    assert (loopback.policy_for("node/agents").intensity, chaos.policy_for("node/agents").intensity) == (0, 3)
    assert chaos.policy_for("node/rooms").cool_down == 30.0 and loopback.policy_for("node/rooms").cool_down == 10.0
    for path in ("node", "node/outbox", "node/rooms/!r:x", connection):
        assert loopback.policy_for(path).shutdown == chaos.policy_for(path).shutdown, path
        assert loopback.policy_for(path).restart == chaos.policy_for(path).restart, path


def test_the_profile_written_for_a_bot_process_is_the_one_loaded_in_process(tmp_path):
    path = CHAOS.write(tmp_path / "supervision.toml")
    assert load_supervision_config(path).entries == CHAOS.config().entries


def _line(event: str, actor: str, at: str, **extra: object) -> str:
    return json.dumps({"event": event, "actor": actor, "timestamp": f"2026-12-02T12:00:{at}Z", **extra})


def test_the_bot_log_is_counted_by_what_supervisors_did_and_parks_are_attributed(tmp_path):
    log_path = tmp_path / "bot.log"
    log_path.write_text("\n".join([
        _line("backing off", "node/agents/agent-2/chat-3", "01.000000", reason="ActorKilled('killed')", delay=0.2),
        _line("actor crashed", "node/agents/agent-1/chat-1", "02.000000", reason="HomeserverUnavailable('down')"),
        _line("actor exited", "node/agents/agent-1/chat-1", "03.000000", then="restart"),
        "Traceback (most recent call last): not JSON",
        _line("supervisor escalating", "node/agents/agent-2", "04.000000", child="chat-3", reason="ActorKilled('x')"),
        _line("actor parked", "node/agents/agent-2", "05.000000", reason="IntensityExceeded"),
        _line("actor parked", "node/agents/agent-1", "06.000000", reason="IntensityExceeded"),
        _line("actor parked", "node/agents/agent-0", "07.000000", reason="IntensityExceeded"),
        _line("actor parked", "node/rooms/!r:x", "08.000000", reason="InjectedFault('poison')"),
        _line("actor unparked", "node/rooms/!r:x", "09.000000"),
        _line("connection.delivered", "node/agents/agent-0/chat-1", "10.000000"),
    ]) + "\n")
    epoch = 1796212800.0  # 2026-12-02T12:00:00Z
    log = read_bot_log(log_path, wall_offset=epoch)
    assert log.counts == {"crashes": 7, "restarts": 3, "parks": 4, "unparks": 1, "escalations": 1, "dropped_messages": 0}
    assert log.matrix_crashes == [(2.0, "agent-1")]
    assert [path for _, path in log.parks] == ["node/agents/agent-2", "node/agents/agent-1", "node/agents/agent-0", "node/rooms/!r:x"]
    # agent-2 had faults injected just before (not Matrix's); agent-1 had too,
    # but one of its connections crashed on a Matrix failure (Matrix's);
    # nothing was injected into agent-0 (Matrix's, or the bot's).
    injected = {"agent-2": [0.5], "agent-1": [1.0]}
    assert agent_parks(log, injected) == (3, 2)
    # Faults long before a park do not explain it.
    assert agent_parks(log, {"agent-2": [-200.0], "agent-1": [1.0]}, window=90.0) == (3, 3)


async def test_a_side_notice_before_an_answer_is_not_a_second_answer():
    class User:
        seen: list[Seen] = []

    user = User()
    watcher = Watcher(user, "@bot:x")  # type: ignore[arg-type]  # only .seen is read

    def bot(event_id: str, content: dict) -> Seen:
        return Seen("!r:x", {"event_id": event_id, "sender": "@bot:x", "type": "m.room.message", "content": content})

    user.seen += [
        bot("$n", {"body": "Agent 3 was removed; continuing with Agent 2", SOURCE_KEY: "$m", ERROR_KEY: ERROR_AGENT_REMOVED}),
        bot("$a", {"body": "echo: hi", SOURCE_KEY: "$m"}),
        bot("$e", {"body": "* echo: hi", SOURCE_KEY: "$m", DONE_KEY: True,
                   "m.new_content": {"body": "echo: hi"}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}),
    ]
    watcher._scan()
    seen = watcher.by_source["$m"]
    assert seen.answer_roots == ["$a"] and seen.done_roots == {"$a"}
    assert seen.errors == {"$n": ERROR_AGENT_REMOVED} and watcher.done("$m")


def test_options_refuse_homeserver_outages_that_would_fill_the_phase():
    assert ChaosOptions().problems() == []
    problems = ChaosOptions(duration=60.0, homeserver_outages=3, outage_max=25.0).problems()
    assert any("homeserver outages would take most of the chaos phase" in p for p in problems)
    assert ChaosOptions(outage_min=30.0, outage_max=10.0).problems()


def test_the_expected_echo_leaves_out_every_token_the_poison_mark_included():
    assert expected_echo("m-u01-p000 supervisor park [[poison]]") == "echo: m-u01-p000 supervisor park"
    assert expected_echo("m-u01-c003 hi [[slow]]") == "echo: m-u01-c003 hi"


def test_a_long_answer_in_parts_is_one_answer_and_a_restarted_answer_is_two():
    parts = AnswerSeen(roots={"$1": "echo: m-u01-c002 a long", "$2": " answer, continued"}, done_roots={"$2"})
    assert not answered_twice(parts, "m-u01-c002")
    again = AnswerSeen(roots={"$1": "echo: m-u01-c002 a lo", "$2": "echo: m-u01-c002 a long answer"}, done_roots={"$2"})
    assert answered_twice(again, "m-u01-c002")
    assert answered_twice(AnswerSeen(roots={"$1": "x", "$2": "y"}, done_roots={"$1", "$2"}), "m-u01-c002")


def test_flooded_frames_or_another_messages_echo_are_foreign_text():
    assert shows_foreign_text(AnswerSeen(roots={"$1": " (flood) (flood)"}), "m-u07-c008")
    assert shows_foreign_text(AnswerSeen(roots={"$1": "echo: m-u07-c007 earlier"}), "m-u07-c008")
    assert not shows_foreign_text(AnswerSeen(roots={"$1": "echo: m-u02-f0001 flood"}), "m-u02-f0001")


def test_the_homeserver_counts_as_recovered_at_the_first_of_three_calm_relays_in_a_row() -> None:
    samples = [
        ProbeSample(9.0, 0.05),  # before it came back: not looked at
        ProbeSample(10.0, None),  # failed
        ProbeSample(11.0, 0.9),  # slow
        ProbeSample(12.0, 0.05),
        ProbeSample(13.0, 0.3),  # slow again: the streak starts over
        ProbeSample(14.0, 0.05),
        ProbeSample(15.0, 0.1),
        ProbeSample(16.0, 0.08),
        ProbeSample(17.0, 0.5),
    ]
    assert recovered_at(samples, back=10.0, normal=0.1) == 14.0
    assert recovered_at(samples, back=10.0, normal=0.01) is None
    assert recovered_at(samples, back=8.0, normal=1.0) == 11.0  # 9.0 is cut short by the failure at 10.0
