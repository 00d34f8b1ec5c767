"""The lane adapters by name. The configuration checks a lane's ``adapter`` and ``options``
here; the runtime builds its lanes here. A new adapter is a module in this package that
declares its :class:`~quarterdeck.runtime.lanes.base.Adapter`, and one entry below."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from quarterdeck.runtime.lanes import command, http, python, sim
from quarterdeck.runtime.lanes.base import Adapter, Lane

ADAPTERS: Final[Mapping[str, Adapter]] = MappingProxyType(
    {
        adapter.name: adapter
        for adapter in (sim.ADAPTER, command.ADAPTER, http.ADAPTER, python.ADAPTER)
    }
)


class LaneSpec(Protocol):
    """What building a lane needs from its configuration (a ``LaneConfig`` is one)."""

    @property
    def name(self) -> str:
        """The lane's name."""
        ...

    @property
    def adapter(self) -> str:
        """The adapter's name."""
        ...

    @property
    def options(self) -> Mapping[str, Any]:
        """The adapter's options, as written."""
        ...


def build_lane(spec: LaneSpec) -> Lane:
    """Instantiate the adapter a lane's configuration names.

    Raises:
        ValueError: the adapter is unknown or its options are unusable.
    """
    adapter = ADAPTERS.get(spec.adapter)
    if adapter is None:
        raise ValueError(f"unknown adapter {spec.adapter!r}")
    return adapter.build(spec.name, spec.options)
