"""``slice`` (SPEC 7): pending and in-progress plan steps become atomic units.

Each unit gets the ten mesh fields: ``unit-001``, ``unit-002``, ... as its id, the step's
text as its objective, the fields the step carries, and mesh's defaults for the rest
(but a missing scope is ``**``, not ``unknown``). A step may also carry ``depends_on``,
``timeout_s``, ``proof_timeout_s``, ``lanes`` and ``test_first`` (SPEC 13), which go to
the unit as they are;
``depends_on`` may name other steps by their ``id``: a sliced step becomes its unit id,
a completed step is dropped (it is done), anything else is kept for ``validate`` to judge.

The ``--output-json`` plan leaves out two defaults the step did not ask for, because in a
plan they would override the plan's own settings: an empty ``proof_command`` (a unit's
empty proof command means "no proof" even when the plan has one) and ``delivery_mode`` (a
unit's must equal the run's, so ``wtmesh run --delivery patch_first`` would refuse). When
steps do carry a delivery mode, the plan states it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .meshcsv import MESH_DEFAULTS, MESH_FIELDS
from .steps import COMPLETED, IN_PROGRESS, PENDING, StepList

CARRIED = tuple(f for f in MESH_FIELDS if f not in ("id", "objective"))
EXTRA_CARRIED = ("depends_on", "timeout_s", "proof_timeout_s", "lanes", "test_first")
PLAN_OVERRIDING_DEFAULTS = ("proof_command", "delivery_mode")


@dataclass(frozen=True)
class Slice:
    units: list[dict[str, Any]]  # what `slice` prints: the ten mesh fields each, in order
    plan: dict[str, Any]  # the --output-json file: {"version": 1, "units": [...]}


def unit_id(n: int) -> str:
    return f"unit-{n:03d}"


def slice_steps(steps: StepList, max_slices: int | None = None) -> Slice:
    chosen = [s for s in steps.steps if s.status in (PENDING, IN_PROGRESS)]
    if max_slices is not None:
        chosen = chosen[:max_slices]
    by_step_id = {s.fields["id"]: unit_id(n) for n, s in enumerate(chosen, 1)
                  if isinstance(s.fields.get("id"), str)}
    done = {s.fields["id"] for s in steps.steps
            if s.status == COMPLETED and isinstance(s.fields.get("id"), str)}
    units, plan_units = [], []
    for n, step in enumerate(chosen, 1):
        unit: dict[str, Any] = {"id": unit_id(n), "objective": step.text}
        for name in CARRIED:
            unit[name] = step.fields.get(name, MESH_DEFAULTS[name])
        for name in EXTRA_CARRIED:
            if name in step.fields:
                unit[name] = step.fields[name]
        deps = unit.get("depends_on")
        if isinstance(deps, list):
            unit["depends_on"] = [by_step_id.get(d, d) if isinstance(d, str) else d
                                  for d in deps
                                  if not (isinstance(d, str) and d in done
                                          and d not in by_step_id)]
        units.append(unit)
        plan_units.append({k: v for k, v in unit.items()
                           if not (k in PLAN_OVERRIDING_DEFAULTS and k not in step.fields)})
    plan: dict[str, Any] = {"version": 1}
    modes = {u["delivery_mode"] for u in plan_units if isinstance(u.get("delivery_mode"), str)}
    if len(modes) == 1:
        # A unit's delivery_mode must equal the run's: say it once for the plan too.
        plan["delivery_mode"] = modes.pop()
    plan["units"] = plan_units
    return Slice(units, plan)
