"""The command parser: every body gets a defined outcome, and the commands parse as SPEC section 6 says."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambda_actors.bot.commands import (
    HELP_TEXT,
    MAX_NAME_LENGTH,
    ArchiveChat,
    ClearContext,
    CommandUsageError,
    Help,
    ListChats,
    ListStaged,
    NewChat,
    No,
    RemoveStaged,
    RenameChat,
    ShowContext,
    UnknownCommand,
    Yes,
    parse_command,
)

ALL_TYPES = (
    NewChat,
    ListChats,
    RenameChat,
    ArchiveChat,
    ClearContext,
    Yes,
    No,
    ListStaged,
    RemoveStaged,
    ShowContext,
    Help,
    UnknownCommand,
    CommandUsageError,
)


@pytest.mark.parametrize(
    ("body", "command"),
    [
        ("!new", NewChat(None)),
        ("!new Trip planning", NewChat("Trip planning")),
        ("!chats", ListChats()),
        ("!rename Budget 2025", RenameChat("Budget 2025")),
        ("!archive", ArchiveChat()),
        ("!clear", ClearContext()),
        ("!reset", ClearContext()),
        ("!yes", Yes()),
        ("!no", No()),
        ("!list", ListStaged()),
        ("!remove 2", RemoveStaged(2)),
        ("!remove all", RemoveStaged(None)),
        ("!remove ALL", RemoveStaged(None)),
        ("!context", ShowContext()),
        ("!help", Help()),
    ],
)
def test_every_command_parses(body: str, command: object) -> None:
    assert parse_command(body) == command


@pytest.mark.parametrize("body", ["!HELP", "!Help", "  !help  ", "\n\t!help\n", "!hElP"])
def test_names_are_case_insensitive_and_whitespace_is_tolerated(body: str) -> None:
    assert parse_command(body) == Help()


def test_remove_all_flag() -> None:
    assert RemoveStaged(None).all and not RemoveStaged(1).all


@pytest.mark.parametrize("body", ["hello", "", "   ", "!", "!!!", "! help", "!1", "!-x", "say !help", "?help", "！help"])
def test_text_that_is_not_a_command_is_none(body: str) -> None:
    assert parse_command(body) is None


@pytest.mark.parametrize(("body", "name"), [("!frobnicate", "frobnicate"), ("!Foo bar baz", "foo"), ("!x" + "y" * 200, "x" + "y" * 31)])
def test_unknown_command_is_a_value(body: str, name: str) -> None:
    command = parse_command(body)
    assert command == UnknownCommand(name)
    assert f"!{name}" in command.reply() and "!help" in command.reply()


@pytest.mark.parametrize(
    ("body", "command", "problem"),
    [
        ("!rename", "rename", "needs a name"),
        ("!rename    ", "rename", "needs a name"),
        ("!rename \u200b\x00", "rename", "needs a name"),
        ("!remove", "remove", "needs a file number"),
        ("!remove 0", "remove", "takes a file number"),
        ("!remove -1", "remove", "takes a file number"),
        ("!remove two", "remove", "takes a file number"),
        ("!remove 1 2", "remove", "takes a file number"),
        ("!remove 1234567", "remove", "takes a file number"),
        ("!remove ²", "remove", "takes a file number"),
        ("!yes please", "yes", "takes no argument"),
        ("!reset now", "clear", "takes no argument"),
        ("!help me", "help", "takes no argument"),
        ("!new " + "n" * (MAX_NAME_LENGTH + 1), "new", "at most 100 characters"),
        ("!rename " + "x " * 600, "rename", "too long"),
    ],
)
def test_usage_errors_are_values(body: str, command: str, problem: str) -> None:
    result = parse_command(body)
    assert isinstance(result, CommandUsageError)
    assert result.command == command
    assert problem in result.problem
    assert result.usage.startswith(f"!{command}")
    assert result.usage in result.reply()


def test_chat_names_become_one_clean_line() -> None:
    assert parse_command("!new  My\n\nchat\t\u202e name\x07 ") == NewChat("My chat name")
    assert parse_command("!rename " + "é" * MAX_NAME_LENGTH) == RenameChat("é" * MAX_NAME_LENGTH)


def test_remove_accepts_leading_zeros() -> None:
    assert parse_command("!remove 007") == RemoveStaged(7)


def test_help_text_lists_every_command_once() -> None:
    for usage in ["!new [name]", "!chats", "!rename <name>", "!archive", "!clear", "!reset", "!yes", "!no", "!list", "!remove <n>|all", "!context", "!help"]:
        assert usage in HELP_TEXT
    assert HELP_TEXT.count("!rename") == 1


def test_commands_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NewChat("a").name = "b"  # type: ignore[misc]


@given(st.text(max_size=300))
def test_fuzz_any_body_has_a_defined_outcome(body: str) -> None:
    result = parse_command(body)
    assert result is None or isinstance(result, ALL_TYPES)
    if result is None:
        assert not body.strip().startswith("!") or not body.strip()[1:2].isascii() or not body.strip()[1:2].isalpha()
    if isinstance(result, (NewChat, RenameChat)) and result.name is not None:
        assert result.name and len(result.name) <= MAX_NAME_LENGTH
        assert result.name == result.name.strip() and "\n" not in result.name
    if isinstance(result, RemoveStaged) and result.index is not None:
        assert result.index >= 1
    if isinstance(result, UnknownCommand):
        assert 1 <= len(result.name) <= 32


@given(st.sampled_from(["!new", "!rename", "!remove", "!yes", "!chats", "!bogus"]), st.text(max_size=200))
def test_fuzz_any_argument_has_a_defined_outcome(prefix: str, argument: str) -> None:
    result = parse_command(f"{prefix} {argument}")
    assert isinstance(result, ALL_TYPES)


@given(st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=MAX_NAME_LENGTH))
def test_fuzz_printable_names_round_trip(name: str) -> None:
    assert parse_command(f"!rename {name}") == RenameChat(name)
