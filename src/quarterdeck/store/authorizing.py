"""A principal refused a command: the refusal is recorded on the ledger (``command.refused``,
with the principal and the rule's code) and counted with the data, in the command's own
transaction; the rules themselves are :mod:`quarterdeck.domain.authority`'s."""

from __future__ import annotations

from typing import Any, Final

from quarterdeck.domain.authority import Principal, Refusal
from quarterdeck.store.flags import bump_counter
from quarterdeck.store.transitions import append_entry
from quarterdeck.store.writer import WriteTxn

REFUSED_COUNTER: Final = "commands_refused"
"""The counter of refused principals (``commands_refused:<code>`` counts each rule)."""


def principal_view(who: Principal) -> dict[str, Any]:
    """The principal as the ledger records it."""
    view: dict[str, Any] = {"kind": str(who.kind), "name": who.name}
    if who.uid is not None:
        view["uid"] = who.uid
    if who.workspace is not None:
        view["workspace"] = who.workspace
    return view


def refuse_principal(
    txn: WriteTxn,
    workspace: str,
    who: Principal,
    command: str,
    subject_type: str,
    subject_id: str,
    refusal: Refusal,
) -> dict[str, Any]:
    """Record that ``who`` may not give ``command`` (nothing else changes), count it, and
    return the command's result: not ok, the refusal's message as its error."""
    append_entry(
        txn, workspace, who.label, "command.refused", subject_type, subject_id, None, None,
        {"command": command, "errors": [refusal.message], "refusal": refusal.code,
         "principal": principal_view(who)},
    )  # fmt: skip
    bump_counter(txn, REFUSED_COUNTER)
    bump_counter(txn, f"{REFUSED_COUNTER}:{refusal.code}")
    return {"ok": False, "errors": [refusal.message], "refused": refusal.code}
