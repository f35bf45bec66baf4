"""``wave`` (SPEC 7): one wave of units that can run at once without touching one path.

Units are taken in order, test-first units (SPEC 13) and what they depend on ahead of the
rest; a unit joins the wave when its scope overlaps no scope already in it (real path
overlap, ``worktree_mesh.scope``: ``src/`` overlaps ``src/a.py``, ``**`` overlaps
everything) and it does not depend on another unit of the input (those are still to run),
until ``max_active`` units are in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..plan import with_dependencies
from ..scope import Scope


@dataclass(frozen=True)
class Wave:
    selected: list[Mapping[str, Any]]  # test-first units first, then in input order
    left: list[str]  # ids for later waves, in input order


def units_of(data: Any) -> list[dict[str, Any]]:
    """The units of a ``slice`` output or a plan file: ``{"units": [...]}``, each an object
    with a string id, ids unique."""
    if not isinstance(data, dict) or not isinstance(data.get("units"), list):
        raise UsageError('$: expected {"units": [...]} (a slice output or a plan)')
    seen: dict[str, int] = {}
    for index, unit in enumerate(data["units"]):
        where = f"$.units[{index}]"
        if not isinstance(unit, dict):
            raise UsageError(f"{where}: expected a unit object, got {type(unit).__name__}")
        uid = unit.get("id")
        if not isinstance(uid, str) or not uid.strip():
            raise UsageError(f"{where}.id: expected a non-empty string")
        if uid in seen:
            raise UsageError(f"{where}.id: duplicate id {uid!r} (also $.units[{seen[uid]}])")
        seen[uid] = index
        scope = unit.get("unit_scope")
        if scope is not None and not (isinstance(scope, str) or (
                isinstance(scope, list) and all(isinstance(s, str) for s in scope))):
            raise UsageError(f"{where}.unit_scope: expected a string or a list of strings")
        deps = unit.get("depends_on")
        if deps is not None and not (isinstance(deps, list)
                                     and all(isinstance(d, str) for d in deps)):
            raise UsageError(f"{where}.depends_on: expected a list of unit ids")
        if not isinstance(unit.get("test_first", False), bool):
            raise UsageError(f"{where}.test_first: expected true or false")
    units: list[dict[str, Any]] = data["units"]
    return units


def scope_of(unit: Mapping[str, Any]) -> Scope:
    return Scope.parse(unit.get("unit_scope"))


def test_first_ids(units: Sequence[Mapping[str, Any]]) -> list[str]:
    return [u["id"] for u in units if u.get("test_first") is True]


def select(units: Sequence[Mapping[str, Any]], max_active: int = 1) -> Wave:
    ids = {u["id"] for u in units}
    ahead = with_dependencies({u["id"]: u.get("depends_on") or () for u in units},
                              test_first_ids(units))
    picked: list[Mapping[str, Any]] = []
    scopes: list[Scope] = []
    left: set[str] = set()
    for unit in [u for u in units if u["id"] in ahead] + [u for u in units
                                                          if u["id"] not in ahead]:
        scope = scope_of(unit)
        waits = any(dep in ids and dep != unit["id"] for dep in unit.get("depends_on") or ())
        if (len(picked) >= max_active or waits
                or any(scope.overlaps(other) for other in scopes)):
            left.add(unit["id"])
            continue
        picked.append(unit)
        scopes.append(scope)
    return Wave(picked, [u["id"] for u in units if u["id"] in left])


def count(units: Sequence[Mapping[str, Any]], max_active: int) -> int:
    """How many waves ``units`` take, each ``select``ed from the units the ones before
    left (the run's first line says it)."""
    left = list(units)
    waves = 0
    while left:
        chosen = select(left, max_active)
        if not chosen.selected:  # a dependency outside the plan: the rest waits on it
            return waves + 1
        waves += 1
        ids = set(chosen.left)
        left = [u for u in left if u["id"] in ids]
    return waves
