"""The control center's actions as data: key, description, and the panes where each applies.
A user overrides keys with ``[keymap]`` in ``quarterdeck.toml`` (action name = key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ALL: Final = "*"
NO_KEY: Final = "f24"
"""The key of an action whose default key a user's keymap gave to another (no keyboard
sends it; help shows ``-``)."""


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
    label: str = ""
    """What the footer calls it (its description when empty)."""
    footer: bool = True
    """Whether the footer offers it (when it fits)."""

    def applies_to(self, pane: str) -> bool:
        """Whether the action is offered on ``pane``."""
        return ALL in self.panes or pane in self.panes

    @property
    def on_pane(self) -> bool:
        """Whether the pane in view runs the action (one offered on some panes only is
        theirs); else the app does."""
        return ALL not in self.panes

    @property
    def short(self) -> str:
        """The footer's name for it."""
        return self.label or self.description


ITEM_PANES: Final = ("turns", "missions", "approvals")
"""The panes whose rows belong to a turn and a lane."""
LANE_PANES: Final = (*ITEM_PANES, "lanes")
"""The panes whose rows name a lane."""

ACTIONS: Final[tuple[KeyAction, ...]] = (
    KeyAction("pane_approvals", "1", "Approvals", writes=False, footer=False),
    KeyAction("pane_turns", "2", "Turns", writes=False, footer=False),
    KeyAction("pane_missions", "3", "Missions", writes=False, footer=False),
    KeyAction("pane_alerts", "4", "Alerts", writes=False, footer=False),
    KeyAction("pane_ledger", "5", "Ledger", writes=False, footer=False),
    KeyAction("pane_lanes", "6", "Lanes", writes=False, footer=False),
    KeyAction("next_pane", "tab", "Next pane", writes=False, footer=False),
    KeyAction("prev_pane", "shift+tab", "Previous pane", writes=False, footer=False),
    KeyAction("detail", "enter", "Details", writes=False, footer=False),
    KeyAction("approve", "a", "Approve", ("approvals",)),
    KeyAction("edit_approve", "e", "Edit + approve", ("approvals",), label="Edit"),
    KeyAction("reject", "r", "Reject (reason code, note)", ("approvals",), label="Reject"),
    KeyAction("escalate", "x", "Escalate", ("approvals",)),
    KeyAction("snooze", "z", "Snooze (5m to 4h)", ("approvals",), label="Snooze"),
    KeyAction("approve_all", "A", "Approve all shown", ("approvals",), confirm=True,
              label="Approve all"),
    KeyAction("takeover", "t", "Take over", ITEM_PANES, confirm=True),
    KeyAction("release", "u", "Release", ("turns",)),
    KeyAction("complete", "c", "Complete", ("turns",)),
    KeyAction("requeue", "n", "Requeue held", ("turns",), label="Requeue"),
    KeyAction("cancel_turn", "X", "Cancel turn", ITEM_PANES, confirm=True, label="Cancel"),
    KeyAction("pause_lane", "p", "Pause/resume lane", LANE_PANES, label="Pause/resume"),
    KeyAction("fallback_lane", "f", "Force fallback (lane)", LANE_PANES, confirm=True,
              label="Fallback"),
    KeyAction("ack", "o", "Ack alert", ("alerts",), label="Ack"),
    KeyAction("resolve", "R", "Resolve alert", ("alerts",), label="Resolve"),
    KeyAction("rebaseline", "b", "Rebaseline lane", ("alerts",), confirm=True,
              label="Rebaseline"),
    KeyAction("copy_id", "y", "Copy the selected id", writes=False, label="Copy id"),
    KeyAction("filter", "slash", "Filter", writes=False),
    KeyAction("fallback_all", "F", "Force fallback (all)", confirm=True, label="Fallback all"),
    KeyAction("verify", "V", "Verify ledger", writes=False, label="Verify"),
    KeyAction("quit", "q", "Quit (asks first when the runtime stops with it)", writes=False,
              label="Quit"),
    KeyAction("clear_filter", "escape", "Clear the filter", writes=False, footer=False),
    KeyAction("help", "question_mark", "Help: every key", writes=False, footer=False),
)  # fmt: skip
"""Every action of the main screen: the pane keys, then each pane's actions, then the ones
that apply everywhere (the footer offers them in this order, as many as fit)."""

MOVES: Final[tuple[tuple[str, str, str], ...]] = (
    ("↑ k / ↓ j", "Move up / down", "every list"),
    ("g / G", "First / last row (also ctrl+home / ctrl+end)", "every list"),
    ("pgup / pgdn", "A page up / down (the ledger: newer / older)", "every list"),
    ("home / end", "Scroll to the first / last column (the ledger: home follows)", "every list"),
    ("escape", "Close a dialog, help or the detail view (q too)", "dialogs"),
    ("ctrl+p", "Command palette (every action by name)", "everywhere"),
    ("ctrl+q", "Quit at once", "everywhere"),
)
"""Keys that move about and cannot be rebound (help lists them after the actions)."""

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
