"""The control center's actions as data: key, description, and the panes where each applies.
A user overrides keys with ``[keymap]`` in ``quarterdeck.toml`` (action name = key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ALL: Final = "*"


@dataclass(frozen=True, slots=True)
class KeyAction:
    """One action: its name (also the binding id), default key, description, where it applies
    (pane names, or ``*``), and whether it asks for confirmation first."""

    name: str
    key: str
    description: str
    panes: tuple[str, ...] = (ALL,)
    confirm: bool = False
    writes: bool = True
    """Whether the action changes the runtime (refused on a read-only console)."""

    def applies_to(self, pane: str) -> bool:
        """Whether the action is offered on ``pane``."""
        return ALL in self.panes or pane in self.panes

    @property
    def on_pane(self) -> bool:
        """Whether the pane in view runs the action (one offered on some panes only is
        theirs); else the app does."""
        return ALL not in self.panes


ACTIONS: Final[tuple[KeyAction, ...]] = (
    KeyAction("pane_approvals", "1", "Approvals", writes=False),
    KeyAction("pane_turns", "2", "Turns", writes=False),
    KeyAction("pane_missions", "3", "Missions", writes=False),
    KeyAction("pane_alerts", "4", "Alerts", writes=False),
    KeyAction("pane_ledger", "5", "Ledger", writes=False),
    KeyAction("next_pane", "tab", "Next pane", writes=False),
    KeyAction("detail", "enter", "Details", writes=False),
    KeyAction("approve", "a", "Approve", ("approvals",)),
    KeyAction("edit_approve", "e", "Edit + approve", ("approvals",)),
    KeyAction("reject", "r", "Reject", ("approvals",)),
    KeyAction("escalate", "x", "Escalate", ("approvals",)),
    KeyAction("snooze", "z", "Snooze 10m", ("approvals",)),
    KeyAction("approve_all", "A", "Approve all shown", ("approvals",), confirm=True),
    KeyAction("takeover", "t", "Take over", ("turns", "missions", "approvals"), confirm=True),
    KeyAction("release", "u", "Release", ("turns",)),
    KeyAction("complete", "c", "Complete", ("turns",)),
    KeyAction("requeue", "n", "Requeue held", ("turns",)),
    KeyAction("cancel_turn", "X", "Cancel turn", ("turns", "missions"), confirm=True),
    KeyAction("pause_lane", "p", "Pause/resume lane", ("turns", "missions", "approvals")),
    KeyAction(
        "fallback_lane",
        "f",
        "Force fallback (lane)",
        ("turns", "missions", "approvals"),
        confirm=True,
    ),
    KeyAction("fallback_all", "F", "Force fallback (all)", confirm=True),
    KeyAction("ack", "k", "Ack alert", ("alerts",)),
    KeyAction("resolve", "R", "Resolve alert", ("alerts",)),
    KeyAction("rebaseline", "b", "Rebaseline lane", ("alerts",), confirm=True),
    KeyAction("verify", "V", "Verify ledger", writes=False),
    KeyAction("filter", "slash", "Filter", writes=False),
    KeyAction("help", "question_mark", "Help", writes=False),
)
"""Every action of the main screen, in footer order."""

BY_NAME: Final = {action.name: action for action in ACTIONS}


def keymap_problems(keymap: Mapping[str, object]) -> list[str]:
    """What is wrong with a user's keymap (unknown actions, keys that are not text)."""
    problems = []
    for name, key in keymap.items():
        if name not in BY_NAME:
            problems.append(f"keymap.{name}: no such action ({', '.join(sorted(BY_NAME))})")
        elif not isinstance(key, str) or not key:
            problems.append(f"keymap.{name}: must be a key name such as 'y' or 'ctrl+y'")
    return problems
