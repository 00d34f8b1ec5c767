"""The ``[mcp]`` table of ``quarterdeck.toml``: the upstream MCP servers the gateway is a client
of (``[[mcp.servers]]``: a name and either a stdio ``command`` with ``args``/``env``/``cwd`` or a
streamable HTTP ``url``), the workspace its sessions ask in, and how much of a result is kept.

The same server table is what an ``http`` lane's ``mcp_servers`` lists."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Final

from pydantic import AfterValidator, ConfigDict, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from quarterdeck.runtime.validation import problem

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
SEPARATOR: Final = "__"
"""Between a server's name and its tool's: ``git__git_status``."""
MAX_RESULT_BYTES: Final = 64 * 1024
"""The default cap on the part of a tool's result kept on the ledger."""


def _server_name(value: str) -> str:
    if not NAME.fullmatch(value) or SEPARATOR in value:
        raise problem(
            "must be 1 to 48 letters, digits, dashes or single underscores, starting with a "
            "letter or digit"
        )
    return value


Text = Annotated[str, Strict()]


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class McpServer:
    """One upstream MCP server: launched over stdio (``command``) or reached at ``url``."""

    name: Annotated[Text, AfterValidator(_server_name)]
    command: Text | None = None
    args: tuple[Text, ...] = ()
    env: Mapping[Text, Text] = field(default_factory=dict)
    """Added to the server's environment (the SDK's default environment: ``PATH``, ``HOME``,
    ...; never the daemon's whole environment)."""
    cwd: Text | None = None
    url: Text | None = None
    """A streamable HTTP endpoint (``http://`` or ``https://``)."""

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise problem("give either command (stdio) or url (streamable HTTP)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise problem("url: must start with http:// or https://")
        return self


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class McpConfig:
    """The gateway: ``servers`` (each name once), the ``workspace`` its sessions ask in (an
    agent's own credential pins its workspace instead), and ``max_result_bytes`` kept of each
    result (its SHA-256 and size are always kept)."""

    servers: tuple[McpServer, ...] = ()
    workspace: Annotated[Text, Field(min_length=1)] = "default"
    max_result_bytes: Annotated[int, Strict(), Field(ge=0)] = MAX_RESULT_BYTES
    progress_interval_s: Annotated[float, Strict(), Field(gt=0)] = 5.0
    """How often a call waiting for a person sends a progress notification."""

    @model_validator(mode="after")
    def _unique(self) -> McpConfig:
        names = [server.name for server in self.servers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise problem(f"servers: duplicate name {', '.join(map(repr, twice))}")
        return self
