"""The runtime's door to stateful items: every create and transition goes through the writer,
and refused transitions are counted."""

from __future__ import annotations

from typing import Any

from quarterdeck.domain.states import IllegalTransition, Kind, StaleWrite, UnknownState
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.store import items as store_items
from quarterdeck.store.items import ItemState
from quarterdeck.store.writer import Writer, WriteTxn


class Items:
    """Creates items and moves them through their state machines."""

    def __init__(self, writer: Writer, metrics: Metrics | None = None) -> None:
        self.writer = writer
        self.metrics = metrics or Metrics()

    async def create(
        self,
        kind: Kind,
        *,
        workspace: str,
        actor: str,
        fields: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> ItemState:
        """Create an item in its initial state (on the ledger in the same transaction)."""

        def op(txn: WriteTxn) -> ItemState:
            return store_items.create_item(
                txn, kind, workspace=workspace, actor=actor, fields=fields, data=data
            )

        return await self.writer.submit(op)

    async def transition(
        self,
        kind: Kind,
        item_id: str,
        to_state: str,
        *,
        workspace: str,
        actor: str,
        expected_version: int,
        expected_attempt: int | None = None,
        bump_attempt: bool = False,
        fields: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> ItemState:
        """Apply one transition; see :func:`quarterdeck.store.items.transition`.

        Raises:
            IllegalTransition, UnknownState: counted in ``metrics.illegal_transitions``.
            StaleWrite: counted in ``metrics.stale_writes``.
            ItemNotFound: no such item in the workspace.
        """

        def op(txn: WriteTxn) -> ItemState:
            return store_items.transition(
                txn,
                kind,
                item_id,
                to_state,
                workspace=workspace,
                actor=actor,
                expected_version=expected_version,
                expected_attempt=expected_attempt,
                bump_attempt=bump_attempt,
                fields=fields,
                payload=payload,
            )

        try:
            return await self.writer.submit(op)
        except IllegalTransition as exc:
            self.metrics.illegal_transitions[f"{kind}:{exc.from_state}->{exc.to_state}"] += 1
            raise
        except UnknownState as exc:
            self.metrics.illegal_transitions[f"{kind}:?->{exc.state}"] += 1
            raise
        except StaleWrite:
            self.metrics.stale_writes[str(kind)] += 1
            raise
