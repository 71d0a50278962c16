"""How much one user, one room or one agent may make the bot do.

Each limit keeps one party from costing the others (the homeserver's event
size, the disk, the rooms a user can create) and each is the operator's to
change: the ``limits:`` section of agents.yaml sets any of these fields.
The defaults suit a bot serving people, not bulk transfers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    #: Messages one answer may be split into (each up to ~30 KB of text, so an
    #: edit, which carries its body twice, stays under the 64 KiB event limit);
    #: past that the answer is cut, with a note saying so.
    answer_parts: int = 8
    #: Files one answer may post; the rest are refused with a note.
    answer_files: int = 10
    #: Characters of an agent's confirmation text shown to the user; a
    #: longer one is truncated with a note, never refused.
    confirmation_chars: int = 2000
    #: Chat rooms one user may have the bot create per hour (``!new`` and
    #: onboarding); past that ``!new`` answers when to try again.
    rooms_per_user_per_hour: int = 20
    #: Bytes of files waiting (staged) in one room for the next message.
    staged_bytes_per_room: int = 200 * 1024 * 1024
    #: Frames an agent may send outside an answer (after END, before the
    #: next message) before its socket is failed.
    frames_outside_answer: int = 64
