"""Test-first groups (SPEC 13): a unit that pins the proof, and the units that make it pass.

A test-first unit's change is proven red and never lands alone: the units that depend on
it (its implementation units) start from it, and the group lands together, in plan order,
with one move of the target once the tip passes every member's proof. What is decided
here is pure: where a member starts and what its commits say (plan.test_first_groups says
which units form a group). The scheduler runs the lanes and the integrator the proofs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from .git import Sha
from .plan import Unit
from .unit_runner import UnitWork

# The phases of a test-first unit between its lanes and its group's landing.
RED_CHECK = "red-check"  # its change waits for (or is in) its red proof
RED = "red"  # proven red: its implementation units start from it


def with_trailers(items: Sequence[tuple[Unit, UnitWork]]) -> list[tuple[Unit, UnitWork]]:
    """The group's works, each commit saying how it was proven: the test commit red by
    design, the implementation commits before the tip covered by the tip's proof."""
    tip = items[-1][0].id
    out = []
    for position, (unit, work) in enumerate(items):
        if position == 0:
            said = f"Wtmesh-Proof: red by design (test-first, green at {tip})"
        elif position < len(items) - 1:
            said = f"Wtmesh-Proof: covered by the proof of {tip} (test-first group tip)"
        else:
            out.append((unit, work))
            continue
        out.append((unit, dataclasses.replace(work, trailers=(*work.trailers, said))))
    return out


def start_of(unit: Unit, groups: Mapping[str, str], staged: Mapping[str, Sha],
             head: Sha) -> Sha:
    """Where a unit's lanes start: an implementation unit from its test-first unit's
    change (``groups``: plan.test_first_groups), the others from the head."""
    owner = groups.get(unit.id)
    if owner is not None and owner != unit.id and owner in staged:
        return staged[owner]
    return head
