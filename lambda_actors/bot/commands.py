"""Chat commands: a message body in, a command value out.

Parsing returns values, never raises: an unknown command and a command used
wrongly are values too (:class:`UnknownCommand`, :class:`CommandUsageError`),
so the room actor answers every one of them with a single ``match`` and no
user input can crash it. Text that does not start with ``!`` followed by a
letter is not a command at all (``None``) and goes to the agent, which keeps
"!!!" and "! really" in the conversation where they belong.

:data:`HELP_TEXT` is the one description of the commands, used by ``!help``
and the welcome message.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "HELP_TEXT",
    "MAX_ARGUMENT_LENGTH",
    "MAX_NAME_LENGTH",
    "ArchiveChat",
    "ClearContext",
    "Command",
    "CommandUsageError",
    "Help",
    "ListChats",
    "ListStaged",
    "NewChat",
    "No",
    "RemoveStaged",
    "RenameChat",
    "ShowContext",
    "UnknownCommand",
    "Yes",
    "parse_command",
]

#: Longest chat name accepted by ``!new`` and ``!rename``, in characters.
MAX_NAME_LENGTH = 100
#: Longest argument looked at; anything longer is a usage error, not parsed.
MAX_ARGUMENT_LENGTH = 1000
# Longest command name reported back in UnknownCommand.
_MAX_COMMAND_LENGTH = 32
# Staged attachments are numbered from 1 as !list shows them; six digits is
# far beyond any real list and keeps the number small.
_MAX_INDEX_DIGITS = 6


@dataclass(frozen=True)
class NewChat:
    """``!new [name]``: a new chat room in the user's Space (name None: the next "Chat N")."""

    name: str | None = None


@dataclass(frozen=True)
class ListChats:
    """``!chats``: list the user's chat rooms."""


@dataclass(frozen=True)
class RenameChat:
    """``!rename <name>``: rename this chat room."""

    name: str


@dataclass(frozen=True)
class ArchiveChat:
    """``!archive``: archive this chat room."""


@dataclass(frozen=True)
class ClearContext:
    """``!clear`` (alias ``!reset``): a fresh agent context for this room."""


@dataclass(frozen=True)
class Yes:
    """``!yes``: approve the pending confirmation."""


@dataclass(frozen=True)
class No:
    """``!no``: deny the pending confirmation."""


@dataclass(frozen=True)
class ListStaged:
    """``!list``: the files staged for the next message."""


@dataclass(frozen=True)
class RemoveStaged:
    """``!remove <n>|all``: drop staged file number ``index`` (from 1), or all of them when ``index`` is None."""

    index: int | None

    @property
    def all(self) -> bool:
        return self.index is None


@dataclass(frozen=True)
class ShowContext:
    """``!context``: what this room is bound to (agent, chat id, staged files, pending confirmation)."""


@dataclass(frozen=True)
class Help:
    """``!help``: the list of commands."""


@dataclass(frozen=True)
class UnknownCommand:
    """A ``!word`` that is no command; ``name`` is the word, lower-cased and shortened."""

    name: str

    def reply(self) -> str:
        return f"Unknown command !{self.name}. Send !help for the list of commands."


@dataclass(frozen=True)
class CommandUsageError:
    """A known command with a missing or wrong argument; ``usage`` shows the right form."""

    command: str
    usage: str
    problem: str

    def reply(self) -> str:
        return f"{self.problem}. Usage: {self.usage}"


Command = (
    NewChat
    | ListChats
    | RenameChat
    | ArchiveChat
    | ClearContext
    | Yes
    | No
    | ListStaged
    | RemoveStaged
    | ShowContext
    | Help
    | UnknownCommand
    | CommandUsageError
)

# name -> (usage, what it does, argument kind). The order is the order of
# !help; aliases come after their command and are listed with it.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "new": ("!new [name]", "start a new chat (a fresh agent context) in your Space", "optional name"),
    "chats": ("!chats", "list your chats", "none"),
    "rename": ("!rename <name>", "rename this chat", "name"),
    "archive": ("!archive", "archive this chat", "none"),
    "clear": ("!clear", "start over: the agent forgets this chat (alias !reset)", "none"),
    "yes": ("!yes", "approve what the agent asked to do", "none"),
    "no": ("!no", "refuse what the agent asked to do", "none"),
    "list": ("!list", "show the files waiting to go with your next message", "none"),
    "remove": ("!remove <n>|all", "drop waiting file number n, or all of them", "index"),
    "context": ("!context", "show the agent, chat id, waiting files and pending question of this chat", "none"),
    "help": ("!help", "show this list", "none"),
}
_ALIASES = {"reset": "clear"}
_NO_ARGUMENT: dict[str, Command] = {
    "chats": ListChats(),
    "archive": ArchiveChat(),
    "clear": ClearContext(),
    "yes": Yes(),
    "no": No(),
    "list": ListStaged(),
    "context": ShowContext(),
    "help": Help(),
}

HELP_TEXT = "\n".join(
    [
        "Commands:",
        *(f"{usage} — {what}" for usage, what, _ in _COMMANDS.values()),
        "Anything else you write goes to your agent. Files you send without text wait for your next message.",
    ]
)

# '!' then a letter starts a command; the name runs to the first whitespace.
_COMMAND = re.compile(r"!([A-Za-z][^\s]*)(?:\s+(.*))?", re.DOTALL)
_INDEX = re.compile(r"[0-9]{1,%d}" % _MAX_INDEX_DIGITS)


def parse_command(body: str) -> Command | None:
    """Parse a message body; None when it is not a command (it goes to the agent).

    Command names are case-insensitive; surrounding whitespace is ignored.
    """
    if not isinstance(body, str):
        return None
    text = body.strip()
    match = _COMMAND.fullmatch(text)
    if match is None:
        return None
    raw_name, argument = match.group(1), (match.group(2) or "").strip()
    name = raw_name.lower()
    name = _ALIASES.get(name, name)
    if name not in _COMMANDS:
        return UnknownCommand(_printable(raw_name.lower())[:_MAX_COMMAND_LENGTH])
    usage, _, kind = _COMMANDS[name]
    if len(argument) > MAX_ARGUMENT_LENGTH:
        return CommandUsageError(name, usage, f"The argument of !{name} is too long")
    if kind == "none":
        if argument:
            return CommandUsageError(name, usage, f"!{name} takes no argument")
        return _NO_ARGUMENT[name]
    if kind == "index":
        return _remove(argument, usage)
    chat_name = _chat_name(argument)
    if len(chat_name) > MAX_NAME_LENGTH:
        return CommandUsageError(name, usage, f"A chat name can be at most {MAX_NAME_LENGTH} characters")
    if kind == "optional name":
        return NewChat(chat_name or None)
    if not chat_name:
        return CommandUsageError(name, usage, f"!{name} needs a name")
    return RenameChat(chat_name)


def _remove(argument: str, usage: str) -> Command:
    if argument.lower() == "all":
        return RemoveStaged(None)
    if not argument:
        return CommandUsageError("remove", usage, "!remove needs a file number (see !list) or 'all'")
    if _INDEX.fullmatch(argument) is None or int(argument) == 0:
        return CommandUsageError("remove", usage, "!remove takes a file number from !list (1, 2, ...) or 'all'")
    return RemoveStaged(int(argument))


def _chat_name(argument: str) -> str:
    """A room name: one line, no control or invisible formatting characters."""
    cleaned = "".join(" " if c.isspace() else c for c in _printable(argument))
    return " ".join(cleaned.split())


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
