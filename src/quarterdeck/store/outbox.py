"""The transactional outbox: notifications written in the same transaction as the change they
announce, then delivered by the relay (``quarterdeck.runtime.relay``).

A row names its webhook and holds the body to send; never the webhook's URL, headers or secret,
which the relay takes from the configuration at send time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import Connection, text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ids import new_ids
from quarterdeck.store.writer import WriteTxn


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook as the store sees it: its name, the body's format, and which events it wants
    (where and how it is reached is the relay's business, resolved from its name)."""

    name: str
    format: str = "json"
    events: tuple[str, ...] = ("*",)

    def wants(self, event: str) -> bool:
        """Whether ``event`` matches one of the target's event globs."""
        return any(fnmatchcase(event, pattern) for pattern in self.events)


_INSERT = text(
    "INSERT INTO outbox (id, workspace, created_at, event, subject_type, subject_id, webhook, "
    "format, payload, state, attempts, next_attempt_at) VALUES (:id, :workspace, :at, :event, "
    ":subject_type, :subject_id, :webhook, :format, :payload, 'pending', 0, :at)"
)


def notification_payload(
    target_format: str,
    *,
    notification_id: str,
    workspace: str,
    at: str,
    event: str,
    subject_type: str,
    subject_id: str,
    summary: str,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """The body sent to a webhook: the generic JSON document, or a Slack-compatible message
    (which says "about the runtime" for the runtime's own items rather than naming its
    workspace)."""
    if target_format == "slack":
        where = "about the runtime" if workspace == RUNTIME_WORKSPACE else f"in `{workspace}`"
        return {
            "text": f"[quarterdeck] {event}: {summary}",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{event}*\n{summary}"}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"{subject_type} `{subject_id}` {where} at {at}",
                        }
                    ],
                },
            ],
        }
    return {
        "id": notification_id,
        "event": event,
        "workspace": workspace,
        "at": at,
        "subject": {"type": subject_type, "id": subject_id},
        "summary": summary,
        "data": dict(data),
    }


def enqueue(
    txn: WriteTxn,
    targets: Sequence[Target],
    *,
    workspace: str,
    event: str,
    subject_type: str,
    subject_id: str,
    summary: str,
    data: Mapping[str, Any],
) -> list[str]:
    """Queue one notification per target that wants ``event``; return their ids (also the
    ``Idempotency-Key`` each delivery carries)."""
    wanted = [target for target in targets if target.wants(event)]
    if not wanted:
        return []
    ids = new_ids(len(wanted))
    rows = []
    for notification_id, target in zip(ids, wanted, strict=True):
        body = notification_payload(
            target.format,
            notification_id=notification_id,
            workspace=workspace,
            at=txn.at,
            event=event,
            subject_type=subject_type,
            subject_id=subject_id,
            summary=summary,
            data=data,
        )
        rows.append(
            {
                "id": notification_id,
                "workspace": workspace,
                "at": txn.at,
                "event": event,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "webhook": target.name,
                "format": target.format,
                "payload": canonical_text(body),
            }
        )
    txn.conn.execute(_INSERT, rows)
    return ids


@dataclass(frozen=True, slots=True)
class Due:
    """A pending notification whose next attempt is due."""

    id: str
    workspace: str
    event: str
    subject_type: str
    subject_id: str
    webhook: str
    """The webhook's name (its URL and secret are in the configuration)."""
    format: str
    payload: str
    """The body to send, as stored (JSON text)."""
    attempts: int
    """Attempts made so far."""


_DUE = text(
    "SELECT id, workspace, event, subject_type, subject_id, webhook, format, payload, attempts "
    "FROM outbox WHERE state = 'pending' AND next_attempt_at <= :at "
    "ORDER BY created_at, id LIMIT :limit"
)
_PENDING_ROW = text(
    "SELECT workspace, webhook, event FROM outbox WHERE id = :id AND state = 'pending'"
)


