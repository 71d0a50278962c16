"""parse_dag never raises anything but DagSpecError, whatever it is given."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.dag.spec import DagSpec, DagSpecError, parse_dag

KEYS = ["dag_id", "scope", "reuse_worker", "priority", "owner", "max_workers", "tasks", "x"]
TASK_KEYS = ["id", "deps", "agent", "command", "prompt", "workdir", "timeout", "retries", "y"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["a", "b", "agent-0", "10m", "global", "project:p", "{{ a.output }}", "{{", "@a:b.c", "/tmp"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=6)
task_ids = st.sampled_from(["a", "b", "c", "bad id", ""])
tasks = st.fixed_dictionaries(
    {},
    optional={
        "id": task_ids | values,
        "deps": st.lists(task_ids, max_size=3) | values,
        "agent": st.sampled_from(["agent-0", "did:lambda:agent:x"]) | values,
        "command": st.lists(st.text(max_size=5), max_size=3) | values,
        "prompt": st.sampled_from(["p", "{{ a.output }}", "{{ b.output }} {{ c.outpt }}", "{{}}"]) | values,
        "workdir": values,
        "timeout": st.sampled_from(["10m", "1h30m", "x", 5]) | values,
        "retries": st.integers(-2, 12) | values,
        "y": values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={k: values for k in KEYS if k != "tasks"} | {"tasks": st.lists(tasks | values, max_size=5) | values},
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid DAG, then maybe one value anywhere in it replaced by anything."""
    n = draw(st.integers(1, 5))
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        deps = [f"t{d}" for d in draw(st.lists(st.integers(0, max(i - 1, 0)), unique=True, max_size=2))] if i else []
        task: dict[str, Any] = {"id": f"t{i}", "deps": deps, "timeout": draw(st.sampled_from(["10m", "1h30m", 45]))}
        if draw(st.booleans()):
            task |= {"agent": "agent-0", "prompt": " ".join(f"{{{{ {d}.output }}}}" for d in deps) or "go"}
        else:
            task |= {"command": ["make", "-j2"], "workdir": "/srv"}
        tasks.append(task)
    doc: dict[str, Any] = {"dag_id": "near", "scope": "user:bob", "priority": "high", "owner": "@a:b.c", "tasks": tasks}
    if draw(st.booleans()):
        table = draw(st.sampled_from([doc, *tasks]))
        table[draw(st.sampled_from(sorted(table)))] = draw(values)
    return doc


def check(document: Any, **kwargs: Any) -> None:
    try:
        spec = parse_dag(document, **kwargs)
    except DagSpecError as exc:
        assert exc.problems, "an error always says what is wrong"
        for where, what in exc.problems:
            assert isinstance(where, str) and isinstance(what, str) and what
    else:
        assert isinstance(spec, DagSpec)
        # A parsed spec reads back as itself.
        assert parse_dag(spec.to_mapping(), allow_commands=True) == spec


@settings(max_examples=100, deadline=None)
@given(documents, st.booleans(), st.sampled_from([None, {"agent-0"}]))
def test_structured_documents(document: dict[str, Any], allow: bool, known: set[str] | None) -> None:
    check(document, allow_commands=allow, known_agents=known)


@settings(max_examples=100, deadline=None)
@given(near_valid(), st.booleans())
def test_near_valid_documents(document: dict[str, Any], allow: bool) -> None:
    check(document, allow_commands=allow, known_agents={"agent-0"})


@settings(max_examples=100, deadline=None)
@given(values)
def test_any_value(value: Any) -> None:
    check(value)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text(text: str | bytes) -> None:
    check(text)


def test_deeply_nested_documents() -> None:
    check("x = " + "[" * 100_000)
    check('{"a": ' + "[" * 100_000)
