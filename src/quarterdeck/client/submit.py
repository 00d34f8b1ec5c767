"""The SDK's client: a :class:`~quarterdeck.client.connection.Connection` that also asks for
approval before an action runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quarterdeck.client.approvals import request_approval
from quarterdeck.client.connection import DEFAULT_WORKSPACE, Connection
from quarterdeck.client.decisions import ApprovalDecision

__all__ = ["DEFAULT_WORKSPACE", "Client"]


class Client(Connection):
    """A connection to one Quarterdeck database for submitting envelopes and commands.

    Use as ``async with Client(url) as client: results = await client.submit([...])``.
    ``workspace`` is where :meth:`command` and :meth:`request_approval` send their envelopes.
    """

    async def request_approval(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        action_id: str | None = None,
        lane: str | None = None,
        estimated_cost: float | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.05,
    ) -> ApprovalDecision:
        """Ask whether ``action`` may run with ``args``; wait for the policy or a person.

        See :func:`quarterdeck.client.approvals.request_approval`.
        """
        return await request_approval(
            self, action, args, action_id=action_id, lane=lane, estimated_cost=estimated_cost,
            timeout_s=timeout_s, poll_s=poll_s,
        )  # fmt: skip
