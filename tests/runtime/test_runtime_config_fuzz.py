"""Fuzzing supervision.toml: any file gives a config or one clear error, never a traceback."""

from hypothesis import given, settings
from hypothesis import strategies as st

import lambda_actors as la

KEYS = [
    "restart", "shutdown", "mailbox_capacity", "overflow", "call_timeout", "strategy", "intensity",
    "period", "on_exhausted", "cool_down", "backoff", "min", "max", "multiplier", "jitter", "reset_after",
    "colour", "intensty", "node",
]
VALUES = [
    "1", "0", "-1", "0.5", "1e309", "inf", "nan", "true", '"park"', '"escalate"', '"one_for_all"', '"block"',
    '"transient"', '"infinity"', '""', '"x"', "[1, 2]", "{ min = 1, max = 0 }", "{ min = 0.5 }", "1979-05-27",
]
TABLES = ["defaults", "defaults.backoff", "node", "node.agents", 'node.agents."*"', 'node.agents."*".backoff', "x.y", '"a/b"']

table = st.tuples(
    st.sampled_from(TABLES),
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=6),
)


def render(tables: list) -> str:
    lines = []
    for name, entries in tables:
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in entries]
    return "\n".join(lines) + "\n"


def load(text: str) -> None:
    try:
        la.parse_supervision_config(text, "fuzz.toml")
    except la.SupervisionConfigError as exc:
        assert "fuzz.toml" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(table, max_size=5))
def test_any_structured_file_loads_or_fails_with_a_config_error(tables):
    load(render(tables))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_loads_or_fails_with_a_config_error(text):
    load(text)
