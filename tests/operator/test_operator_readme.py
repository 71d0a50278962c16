"""The README's operator sections say what the shipped code does.

Figures and lists an operator relies on are read from the README and
compared with their source: the park threshold with the shipped
supervision.toml, the exit statuses and environment variables with
``lambda-actors run --help``.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from lambda_actors.bot.run import EPILOG

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def shipped_policy() -> dict:
    return tomllib.loads(resources.files("lambda_actors.bot").joinpath("supervision.toml").read_text())


def test_the_park_threshold_in_the_readme_is_the_shipped_one() -> None:
    policy = shipped_policy()
    agent = policy["node"]["agents"]["*"]
    agents = policy["node"]["agents"]
    assert agent["on_exhausted"] == "escalate" and agents["on_exhausted"] == "park" and agents["intensity"] == 0
    # One more failure than the agent's supervisor may restart escalates, and
    # node/agents (intensity 0) parks at the first escalation.
    failures, period, cool_down = agent["intensity"] + 1, agent["period"], agents["cool_down"]
    sentence = f"{failures}th connection failure within {period:g} s parks the agent for {cool_down:g} s"
    mentions = len(re.findall(re.escape(sentence), README.replace("\n", " ")))
    assert mentions == 2, sentence  # supervision.toml and Operations
    assert "more than 4 failures" not in README


def test_the_readme_lists_the_exit_statuses_of_run_help() -> None:
    helped = [line.split()[0] for line in EPILOG.split("exit status:")[1].splitlines() if line.strip()]
    table = re.findall(r"^\| ([0-9]) \| ", README, flags=re.MULTILINE)
    assert table == helped == ["0", "1", "2", "3", "4", "5"]


def test_the_readme_documents_every_variable_of_run_help() -> None:
    variables = re.findall(r"^  ([A-Z_]+) ", EPILOG, flags=re.MULTILINE)
    assert len(variables) == 7
    environment = README.split("### Environment")[1].split("\n### ")[0]
    for variable in variables:
        assert f"`{variable}`" in environment, variable
