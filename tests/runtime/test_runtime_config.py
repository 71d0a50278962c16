"""supervision.toml: the shipped file, precedence, and every kind of mistake."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import trio

import lambda_actors as la
from runtime_probes import Hang, Journal, spec

SHIPPED = Path(__file__).resolve().parents[2] / "lambda_actors" / "bot" / "supervision.toml"


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(la.SupervisionConfigError) as info:
        la.parse_supervision_config(text, "sup.toml")
    assert str(info.value).count("sup.toml") >= 1
    return info.value.problems


def test_the_shipped_file_loads_and_describes_the_bots_tree():
    config = la.load_supervision_config(SHIPPED)
    agents = config.policy_for("node/agents")
    assert agents.on_exhausted is la.OnExhausted.PARK
    agent = config.policy_for("node/agents/agent-0")
    assert agent.on_exhausted is la.OnExhausted.ESCALATE  # node/agents parks the agent
    conn = config.policy_for("node/agents/agent-0/chat-17")
    assert conn.restart is la.Restart.TRANSIENT and conn.backoff.min == 0.5
    room = config.policy_for("node/rooms/!abc:example.org")
    assert room.restart is la.Restart.TRANSIENT and room.mailbox_capacity == 500
    assert config.policy_for("node/sync").shutdown == 0
    for path in ("node/outbox", "node/agents", "node/rooms", "node/sync"):
        assert config.for_path(path), f"{path} has no entry"


def test_every_key_in_the_shipped_file_is_commented():
    for number, line in enumerate(SHIPPED.read_text().splitlines(), 1):
        stripped = line.strip()
        if "=" in stripped and not stripped.startswith("#"):
            assert "#" in stripped, f"supervision.toml:{number} has no comment: {line!r}"


def test_exact_entries_beat_wildcards_key_by_key():
    config = la.parse_supervision_config(
        """
        [n.rooms."*"]
        shutdown = 3
        call_timeout = 9
        [n.rooms."*".backoff]
        min = 2
        max = 20
        [n.rooms.special]
        shutdown = 1
        [n.rooms.special.backoff]
        max = 50
        """
    )
    special = config.policy_for("n/rooms/special")
    assert (special.shutdown, special.call_timeout) == (1, 9)
    assert (special.backoff.min, special.backoff.max) == (2, 50)
    other = config.policy_for("n/rooms/other")
    assert (other.shutdown, other.backoff.max) == (3, 20)
    assert config.policy_for("n/rooms/a/b") == la.Policy()


def test_infinity_is_accepted_for_shutdown_and_call_timeout():
    config = la.parse_supervision_config('[n.w]\nshutdown = "infinity"\ncall_timeout = "infinity"\n')
    policy = config.policy_for("n/w")
    assert policy.shutdown == math.inf and policy.call_timeout == math.inf


async def test_the_file_overrides_the_code_and_the_code_overrides_file_defaults(autojump_clock):
    config = la.parse_supervision_config(
        """
        [defaults]
        call_timeout = 1
        mailbox_capacity = 7
        [t.w]
        mailbox_capacity = 3
        """
    )
    journal = Journal()
    children = [spec("w", journal, mailbox_capacity=50, call_timeout=4), spec("v", journal)]
    async with la.open_supervisor("t", children, config=config) as sup:
        assert sup.address("w").statistics().capacity == 3  # file entry beats code
        assert sup.address("v").statistics().capacity == 7  # file default fills in
        with pytest.raises(la.CallTimeout):
            await sup.address("w").call(Hang())
        assert trio.current_time() == 4  # code beats the file's [defaults]
        await sup.terminate_child("w")


async def test_open_supervisor_accepts_a_path_and_applies_the_roots_entry(tmp_path, autojump_clock):
    path = tmp_path / "supervision.toml"
    path.write_text('[app]\nintensity = 0\n')
    with pytest.raises(la.IntensityExceeded):
        async with la.open_supervisor("app", [spec("w", Journal())], config=path) as sup:
            sup.kill("app/w")
            await trio.sleep_forever()


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[n]\nstratgy = 'one_for_all'\n", "n.stratgy", "did you mean 'strategy'"),
        ("[n]\nintensity = 'three'\n", "n.intensity", "whole number"),
        ("[n]\nintensity = 2.5\n", "n.intensity", "whole number"),
        ("[n]\nperiod = true\n", "n.period", "number of seconds"),
        ("[n]\nshutdown = 'soon'\n", "n.shutdown", '"infinity"'),
        ("[n]\nrestart = 'sometimes'\n", "n.restart", '"permanent", "transient", "temporary"'),
        ("[n]\nstrategy = 1\n", "n.strategy", "one_for_one"),
        ("[n]\noverflow = 'spill'\n", "n.overflow", "drop_oldest"),
        ("[n]\non_exhausted = 'retry'\n", "n.on_exhausted", '"park"'),
        ("[n]\nbackoff = 3\n", "n.backoff", "must be a table"),
        ("[n.backoff]\nminimum = 1\n", "n.backoff.minimum", "unknown backoff key"),
        ("[n.backoff]\nmin = 'fast'\n", "n.backoff.min", "must be a number"),
        ("[n.backoff]\nmin = 10\nmax = 1\n", "n.backoff.min", "lower min or raise max"),
        ("[n.backoff]\nmultiplier = 0.5\n", "n.backoff.multiplier", ">= 1"),
        ("[n.backoff]\njitter = 2\n", "n.backoff.jitter", "[0, 1)"),
        ("[n]\nmailbox_capacity = 0\n", "n.mailbox_capacity", ">= 1"),
        ("[n]\nintensity = -1\n", "n.intensity", ">= 0"),
        ("[n]\nperiod = 0\n", "n.period", "> 0"),
        ("[n]\ncall_timeout = 0\n", "n.call_timeout", "> 0"),
        ("[n]\ncool_down = -5\n", "n.cool_down", ">= 0"),
        ("[n]\nshutdown = -1\n", "n.shutdown", ">= 0"),
        ("[n]\nstrategy = 'one_for_all'\non_exhausted = 'park'\n", "n.on_exhausted", "one_for_one"),
        ("[defaults.rooms]\nshutdown = 1\n", "defaults.rooms", "policy keys only"),
        ("defaults = 3\n", "defaults", "must be a table"),
        ("stray = 3\n", "stray", "unknown key"),
        ('[n."odd name"]\nbogus = 1\n', 'n."odd name".bogus', "unknown key"),
        ("[defaults.backoff]\nmin = 9\nmax = 2\n", "defaults.backoff.min", "lower min"),
    ],
)
def test_each_mistake_names_the_file_the_key_path_and_the_fix(text, key, hint):
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0][0] == key
    assert hint in problems[0][1]


def test_combinations_are_checked_across_defaults_and_the_entry():
    problems = problems_of("[defaults]\nstrategy = 'rest_for_one'\n[n.agents]\non_exhausted = 'park'\n")
    assert problems[0][0] == "n.agents.on_exhausted"


def test_all_mistakes_are_reported_at_once():
    problems = problems_of("[a]\nfoo = 1\n[b]\nintensity = 'x'\n[c.backoff]\nbar = 2\n")
    assert [k for k, _ in problems] == ["a.foo", "b.intensity", "c.backoff.bar"]


def test_invalid_toml_is_one_config_error():
    problems = problems_of("[n\nx = 1")
    assert problems[0][0] == "" and "not valid TOML" in problems[0][1]


def test_a_missing_file_is_one_config_error(tmp_path):
    with pytest.raises(la.SupervisionConfigError, match="cannot read the file"):
        la.load_supervision_config(tmp_path / "absent.toml")


def test_the_error_message_has_the_file_key_and_fix_on_one_line():
    with pytest.raises(la.SupervisionConfigError) as info:
        la.parse_supervision_config("[n.backoff]\nmin = 10\nmax = 1\n", "/etc/bot/supervision.toml")
    assert str(info.value) == (
        "/etc/bot/supervision.toml: [n.backoff.min] min (10) is greater than max (1); lower min or raise max"
    )


async def test_a_combination_made_impossible_by_code_and_file_together_fails_at_start():
    config = la.parse_supervision_config("[t.sub]\non_exhausted = 'park'\n", "sup.toml")
    with pytest.raises(la.ChildSpecError, match=r"t/sub: on_exhausted.*sup\.toml"):
        async with la.open_supervisor("t", [la.SupervisorSpec("sub", strategy="one_for_all")], config=config):
            pass  # pragma: no cover


async def test_the_shipped_policy_parks_an_agent_whose_connections_keep_failing(autojump_clock):
    journal = Journal()

    async def agent_down(ctx: la.ActorContext) -> None:
        journal.add("start", ctx.path)
        raise ConnectionRefusedError("agent is down")

    def agent(name: str, conn: la.ChildSpec) -> la.SupervisorSpec:
        return la.SupervisorSpec(name, [conn])

    tree = [la.SupervisorSpec("agents", [
        agent("agent-0", la.ChildSpec("chat-1", agent_down)),
        agent("agent-1", spec("chat-2", journal)),
    ])]
    async with la.open_supervisor("node", tree, config=SHIPPED, rng=random.Random(3)) as sup:
        agents = sup.registry.supervisor("node/agents")
        with sup.subscribe() as events:
            parked = await events.wait_for(la.Parked, path="node/agents/agent-0")
        state = agents.child_state("agent-0")
        assert state.status is la.Status.PARKED and state.retry_in == pytest.approx(60)
        assert parked.retry_at - parked.time == pytest.approx(60)
        assert parked.time < 60  # the first escalation parks it: seconds, not minutes of retries
        assert agents.child_state("agent-1").status is la.Status.RUNNING
        assert journal.count("stop", "chat-2") == 0
        chat2 = sup.registry.lookup("node/agents/agent-1/chat-2")
        assert await chat2.call("still served") == "still served"
