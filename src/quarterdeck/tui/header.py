"""The control center's header: what it is attached to and its flags, then counts and SLO
figures, in two lines fitted to the terminal's width."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from quarterdeck.client.console import Snapshot

MIN_CUT = 16
"""A part cut to fit keeps at least this many cells."""


@dataclass(frozen=True, slots=True)
class Part:
    """One segment of a header line: its text, shorter forms to fall back on (each shorter
    than the one before), and how much it matters (the least important gives way first:
    a shorter form, and at last nothing, when ``droppable``)."""

    text: Text
    shorter: tuple[Text, ...] = ()
    rank: int = 0
    droppable: bool = False
    cuttable: bool = False
    """Cut with ``…`` when the line is still too wide once every part gave way."""


def fit_line(parts: list[Part], width: int, separator: str) -> Text:
    """``parts`` as one line no wider than ``width`` (0: unlimited), joined by ``separator``:
    while it is too wide, the least important part that can give way does (its next shorter
    form, else it is left out); the first part is cut with ``…`` when nothing else can."""
    forms = [0] * len(parts)
    kept = [True] * len(parts)

    def current(index: int) -> Text:
        part = parts[index]
        return part.text if forms[index] == 0 else part.shorter[forms[index] - 1]

    def wide() -> int:
        shown = [current(i).cell_len for i in range(len(parts)) if kept[i]]
        lead = 1 if not kept[0] or not current(0).plain.startswith(" ") else 0
        return lead + sum(shown) + len(separator) * (len(shown) - 1)

    cut = [0] * len(parts)

    def can_cut(index: int) -> bool:
        return parts[index].cuttable and current(index).cell_len - cut[index] > MIN_CUT

    while width and wide() - sum(cut) > width:
        giving = [
            i
            for i, part in enumerate(parts)
            if kept[i] and (forms[i] < len(part.shorter) or part.droppable or can_cut(i))
        ]
        if not giving:
            break
        index = min(giving, key=lambda i: (parts[i].rank, -i))
        if forms[index] < len(parts[index].shorter):
            forms[index] += 1
        elif can_cut(index):
            over = wide() - sum(cut) - width
            cut[index] += min(over, current(index).cell_len - cut[index] - MIN_CUT)
        else:
            kept[index] = False
    out = Text()
    for index in range(len(parts)):
        if not kept[index]:
            continue
        if out:
            out.append(separator)
        elif not current(index).plain.startswith(" "):
            out.append(" ")
        text = current(index)
        if cut[index]:
            text = text.copy()
            text.truncate(text.cell_len - cut[index] - 1)
            text.append("…")
        out.append_text(text)
    if width and out.cell_len > width:
        out.truncate(width - 1)
        out.append("…")
    return out


def lanes(count: int) -> str:
    """``1 lane``, ``3 lanes``."""
    return f"{count} lane" + ("" if count == 1 else "s")


class StatusHeader(Static):
    """The runtime's state in two lines: what this is attached to and its flags (FORCE
    FALLBACK stands out), then counts and SLO figures.

    Each line is fitted to the terminal's width by :func:`fit_line`: the least important
    segments take a shorter form or give way first; a flag is never left out.
    """

    _shown: tuple[Snapshot | None, str | None] | None = None

    def show(self, snapshot: Snapshot | None, error: str | None = None) -> None:
        """Render the header for a snapshot (or the last one, with an error): at most two
        lines whatever the width, the flags kept whole before anything else."""
        self._shown = (snapshot, error)
        width = self.app.size.width
        badge = Part(
            Text(" QUARTERDECK ", style="bold reverse"),
            (Text(" QD ", style="bold reverse"),),
            rank=5,
        )
        if snapshot is None:
            state = [badge, Part(Text("connecting…"), rank=5)]
            if error:
                state.append(Part(Text(error, style="bold red"), rank=8))
            self._set(fit_line(state, width, "  "))
            return
        head = snapshot.header
        identity = [badge, self._target(head.target)]
        if head.alive is not None:
            if not head.alive:
                identity.append(
                    Part(
                        Text("○ daemon not running", style="bold red"),
                        (Text("○ no daemon", style="bold red"),),
                        rank=8,
                    )
                )
            else:
                alive = "● daemon alive" if head.alive == 1 else f"● {head.alive} nodes alive"
                identity.append(
                    Part(Text(alive, style="green"), (Text("●", style="green"),), rank=3)
                )
        if head.read_only:
            identity.append(
                Part(
                    Text("READ-ONLY", style="bold yellow"),
                    (Text("RO", style="bold yellow"),),
                    rank=8,
                )
            )
        flag = "bold white on red"
        if head.force_all:
            identity.append(
                Part(
                    Text(" FORCE FALLBACK: ALL LANES ", style=flag),
                    (Text(" FALLBACK: ALL ", style=flag),),
                    rank=9,
                )
            )
        elif head.forced:
            forced = ", ".join(head.forced)
            identity.append(
                Part(
                    Text(f" FORCE FALLBACK: {forced} ", style=flag),
                    (
                        Text(f" FALLBACK: {forced} ", style=flag),
                        Text(f" FALLBACK: {lanes(len(head.forced))} ", style=flag),
                    ),
                    rank=9,
                )
            )
        if head.paused:
            paused = ", ".join(head.paused)
            identity.append(
                Part(
                    Text(f"paused: {paused}", style="yellow"),
                    (Text(f"paused: {lanes(len(head.paused))}", style="yellow"),),
                    rank=7,
                )
            )
        identity.append(Part(Text(f"ledger {head.head_seq}"), rank=1, droppable=True))
        counts = head.turns
        running, queued = counts.get("running", 0), counts.get("queued", 0)
        waiting, done = counts.get("awaiting_approval", 0), counts.get("completed", 0)
        failed = counts.get("failed", 0) + counts.get("timed_out", 0)
        figures = [
            Part(
                Text(
                    f"turns {sum(counts.values())}: {running} running · {queued} queued · "
                    f"{waiting} waiting · {done} done · {failed} failed"
                ),
                (
                    Text(
                        f"turns {running} run · {queued} queued · {waiting} wait · "
                        f"{done} done · {failed} fail"
                    ),
                    Text(f"{running} run {queued} q {waiting} wait {failed} fail"),
                ),
                rank=6,
            ),
            Part(
                Text(
                    f"approvals {head.approvals_open}", style="bold" if head.approvals_open else ""
                ),
                (Text(f"appr {head.approvals_open}", style="bold" if head.approvals_open else ""),),
                rank=7,
            ),
            Part(
                Text(f"alerts {head.alerts_open}", style="bold red" if head.alerts_open else ""),
                rank=7,
            ),
        ]
        slo = head.slo
        p95 = slo.get("mission_latency_p95_s")
        fallback = slo.get("fallback_rate")
        service = Text(f"p95 {p95:.2f}s" if isinstance(p95, int | float) else "p95 -")
        service.append(
            f" fallback {fallback:.0%}" if isinstance(fallback, int | float) else " fallback -"
        )
        dead = slo.get("dead_letters")
        if dead:
            service.append(f" dead {dead}", style="bold red")
        figures.append(Part(service, rank=2, droppable=True))
        lines = [fit_line(identity, width, "  "), fit_line(figures, width, " │ ")]
        if error:
            # An error takes the figures' line: the store cannot be read, they are stale.
            lines[1] = fit_line([Part(Text(error, style="bold red"), rank=9)], width, "")
        self._set(Text("\n").join(lines))

    def on_resize(self) -> None:
        """Lay the last header out again for the new width."""
        if self._shown is not None:
            self.show(*self._shown)

    def _set(self, text: Text) -> None:
        """Show ``text``: drawn again in place, and the screen laid out again only when the
        header's height changes (a layout redraws every widget)."""
        if text == self.content:
            return
        width, height = self.size
        self.update(text, layout=False)
        if not width or self.get_content_height(self.size, self.size, width) != height:
            self.refresh(layout=True)

    def _target(self, target: str) -> Part:
        """What the console shows, shorter forms without the node's id."""
        shorter = []
        if "(" in target:
            shorter.append(Text(target.split("(", 1)[0].strip()))
        return Part(Text(target), tuple(shorter), rank=2, cuttable=True)