def due(txn: WriteTxn, limit: int = 100, lease_s: float = 60.0) -> list[Due]:
    """Pending notifications whose next attempt is at or before the transaction's time,
    oldest first, at most ``limit``. Taking them moves their next attempt ``lease_s`` ahead,
    so that another node's relay does not send them at the same time; marking them delivered
    or failed sets it properly."""
    rows = list(txn.conn.execute(_DUE, {"at": txn.at, "limit": limit}).mappings())
    if rows:
        txn.conn.execute(
            text("UPDATE outbox SET next_attempt_at = :later WHERE id = :id AND state = 'pending'"),
            [
                {"later": format_instant(txn.now + timedelta(seconds=lease_s)), "id": row["id"]}
                for row in rows
            ],
        )
    return [
        Due(
            id=row["id"],
            workspace=row["workspace"],
            event=row["event"],
            subject_type=row["subject_type"],
            subject_id=row["subject_id"],
            webhook=row["webhook"],
            format=row["format"],
            payload=row["payload"],
            attempts=int(row["attempts"]),
        )
        for row in rows
    ]


def mark_delivered(
    txn: WriteTxn, notification_id: str, attempts: int, *, actor: str = "relay"
) -> bool:
    """Record a pending notification as delivered after ``attempts`` attempts (this one
    included) and append ``notification.delivered`` to the ledger.

    Returns False, changing nothing, when the notification is not pending.
    """
    row = txn.conn.execute(_PENDING_ROW, {"id": notification_id}).one_or_none()
    if row is None:
        return False
    txn.conn.execute(
        text(
            "UPDATE outbox SET state = 'delivered', delivered_at = :at, attempts = :attempts "
            "WHERE id = :id"
        ),
        {"at": txn.at, "attempts": attempts, "id": notification_id},
    )
    txn.ledger.append(
        at=txn.at,
        workspace=row.workspace,
        actor=actor,
        action="notification.delivered",
        subject_type="notification",
        subject_id=notification_id,
        from_state="pending",
        to_state="delivered",
        payload={"webhook": row.webhook, "event": row.event, "attempts": attempts},
    )
    return True


def mark_failed(
    txn: WriteTxn,
    notification_id: str,
    attempts: int,
    error: str,
    next_attempt_at: str,
    dead: bool,
    *,
    actor: str = "relay",
) -> bool:
    """Record a failed attempt of a pending notification: ``attempts`` is the count with this
    attempt included, ``error`` what went wrong.

    A retry stays pending until ``next_attempt_at`` and writes no ledger entry (the count
    and the last error are on the row). When ``dead`` the notification is dead-lettered and
    ``notification.dead`` is appended to the ledger. Returns False, changing nothing, when
    the notification is not pending.
    """
    row = txn.conn.execute(_PENDING_ROW, {"id": notification_id}).one_or_none()
    if row is None:
        return False
    txn.conn.execute(
        text(
            "UPDATE outbox SET state = :state, attempts = :attempts, last_error = :error, "
            "next_attempt_at = :next WHERE id = :id"
        ),
        {
            "state": "dead" if dead else "pending",
            "attempts": attempts,
            "error": error,
            "next": next_attempt_at,
            "id": notification_id,
        },
    )
    if dead:
        txn.ledger.append(
            at=txn.at,
            workspace=row.workspace,
            actor=actor,
            action="notification.dead",
            subject_type="notification",
            subject_id=notification_id,
            from_state="pending",
            to_state="dead",
            payload={
                "webhook": row.webhook,
                "event": row.event,
                "attempts": attempts,
                "error": error,
            },
        )
    return True


def outbox_counts(conn: Connection) -> dict[str, int]:
    """Notifications by state; ``pending``, ``delivered`` and ``dead`` are always present."""
    counts = {"pending": 0, "delivered": 0, "dead": 0}
    for state, count in conn.execute(text("SELECT state, COUNT(*) FROM outbox GROUP BY state")):
        counts[str(state)] = int(count)
    return counts
