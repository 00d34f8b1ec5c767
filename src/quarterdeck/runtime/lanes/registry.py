"""The lane adapters by name. The configuration checks a lane's ``adapter`` and ``options``
here; the runtime builds its lanes here. A new adapter is a module in this package that
declares its :class:`~quarterdeck.runtime.lanes.base.Adapter`, and one entry below."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def startup_problems(specs: Iterable[LaneSpec]) -> list[str]:
    """What stops this process from running the configured lanes (an agent's ``run_as`` user
    the daemon cannot switch to, say), as ``lanes.<name>.options.key: message``. Lanes whose
    adapter or options are invalid are left to the configuration's own checks."""
    found: list[str] = []
    for spec in specs:
        adapter = ADAPTERS.get(spec.adapter)
        if adapter is None:
            continue
        try:
            options = adapter.options.parse(spec.name, spec.options)
        except ValueError:
            continue
        found.extend(f"lanes.{spec.name}.{problem}" for problem in options.startup_problems())
    return found
