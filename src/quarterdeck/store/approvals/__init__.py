"""Approvals: a person's decision on a dispatch, an agent's action, or an SDK request.

- :mod:`~quarterdeck.store.approvals.reading`: an approval by id or action key, its view,
  and what a decided one means for the agent waiting on it (:class:`Gate`)
- :mod:`~quarterdeck.store.approvals.deciding`: opening an approval, deciding it, and what
  the decision means for its subject
- :mod:`~quarterdeck.store.approvals.desk`: claims, snoozes and bulk decisions
- :mod:`~quarterdeck.store.approvals.ladder`: escalation, and expiry into the default-safe
  action
"""

from quarterdeck.store.approvals.deciding import (
    NewApproval,
    StaleApproval,
    create_approval,
    decide_approval,
    reason_codes,
    reject_open,
)
from quarterdeck.store.approvals.desk import bulk_decide, claim_approval, snooze_approval
from quarterdeck.store.approvals.ladder import escalate_approval, expire_due
from quarterdeck.store.approvals.reading import (
    Gate,
    approval_by_key,
    approval_view,
    gate_from_approval,
    open_approvals_of,
)

__all__ = [
    "Gate",
    "NewApproval",
    "StaleApproval",
    "approval_by_key",
    "approval_view",
    "bulk_decide",
    "claim_approval",
    "create_approval",
    "decide_approval",
    "escalate_approval",
    "expire_due",
    "gate_from_approval",
    "open_approvals_of",
    "reason_codes",
    "reject_open",
    "snooze_approval",
]
