"""The control center's header: what it is attached to, flags, counts and SLO figures, laid out
in lines of the terminal's width."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from quarterdeck.client.console import Snapshot


def layout_segments(groups: list[list[Text]], width: int, separator: str) -> Text:
    """Segments as lines no wider than ``width`` (0: unlimited): each group starts a line, its
    segments joined by ``separator`` (the first group's, a badge and then words, by spaces),
    and a segment that would cross the edge starts the next line. A segment wider than a whole
    line is left to the terminal to wrap."""
    out = Text()
    for number, group in enumerate(groups):
        line = 0
        for index, segment in enumerate(group):
            joiner = separator if number else " " if index == 1 else "  "
            if index == 0:
                if number:
                    out.append("\n")
                if number or not segment.plain.startswith(" "):
                    out.append(" ")
                    line = 1
            elif width and line + len(joiner) + segment.cell_len > width:
                out.append("\n ")
                line = 1
            else:
                out.append(joiner)
                line += len(joiner)
            out.append_text(segment)
            line += segment.cell_len
    return out


class StatusHeader(Static):
    """The runtime's state: what this is attached to, flags (FORCE FALLBACK stands out),
    counts and SLO figures.

    Built from segments laid out in lines of the terminal's width: a segment that does not fit
    starts the next line whole, so a narrow terminal never splits a figure from its name.
    """

    _shown: tuple[Snapshot | None, str | None] | None = None

    def show(self, snapshot: Snapshot | None, error: str | None = None) -> None:
        """Render the header for a snapshot (or the last one, with an error)."""
        self._shown = (snapshot, error)
        badge = Text(" QUARTERDECK ", style="bold reverse")
        if snapshot is None:
            state = [badge, Text("connecting…")]
            if error:
                state.append(Text(error, style="bold red"))
            self._set(layout_segments([state], self.app.size.width, "  "))
            return
        head = snapshot.header
        identity = [badge, Text(head.target)]
        if head.alive is not None:
            identity.append(
                Text("○ daemon not running", style="bold red")
                if not head.alive
                else Text("● daemon alive", style="green")
                if head.alive == 1
                else Text(f"● {head.alive} nodes alive", style="green")
            )
        if head.read_only:
            identity.append(Text("READ-ONLY", style="bold yellow"))
        if head.force_all:
            identity.append(Text(" FORCE FALLBACK: ALL LANES ", style="bold white on red"))
        elif head.forced:
            forced = f" FORCE FALLBACK: {', '.join(head.forced)} "
            identity.append(Text(forced, style="bold white on red"))
        if head.paused:
            identity.append(Text(f"paused: {', '.join(head.paused)}", style="yellow"))
        counts = head.turns
        figures = [
            Text(
                f"turns {sum(counts.values())}: "
                f"{counts.get('running', 0)} running · {counts.get('queued', 0)} queued · "
                f"{counts.get('awaiting_approval', 0)} waiting · "
                f"{counts.get('completed', 0)} done · "
                f"{counts.get('failed', 0) + counts.get('timed_out', 0)} failed"
            ),
            Text(f"approvals {head.approvals_open}", style="bold" if head.approvals_open else ""),
            Text(f"alerts {head.alerts_open}", style="bold red" if head.alerts_open else ""),
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
        figures.append(service)
        identity.append(Text(f"ledger {head.head_seq}"))
        groups = [identity, figures]
        if error:
            groups.append([Text(error, style="bold red")])
        self._set(layout_segments(groups, self.app.size.width, " │ "))

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
