"""Lanes: where missions run. Every adapter speaks the same small vocabulary (see
``docs/specs/lane-protocol.md``): it reports progress, asks for actions (tool calls that
policy may gate) and ends with a deliverable or a failure."""

from quarterdeck.runtime.lanes.base import (
    Decision,
    Lane,
    LaneFailure,
    MissionContext,
)

__all__ = ["Decision", "Lane", "LaneFailure", "MissionContext"]
