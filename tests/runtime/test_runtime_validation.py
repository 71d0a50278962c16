"""One validation of policy values, for code and supervision.toml alike (Policy.problems)."""

from __future__ import annotations

import math

import pytest

import lambda_actors as la


@pytest.mark.parametrize("intensity", [math.inf, 2.5, True, "3", -1])
def test_code_refuses_what_the_file_refuses_for_intensity(intensity):
    with pytest.raises(la.ChildSpecError, match="intensity: must be a whole number of restarts >= 0"):
        la.SupervisorSpec("s", intensity=intensity)
    text = f"[n]\nintensity = {'true' if intensity is True else repr(intensity).replace('inf', 'inf')}\n"
    if intensity is math.inf:
        text = "[n]\nintensity = inf\n"
    with pytest.raises(la.SupervisionConfigError, match=r"\[n.intensity\] must be a whole number of restarts >= 0"):
        la.parse_supervision_config(text, "sup.toml")


@pytest.mark.parametrize(
    ("keywords", "key"),
    [
        ({"shutdown": True}, "shutdown"),
        ({"call_timeout": "soon"}, "call_timeout"),
        ({"mailbox_capacity": 2.5}, "mailbox_capacity"),
        ({"backoff": la.Backoff(min=True)}, "backoff.min"),
        ({"backoff": la.Backoff(multiplier=math.inf)}, "backoff.multiplier"),
        ({"backoff": {"min": 1}}, "backoff"),
    ],
)
def test_a_child_spec_fails_where_it_is_written(keywords, key):
    with pytest.raises(la.ChildSpecError, match=f"'w': {key}: "):
        la.ChildSpec("w", lambda ctx: None, **keywords)


def test_policy_problems_is_the_one_judge():
    assert la.Policy().problems() == []
    keys = [k for k, _ in la.Policy(intensity=2.5, period=math.inf, cool_down=True).problems()]  # type: ignore[arg-type]
    assert keys == ["intensity", "period", "cool_down"]


def test_the_file_reports_every_mistake_at_once_conversions_and_values_together():
    text = """
    [defaults]
    intensity = 1.5
    [node]
    strategy = "one_for_some"
    period = 0
    [node.agents."*"]
    on_exhausted = "park"
    strategy = "rest_for_one"
    mailbox_capacity = true
    [node.agents."*".backoff]
    min = 10
    max = 1
    bogus = 3
    """
    with pytest.raises(la.SupervisionConfigError) as info:
        la.parse_supervision_config(text, "sup.toml")
    found = [key for key, _ in info.value.problems]
    assert sorted(found) == sorted([
        "defaults.intensity",
        "node.strategy",
        "node.period",
        'node.agents."*".on_exhausted',
        'node.agents."*".mailbox_capacity',
        'node.agents."*".backoff.min',
        'node.agents."*".backoff.bogus',
    ])
    message = str(info.value)
    assert message.startswith("7 problems in sup.toml:")
    assert "[]" not in message


def test_a_mistake_in_defaults_is_reported_once_not_for_every_entry():
    with pytest.raises(la.SupervisionConfigError) as info:
        la.parse_supervision_config("[defaults]\nperiod = -1\n[a]\nshutdown = 1\n[b]\nshutdown = 2\n", "sup.toml")
    assert [key for key, _ in info.value.problems] == ["defaults.period"]


def test_a_file_level_problem_has_no_empty_key_path():
    with pytest.raises(la.SupervisionConfigError) as info:
        la.parse_supervision_config("[n\n", "sup.toml")
    assert str(info.value).startswith("sup.toml: is not valid TOML")
    assert "[]" not in str(info.value)


def test_a_value_checked_once_is_not_taken_for_an_equal_value_of_another_type():
    # Specs with the same settings are checked once (a DAG run builds one per
    # task); 1 second is a shutdown, True is not, though True == 1.
    async def actor(ctx):
        pass

    assert la.ChildSpec("a", actor, shutdown=1).explicit_policy() == {"shutdown": 1}
    assert la.ChildSpec("b", actor, shutdown=1).explicit_policy() == {"shutdown": 1}
    with pytest.raises(la.ChildSpecError, match="shutdown"):
        la.ChildSpec("c", actor, shutdown=True)
    la.ChildSpec("d", actor, backoff=la.Backoff(min=1))
    with pytest.raises(la.ChildSpecError, match="backoff.min"):
        la.ChildSpec("e", actor, backoff=la.Backoff(min=True))
