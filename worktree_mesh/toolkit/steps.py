"""``update_plan`` payloads (SPEC 7 ``plan-sync``): the steps, their statuses normalised.

Accepted shapes: a bare step array, ``{"plan": [...]}`` (Codex's update_plan) or
``{"steps": [...]}``. A step is an object with ``step`` (or ``title``) text and a
``status``; a missing status is ``pending``. Status aliases are normalised
(open/queued -> pending, active/doing -> in_progress, done/closed -> completed), after
lower-casing and reading ``-`` and spaces as ``_`` (``In Progress`` is ``in_progress``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

PENDING, IN_PROGRESS, COMPLETED = "pending", "in_progress", "completed"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED)
ALIASES = {
    "open": PENDING, "queued": PENDING, "todo": PENDING,
    "active": IN_PROGRESS, "doing": IN_PROGRESS,
    "done": COMPLETED, "closed": COMPLETED,
}
UNTITLED = "untitled-step"


def normalise_status(status: str) -> str:
    key = status.strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class Step:
    index: int
    path: str  # JSON path of the step in its input, e.g. $.plan[2]
    text: str
    status: str  # normalised
    fields: Mapping[str, Any]  # the step object as given

    def normalised(self) -> dict[str, Any]:
        return {**self.fields, "status": self.status}


@dataclass(frozen=True)
class StepList:
    steps: tuple[Step, ...]
    key: str | None  # "plan", "steps", or None for a bare array
    extra: Mapping[str, Any]  # other top-level keys (an update_plan "explanation")

    def counts(self) -> dict[str, int]:
        counts = {"total_steps": len(self.steps), PENDING: 0, IN_PROGRESS: 0, COMPLETED: 0,
                  "other": 0}
        for step in self.steps:
            counts[step.status if step.status in STATUSES else "other"] += 1
        return counts

    def normalised_plan(self) -> dict[str, Any]:
        """The update_plan shape: other top-level keys kept, the steps under ``plan``."""
        extra = {k: v for k, v in self.extra.items() if k not in ("plan", "steps")}
        return {**extra, "plan": [s.normalised() for s in self.steps]}


def _text(step: Mapping[str, Any], where: str) -> str:
    for key in ("step", "title"):
        value = step.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UsageError(f"{where}.{key}: expected a string, got {type(value).__name__}")
        if value.strip():
            return value
    return UNTITLED


def parse(data: Any) -> StepList:
    """Every shape problem is a one-line ``UsageError`` naming its JSON path."""
    if isinstance(data, list):
        key, items, extra = None, data, {}
    elif isinstance(data, dict):
        key = next((k for k in ("plan", "steps") if k in data), None)
        if key is None:
            if "units" in data:
                raise UsageError("$: this is a wtmesh plan (it has \"units\"), not an "
                                 "update_plan payload")
            raise UsageError('$: expected a step array, {"plan": [...]} or {"steps": [...]}')
        items, extra = data[key], data
        if not isinstance(items, list):
            raise UsageError(f"$.{key}: expected an array of steps, got "
                             f"{type(items).__name__}")
    else:
        raise UsageError('$: expected a step array, {"plan": [...]} or {"steps": [...]}, '
                         f"got {type(data).__name__}")
    prefix = "$" if key is None else f"$.{key}"
    steps = []
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a step object, got {type(item).__name__}")
        status = item.get("status", PENDING)
        if not isinstance(status, str):
            raise UsageError(f"{where}.status: expected a string, got {type(status).__name__}")
        steps.append(Step(index, where, _text(item, where), normalise_status(status), item))
    return StepList(tuple(steps), key, extra)
