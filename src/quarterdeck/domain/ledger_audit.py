"""What the ledger says the state tables hold, and where they disagree with it.

A chain that verifies proves only that the ledger was not rewritten; the state tables beside it
can still be edited by hand. :class:`LedgerReplay` folds the entries, in ``seq`` order, into what
they say each row should hold:

- a turn's, mission's or approval's ``state`` is the ``to_state`` of its last entry that has
  one, and its ``version`` the highest ``version`` any of its entries' payloads records
  (versions only grow; an entry may repeat an older one, e.g. a refused late write);
- an approval's ``decided_by`` is the actor of the entry that moved it to a decided state
  (none while it is open);
- a decision bound to an approval has that approval's verdict (and, once it is decided, its
  decider); an action's or SDK request's decision, a verdict its ``action.decided`` entries
  record for its action key; a dispatch's, what its mission did with it (``running``: allow,
  ``failed``: deny), the entry naming the decision in its payload.

A row no entry records, and a subject the ledger created whose row is gone, disagree too. Each
disagreement names the table, the row's id, the field, both values and the ledger seq.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from quarterdeck.domain.routing import approval_verdict
from quarterdeck.domain.states import APPROVAL_DECIDED

AUDITED_SUBJECTS: Final = ("turn", "mission", "approval", "action")
"""The subject types whose entries the replay reads (``action``: an SDK request's decision)."""
TABLES: Final = {"turn": "turns", "mission": "missions", "approval": "approvals"}
"""The state table of each audited kind."""


@dataclass(frozen=True, slots=True)
class Disagreement:
    """A stored value the ledger does not bear out."""

    table: str
    id: str
    field: str
    stored: Any
    recorded: Any
    """What the ledger says (None: it records nothing)."""
    seq: int | None
    """The entry that says so (None: no entry records the row)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``ledger verify --json`` lists."""
        return {
            "table": self.table,
            "id": self.id,
            "field": self.field,
            "stored": self.stored,
            "ledger": self.recorded,
            "seq": self.seq,
        }

    def describe(self) -> str:
        """One line for a person."""
        where = "no ledger entry records it" if self.seq is None else f"ledger seq {self.seq}"
        return (
            f"{self.table} {_printable(self.id)} {self.field}: stored {self.stored!r}, "
            f"the ledger says {self.recorded!r} ({where})"
        )


@dataclass(slots=True)
class _Subject:
    """What the entries of one turn, mission or approval say so far."""

    created_seq: int | None = None
    state: str | None = None
    state_seq: int | None = None
    version: int | None = None
    version_seq: int | None = None
    decided_by: str | None = None
    decided_seq: int | None = None
    seen: bool = False
    """Whether its row was found (set while checking rows)."""


@dataclass(slots=True)
class LedgerReplay:
    """Entries folded into expectations; feed them in ``seq`` order, then check rows."""

    subjects: dict[tuple[str, str], _Subject] = field(default_factory=dict)
    verdicts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """action key -> (seq, verdict) of its ``action.decided`` entries."""
    dispatches: dict[str, tuple[int, str]] = field(default_factory=dict)
    """dispatch decision id -> (seq, verdict) its mission's entry implies."""

    def feed(
        self,
        seq: int,
        subject_type: str,
        subject_id: str,
        action: str,
        actor: str,
        from_state: str | None,
        to_state: str | None,
        payload_json: str,
    ) -> None:
        """Fold one entry in (entries of other subject types are ignored)."""
        payload = _object(payload_json)
        if action == "action.decided":
            key, verdict = payload.get("action_key"), payload.get("verdict")
            if isinstance(key, str) and isinstance(verdict, str):
                self.verdicts.setdefault(key, []).append((seq, verdict))
            return
        if subject_type not in TABLES:
            return
        subject = self.subjects.get((subject_type, subject_id))
        if subject is None:
            subject = self.subjects[(subject_type, subject_id)] = _Subject()
        if to_state is not None:
            if from_state is None and subject.created_seq is None:
                subject.created_seq = seq
            subject.state, subject.state_seq = to_state, seq
            if subject_type == "approval" and to_state in APPROVAL_DECIDED:
                subject.decided_by, subject.decided_seq = actor, seq
            decision = payload.get("decision")
            if subject_type == "mission" and isinstance(decision, str):
                if to_state == "running":
                    self.dispatches[decision] = (seq, "allow")
                elif to_state == "failed":
                    self.dispatches[decision] = (seq, "deny")
        version = payload.get("version")
        if type(version) is int and (subject.version is None or version > subject.version):
            subject.version, subject.version_seq = version, seq

    def check_item(
        self,
        kind: str,
        item_id: str,
        state: str,
        version: int,
        decided_by: str | None = None,
    ) -> Iterator[Disagreement]:
        """A turn's, mission's or approval's row against its entries (``decided_by``: an
        approval's)."""
        table = TABLES[kind]
        subject = self.subjects.get((kind, item_id))
        if subject is None or subject.state is None:
            yield Disagreement(table, item_id, "state", state, None, None)
            return
        subject.seen = True
        if state != subject.state:
            yield Disagreement(table, item_id, "state", state, subject.state, subject.state_seq)
        if version != subject.version:
            yield Disagreement(
                table, item_id, "version", version, subject.version, subject.version_seq
            )
        if kind == "approval" and decided_by != subject.decided_by:
            seq = subject.decided_seq if subject.decided_by is not None else subject.state_seq
            yield Disagreement(table, item_id, "decided_by", decided_by, subject.decided_by, seq)

    def check_decision(
        self,
        decision_id: str,
        kind: str,
        verdict: str,
        approval_id: str | None,
        action_key: str | None,
        decided_by: str | None,
    ) -> Iterator[Disagreement]:
        """A decision's verdict (and, when an approval decided it, its decider) against the
        entries that record it."""
        if approval_id is not None:
            approval = self.subjects.get(("approval", approval_id))
            if approval is None or approval.state is None:
                yield Disagreement("decisions", decision_id, "verdict", verdict, None, None)
                return
            expected = approval_verdict(approval.state)
            if verdict != expected:
                yield Disagreement(
                    "decisions", decision_id, "verdict", verdict, expected, approval.state_seq
                )
            if approval.decided_by is not None and decided_by != approval.decided_by:
                yield Disagreement(
                    "decisions", decision_id, "decided_by", decided_by, approval.decided_by,
                    approval.decided_seq,
                )  # fmt: skip
            return
        if kind == "dispatch":
            found = self.dispatches.get(decision_id)
            if found is None or found[1] != verdict:
                seq, recorded = found if found is not None else (None, None)
                yield Disagreement("decisions", decision_id, "verdict", verdict, recorded, seq)
            return
        recorded_verdicts = self.verdicts.get(action_key or "", [])
        if not any(recorded == verdict for _, recorded in recorded_verdicts):
            seq, last = recorded_verdicts[-1] if recorded_verdicts else (None, None)
            yield Disagreement("decisions", decision_id, "verdict", verdict, last, seq)

    def missing_rows(self) -> Iterator[Disagreement]:
        """Subjects the ledger created whose row was not found by :meth:`check_item`."""
        for (kind, item_id), subject in self.subjects.items():
            if subject.created_seq is not None and not subject.seen:
                yield Disagreement(
                    TABLES[kind], item_id, "row", None, subject.state, subject.created_seq
                )


def _printable(value: str) -> str:
    """``value`` with control characters escaped (ids come from the database)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _object(payload_json: str) -> dict[str, Any]:
    """A payload as a dict (a damaged one, which chain verification reports, as empty)."""
    try:
        value = json.loads(payload_json)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
