"""``replay`` (SPEC 7): a schedule without executing anything.

With budget numbers: ``ready_units`` cut into waves of the clamp's ``max_active_units``.
With a plan: the plan's real schedule — dependencies, scope overlap, ``max_active`` — from
``readiness.Readiness``, the code the scheduler itself runs, every unit assumed to integrate.
Test-first groups (SPEC 13) are ahead of the rest in that order, so test-first units start
in the first wave; they are listed as ``test_first_ids``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import plan as plan_mod
from ..errors import PlanError
from ..readiness import Readiness
from .budget import BudgetDecision, wave_sizes
from .jsonio import read_json

# Replay runs no lane, so a plan straight from `slice` (no lanes yet) can be replayed.
_PLACEHOLDER_CODER = {"command": "true"}


def budget_replay(decision: BudgetDecision, ready_units: int) -> dict[str, Any]:
    waves = wave_sizes(ready_units, decision.max_active_units)
    return {"command": "replay", "mode": decision.mode,
            "max_active_units": decision.max_active_units, "ready_units": ready_units,
            "wave_count": len(waves), "waves": waves}


def load_plan(path: Path) -> plan_mod.Plan:
    """The plan as ``validate`` reads it (every problem reported), lanes optional."""
    data = read_json(path, "plan file")
    if isinstance(data, dict):
        lanes = data.get("lanes")
        if lanes is None:
            data = {**data, "lanes": {"coder": _PLACEHOLDER_CODER}}
        elif isinstance(lanes, dict) and "coder" not in lanes:
            data = {**data, "lanes": {**lanes, "coder": _PLACEHOLDER_CODER}}
    found = plan_mod.problems(data)
    if found:
        unique = list(dict.fromkeys(found))
        raise PlanError(f"{path}: invalid plan", details=[f"{path}: {p}" for p in unique])
    return plan_mod.build(data, path.resolve())


def plan_replay(path: Path, max_active: int | None = None,
                decision: BudgetDecision | None = None) -> dict[str, Any]:
    plan = load_plan(path)
    limit = max_active or plan.max_active
    if decision is not None:
        limit = decision.limit(limit)
    waves = Readiness(plan_mod.integration_order(plan), plan.overlap).waves(limit)
    out: dict[str, Any] = {"command": "replay", "plan": str(path)}
    if decision is not None:
        out["mode"] = decision.mode
    out.update({"max_active_units": limit, "unit_count": len(plan.units),
                "wave_count": len(waves), "waves": waves,
                "test_first_ids": [u.id for u in plan.units if u.test_first]})
    return out
