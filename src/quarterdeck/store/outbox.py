"""The transactional outbox: notifications written in the same transaction as the change they
announce, then delivered by the relay (``quarterdeck.runtime.relay``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ids import new_ids
from quarterdeck.store.writer import WriteTxn


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook as the store sees it: where to send, how, and which events it wants."""

    name: str
    url: str
    format: str = "json"
    events: tuple[str, ...] = ("*",)

    def wants(self, event: str) -> bool:
        """Whether ``event`` matches one of the target's event globs."""
        return any(fnmatchcase(event, pattern) for pattern in self.events)


_INSERT = text(
    "INSERT INTO outbox (id, workspace, created_at, event, subject_type, subject_id, webhook, "
    "url, format, payload, state, attempts, next_attempt_at) VALUES (:id, :workspace, :at, "
    ":event, :subject_type, :subject_id, :webhook, :url, :format, :payload, 'pending', 0, :at)"
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
    """The body sent to a webhook: the generic JSON document, or a Slack-compatible message."""
    if target_format == "slack":
        return {
            "text": f"[quarterdeck] {event}: {summary}",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{event}*\n{summary}"}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"{subject_type} `{subject_id}` in `{workspace}` at {at}",
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
                "url": target.url,
                "format": target.format,
                "payload": canonical_text(body),
            }
        )
    txn.conn.execute(_INSERT, rows)
    return ids
