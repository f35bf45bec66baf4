"""The budget clamp (SPEC 7): how many units may run at once on what remains of a budget.

Pure: ``wtmesh budget``, ``wtmesh replay`` and ``wtmesh run --remaining-*`` share it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_MAX_THREADS = 12
DEFAULT_SINGLE_AGENT_THRESHOLD = 10.0
DEFAULT_LINEAR_START_THRESHOLD = 33.0
DEFAULT_SCALEOUT_THRESHOLD = 25.0
DEFAULT_RESERVE_SLOTS = 2
MODES = ("single_agent", "linear_clamp", "full_fanout")


def clamp_percent(value: float) -> float:
    if math.isnan(value):
        raise ValueError("a percentage cannot be NaN")
    return float(min(100.0, max(0.0, value)))


@dataclass(frozen=True)
class BudgetDecision:
    remaining_five_hour: float
    remaining_weekly: float
    remaining_strict: float
    linear_start_threshold: float
    single_agent_threshold: float
    scaleout_threshold: float
    max_threads: int
    max_active_units: int
    mode: str
    cas_scaleout_allowed: bool
    # Set by ``with_roles`` (``--roles-per-task``): consensus tasks to run side by side.
    roles_per_task: int | None = None
    reserve_slots: int | None = None
    parallel_tasks_target: int | None = None

    def limit(self, max_active: int) -> int:
        """A run's ``max_active`` clamped by this decision (never below 1)."""
        return max(1, min(max_active, self.max_active_units))

    def with_roles(self, roles_per_task: int,
                   reserve_slots: int = DEFAULT_RESERVE_SLOTS) -> BudgetDecision:
        """This decision plus SPEC 12's ``parallel_tasks_target``: tasks whose every role (each
        variant and critic) holds a slot, once ``reserve_slots`` of ``max_threads`` are kept."""
        return replace(self, roles_per_task=roles_per_task, reserve_slots=reserve_slots,
                       parallel_tasks_target=parallel_tasks_target(
                           self.max_threads, roles_per_task, reserve_slots))

    def as_dict(self) -> dict[str, Any]:
        """The keys of ``wtmesh budget``'s output, in its order (the roles' keys last, only
        when given)."""
        out: dict[str, Any] = {
            "command": "budget",
            "remaining_five_hour": self.remaining_five_hour,
            "remaining_weekly": self.remaining_weekly,
            "remaining_strict": self.remaining_strict,
            "linear_start_threshold": self.linear_start_threshold,
            "single_agent_threshold": self.single_agent_threshold,
            "scaleout_threshold": self.scaleout_threshold,
            "max_threads": self.max_threads,
            "max_active_units": self.max_active_units,
            "mode": self.mode,
            "cas_scaleout_allowed": self.cas_scaleout_allowed,
        }
        if self.parallel_tasks_target is not None:
            out.update(roles_per_task=self.roles_per_task, reserve_slots=self.reserve_slots,
                       parallel_tasks_target=self.parallel_tasks_target)
        return out

    def as_json(self) -> str:
        """One JSON line; percentages are always JSON floats (``40.0``, not ``40``)."""
        return json.dumps(self.as_dict())

    def as_text(self) -> str:
        allowed = "true" if self.cas_scaleout_allowed else "false"
        text = (f"mode={self.mode} strict_remaining={self.remaining_strict:.2f} "
                f"max_active_units={self.max_active_units} cas_scaleout_allowed={allowed}")
        if self.parallel_tasks_target is not None:
            text += (f" roles_per_task={self.roles_per_task} reserve_slots={self.reserve_slots}"
                     f" parallel_tasks_target={self.parallel_tasks_target}")
        return text


def parallel_tasks_target(max_threads: int, roles_per_task: int,
                          reserve_slots: int = DEFAULT_RESERVE_SLOTS) -> int:
    """``max(1, floor((max_threads - reserve_slots) / roles_per_task))`` (12 threads, 5 roles:
    2). A ``ValueError`` unless ``roles_per_task >= 1`` and ``0 <= reserve_slots < max_threads``."""
    if roles_per_task < 1:
        raise ValueError(f"--roles-per-task must be at least 1, not {roles_per_task}")
    if reserve_slots < 0:
        raise ValueError(f"--reserve-slots cannot be negative ({reserve_slots})")
    if reserve_slots >= max_threads:
        raise ValueError(f"--reserve-slots {reserve_slots} leaves no slot of --max-threads "
                         f"{max_threads}: reserve fewer slots than threads")
    return max(1, (max_threads - reserve_slots) // roles_per_task)


def clamp(five_hour: float, weekly: float, max_threads: int = DEFAULT_MAX_THREADS, *,
          single_agent_threshold: float = DEFAULT_SINGLE_AGENT_THRESHOLD,
          linear_start_threshold: float = DEFAULT_LINEAR_START_THRESHOLD,
          scaleout_threshold: float = DEFAULT_SCALEOUT_THRESHOLD) -> BudgetDecision:
    """Percentages (remaining budget and thresholds) are clamped to [0, 100]; NaN is a
    ``ValueError``."""
    five = clamp_percent(five_hour)
    week = clamp_percent(weekly)
    single = clamp_percent(single_agent_threshold)
    linear = clamp_percent(linear_start_threshold)
    scaleout = clamp_percent(scaleout_threshold)
    threads = max(1, int(max_threads))
    strict = min(five, week)
    if strict <= single or linear <= single:
        mode, units = "single_agent", 1
    elif strict <= linear:
        # As SPEC writes it, left to right: floor(max_threads * (strict - single) / span).
        mode = "linear_clamp"
        units = max(1, min(threads, math.floor(threads * (strict - single) / (linear - single))))
    else:
        mode, units = "full_fanout", threads
    return BudgetDecision(
        remaining_five_hour=five, remaining_weekly=week, remaining_strict=strict,
        linear_start_threshold=linear, single_agent_threshold=single,
        scaleout_threshold=scaleout, max_threads=threads, max_active_units=units, mode=mode,
        cas_scaleout_allowed=strict > scaleout)


def wave_sizes(ready_units: int, per_wave: int) -> list[int]:
    """``ready_units`` split into waves of at most ``per_wave`` (19 by 12: [12, 7])."""
    per_wave = max(1, per_wave)
    full, rest = divmod(max(0, ready_units), per_wave)
    return [per_wave] * full + ([rest] if rest else [])
