"""An ``http`` lane's MCP tools: the servers of its ``mcp_servers``, their tools offered to the
model as OpenAI function definitions, and one call decided through the mission's gate and then
run on its server (the real result is what the model reads)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import mcp_types as types

from quarterdeck.domain.policy import ANNOTATIONS_ARG
from quarterdeck.runtime.lanes.base import MissionContext
from quarterdeck.runtime.mcp_config import MAX_RESULT_BYTES, McpServer
from quarterdeck.runtime.mcp_gateway import (
    CALL_TIMEOUT_S,
    Catalogue,
    Entry,
    annotations_of,
    result_record,
)
from quarterdeck.runtime.mcp_upstream import Upstream, UpstreamDown

LIST_TIMEOUT_S: Final = 60.0


def result_text(result: types.CallToolResult) -> str:
    """What the model reads of a result: its text blocks, other blocks as JSON."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(json.dumps(block.model_dump(mode="json", by_alias=True)))
    if result.structured_content is not None and not parts:
        parts.append(json.dumps(result.structured_content))
    text = "\n".join(parts)
    return f"error: {text}" if result.is_error else text


class McpTools:
    """The MCP servers of one lane (started at the first mission, stopped with the lane)."""

    def __init__(self, servers: Sequence[McpServer]) -> None:
        self.upstreams = {server.name: Upstream(server) for server in servers}
        self.catalogue = Catalogue()

    async def definitions(self) -> list[dict[str, Any]]:
        """Every server's tools as OpenAI function definitions (the catalogue is refreshed).

        A server that cannot be reached within a minute is left out of this round."""
        listed: dict[str, list[types.Tool]] = {}
        for name, upstream in self.upstreams.items():
            try:
                listed[name] = await upstream.tools(LIST_TIMEOUT_S)
            except UpstreamDown:
                continue
        self.catalogue = Catalogue.of(listed)
        return [
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": entry.tool.description or "",
                    "parameters": entry.tool.input_schema,
                },
            }
            for name, entry in self.catalogue.entries.items()
        ]

    def entry(self, name: str) -> Entry | None:
        """The MCP tool the model called by ``name``, if it is one."""
        return self.catalogue.entries.get(name)

    async def decide_and_run(
        self, ctx: MissionContext, call_id: str, entry: Entry, args: Mapping[str, Any]
    ) -> str:
        """Ask the gate (``server__tool``, with the annotations), then run the call with the
        decided arguments; what the model reads back."""
        asked = {**args, ANNOTATIONS_ARG: annotations_of(entry.tool)}
        decision = await ctx.request_action(call_id, entry.qualified, asked)
        if decision.outcome == "rejected":
            return json.dumps(
                {"outcome": "rejected", "reason": decision.reason, "ran": False},
                ensure_ascii=False,
            )
        effective = {k: v for k, v in decision.args.items() if k != ANNOTATIONS_ARG}
        try:
            result = await self.upstreams[entry.server].call(
                entry.tool.name, effective, CALL_TIMEOUT_S
            )
        except UpstreamDown as exc:
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=str(exc))], is_error=True
            )
        except Exception as exc:
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=f"the MCP server failed: {exc}")],
                is_error=True,
            )
        kept = result_record(result, 0)
        ctx.emit(
            "progress",
            {"message": f"{entry.qualified} ran ({kept['bytes']} bytes)", "tool": entry.qualified,
             "action_id": call_id, "sha256": kept["sha256"], "bytes": kept["bytes"],
             "is_error": kept["is_error"]},
        )  # fmt: skip
        text = result_text(result)
        if len(text.encode()) > MAX_RESULT_BYTES * 4:
            text = text.encode()[: MAX_RESULT_BYTES * 4].decode("utf-8", "ignore") + " [cut]"
        if decision.outcome == "edited":
            note = json.dumps(effective, ensure_ascii=False)
            return f"(the operator edited the arguments to {note})\n{text}"
        return text

    async def close(self) -> None:
        """Stop every server."""
        for upstream in self.upstreams.values():
            await upstream.close()
