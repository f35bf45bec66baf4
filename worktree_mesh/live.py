"""The live view on a terminal (SPEC 9): a table of units redrawn in place.

It is an observer of ledger records like the line renderer. Records arrive from the lane
and integrator threads; they only update a small model under a lock. rich redraws from
its own thread a few times a second, so a run never waits on the terminal, and it
measures the terminal on every redraw, so a resize or a narrow window just reflows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import usage as usage_mod
from .consensus import summary as consensus_summary
from .output import CONSENSUS_EVENTS, STATE_STYLE, describe, sandbox_note
from .readiness import FINAL_STATES
from .usage import Usage, summed_cost_text, tokens_text

REFRESH_PER_SECOND = 2
# Lines around the table (title, header, progress, notes): rows beyond the terminal's
# height are not drawn at all, since drawing holds the interpreter lock the run needs.
FRAME_LINES = 8
FINAL = FINAL_STATES  # a unit in one of these has ended


@dataclass
class _Row:
    unit: str
    state: str = "pending"
    lane: str = ""
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    files: int | None = None
    added: int = 0
    removed: int = 0
    failure: str = ""
    spent: list[Usage] = field(default_factory=list)  # each finished attempt's usage
    # A consensus unit's records its candidates are read from (consensus/summary.py).
    consensus: list[dict[str, Any]] = field(default_factory=list)

    def candidates(self) -> str:
        """How a consensus unit's candidates stand: ``1 running, 1 proven, 1 out``, and
        once one is chosen, which and by how many critics."""
        shown = consensus_summary.candidates(self.consensus, self.unit, "running")
        chosen = next((c for c in shown if c["chosen"]), None)
        if chosen is not None:
            votes = chosen["votes"]
            return f"{chosen['name']} chosen" + (
                f" {votes['agree']}/{votes['critics']}" if votes else "")
        counts = {"running": 0, "proven": 0, "out": 0}
        for candidate in shown:
            status = candidate["status"]
            counts[status if status in counts else "out"] += 1
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n)

    def usage(self) -> dict[str, Any] | None:
        summed = usage_mod.total(self.spent)
        return None if summed is None else summed.record()

    def elapsed(self, now: float) -> str:
        if self.started is None:
            return ""
        return f"{(self.ended or now) - self.started:.0f}s"


@dataclass
class _Model:
    title: str = ""
    rows: dict[str, _Row] = field(default_factory=dict)
    integrator: str = "idle"
    notes: list[str] = field(default_factory=list)  # lock waits, backpressure, strandings
    max_cost_usd: float | None = None  # the run's budget, shown beside what it spent


class LiveView:
    """Use as a context manager around the run; call it with each ledger record."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream, highlight=False)
        self._model = _Model()
        self._lock = threading.Lock()
        self._version = 0
        self._drawn_key: tuple[Any, ...] = ()
        self._drawn: RenderableType = Text("")
        self._live = Live(console=self.console, refresh_per_second=REFRESH_PER_SECOND,
                          transient=True, get_renderable=self._render)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._live.stop()

    # -- the model -----------------------------------------------------------------------

    def __call__(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._update(record)
            self._version += 1

    def _row(self, unit: str) -> _Row:
        return self._model.rows.setdefault(unit, _Row(unit))

    def _update(self, record: dict[str, Any]) -> None:
        event, model, now = record["event"], self._model, time.monotonic()
        if event == "run_started":
            model.title = describe(record) or ""
            model.max_cost_usd = record.get("max_cost_usd")
            for unit in record.get("units", []):
                self._row(unit)
        elif event == "run_resumed":
            model.title = f"run {record['run_id']} (resumed)" + sandbox_note(record)
            model.max_cost_usd = record.get("max_cost_usd")
        elif event == "unit_state":
            row = self._row(record["unit"])
            row.state = record["state"]
            phase = record.get("phase") or ""
            row.lane = "" if phase == "starting" else phase
            if record.get("critic"):  # of a consensus unit: which round its critics are in
                row.lane += " r" + str(record["critic"]).rpartition("-r")[2]
            if row.started is None:
                row.started = now
        elif event == "lane_started":
            row = self._row(record["unit"])
            row.attempt = record["attempt"]
            if not record.get("critic"):
                row.lane = record["lane"]
            if record.get("candidate"):
                row.consensus.append(record)
        elif event in CONSENSUS_EVENTS:
            self._row(record["unit"]).consensus.append(record)
        elif event == "lane_finished" and record.get("usage"):
            try:
                self._row(record["unit"]).spent.append(usage_mod.parse(record["usage"]))
            except usage_mod.UsageProblem:  # the ledger's own records are well formed
                pass
        elif event == "lanes_done" and record.get("stats"):
            row = self._row(record["unit"])
            stats = record["stats"]
            row.files, row.added, row.removed = stats["files"], stats["added"], stats["removed"]
        elif event == "unit_finished":
            row = self._row(record["unit"])
            row.state, row.lane, row.failure = record["status"], "", record["failure_code"] or ""
            row.ended = now
            if row.files is None:
                row.files = len(record.get("files", []))
        elif event == "apply_started":
            model.integrator = f"applying {record['unit']}"
        elif event == "proof_started":
            units = record.get("units") or [record["unit"]]
            model.integrator = (f"proving {units[0]}" if len(units) == 1
                                else f"proving {len(units)} units, {units[0]}..{units[-1]}")
            if record.get("of"):  # a consensus unit's candidate
                model.integrator += f" [{record['of']}]"
        elif event == "landed":
            model.integrator = f"landed {record['unit']}"
        elif event in ("lock_wait", "backpressure", "stranded", "left_behind",
                       "index_lock_wait", "warning", "budget_exhausted", "base_proof"):
            line = describe(record)
            if line:
                model.notes = [*model.notes[-2:], line]

    def recall(self, records: list[dict[str, Any]]) -> None:
        """A resumed run: its consensus units' candidates as the interrupted run left them
        (a candidate that finished then is not run again, so says nothing new)."""
        with self._lock:
            for record in records:
                if record["event"] in CONSENSUS_EVENTS:
                    self._row(record["unit"]).consensus.append(record)
            self._version += 1

    # -- drawing -------------------------------------------------------------------------

    def _render(self) -> RenderableType:
        with self._lock:
            # Nothing new and the same second on the clock: the last drawing stands.
            key = (self._version, int(time.monotonic()), self.console.size)
            if key != self._drawn_key:
                self._drawn_key = key
                self._drawn = self._draw(time.monotonic())
            return self._drawn

    def _visible(self, rows: list[_Row]) -> tuple[list[_Row], str]:
        """The rows that fit the terminal: running units first, then the latest to
        finish, then pending ones, shown in plan order; and a line for the rest."""
        room = max(3, self.console.size.height - FRAME_LINES - len(self._model.notes))
        if len(rows) <= room:
            return rows, ""
        running = [r for r in rows if r.state == "running"]
        ended = sorted((r for r in rows if r.state in FINAL), key=lambda r: r.ended or 0,
                       reverse=True)
        waiting = [r for r in rows if r.state not in FINAL and r.state != "running"]
        chosen = {id(r) for r in [*running, *ended, *waiting][:room]}
        shown = [r for r in rows if id(r) in chosen]
        hidden = len(rows) - len(shown)
        return shown, f"... and {hidden} more units (wtmesh status shows them all)"

    def _draw(self, now: float) -> RenderableType:
        model = self._model
        all_rows = list(model.rows.values())
        rows, more = self._visible(all_rows)
        table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
        # On a narrow terminal the unit and its state keep their width; the rest shrink.
        longest = max((len(row.unit) for row in rows), default=4)
        table.add_column("unit", no_wrap=True, overflow="ellipsis", max_width=28,
                         min_width=min(longest, 16))
        table.add_column("state", no_wrap=True, min_width=10)
        table.add_column("lane", no_wrap=True, overflow="ellipsis")
        table.add_column("try", justify="right", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("files", justify="right", no_wrap=True)
        table.add_column("+/-", justify="right", no_wrap=True)
        # A consensus unit's candidates, once there is one.
        consensus = any(row.consensus for row in all_rows)
        if consensus:
            table.add_column("candidates", no_wrap=True, overflow="ellipsis")
        table.add_column("failure", no_wrap=True, overflow="ellipsis")
        # Tokens and cost only once a lane has reported what it spent.
        spent = any(row.spent for row in all_rows)
        if spent:
            table.add_column("tokens", justify="right", no_wrap=True)
            table.add_column("cost", justify="right", no_wrap=True)
        for row in rows:
            used = row.usage()
            table.add_row(
                Text(row.unit), Text(row.state, style=STATE_STYLE.get(row.state, "")),
                Text(row.lane), str(row.attempt or ""), row.elapsed(now),
                "" if row.files is None else str(row.files),
                f"+{row.added}/-{row.removed}" if row.files else "",
                *((Text(row.candidates()),) if consensus else ()), Text(row.failure),
                *((tokens_text(used), summed_cost_text(used)) if spent else ()))
        done = sum(1 for row in all_rows if row.state in FINAL)
        progress = Table.grid(padding=(0, 1))
        progress.add_row(ProgressBar(total=max(1, len(all_rows)), completed=done, width=30),
                         Text(f"{done}/{len(all_rows)} units finished"),
                         Text(f"integrator: {model.integrator}", style="dim"))
        if spent:
            run_total = usage_mod.total(u for row in all_rows for u in row.spent)
            assert run_total is not None
            progress.add_row(Text(""), Text(usage_mod.spent_line(run_total.record(),
                                                                model.max_cost_usd)))
        parts: list[RenderableType] = [Text(model.title, style="bold"), table]
        if more:
            parts.append(Text(more, style="dim"))
        parts.append(progress)
        parts += [Text(note, style="yellow") for note in model.notes]
        return Group(*parts)
