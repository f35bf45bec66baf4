"""When a unit may start (SPEC 3.1). Pure: the scheduler and ``replay`` share it.

A unit is ready when every unit it depends on is integrated (or found nothing to do), no
earlier unit in integration order whose scope overlaps its own is unfinished, and a slot
is free. Overlapping units therefore run one after another, each from the other's
integrated result, and cannot conflict -- unless the plan's overlap is optimistic, when
only depends_on orders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .plan import Unit, test_first_groups

FINAL_STATES = frozenset({"integrated", "no_diff", "rejected", "failed", "skipped",
                          "no_consensus", "awaiting_choice"})
# A dependency that found nothing to change leaves the tree as its dependants expect; a
# test-first unit proven red (SPEC 13) is where its implementation units start.
SATISFIES_DEPENDENCY = frozenset({"integrated", "no_diff", "red"})


class Readiness:
    def __init__(self, order: Sequence[Unit], overlap: str = "serialize") -> None:
        self.order = list(order)
        self._blockers: dict[str, list[str]] = {}
        group = test_first_groups(self.order)
        for index, unit in enumerate(self.order):
            # Optimistic overlap (SPEC 14): only depends_on orders units; a conflict is rerun.
            # The implementation units of one test-first unit land together, so none waits
            # for another to land: they run side by side from the test-first change.
            self._blockers[unit.id] = [] if overlap == "optimistic" else [
                earlier.id for earlier in self.order[:index]
                if earlier.scope.overlaps(unit.scope)
                and not (unit.id in group and group.get(earlier.id) == group[unit.id]
                         and not earlier.test_first)
            ]

    def failed_dependency(self, unit: Unit, states: Mapping[str, str]) -> str | None:
        """The id of a dependency that ended without integrating, if any."""
        for dep in unit.depends_on:
            state = states[dep]
            if state in FINAL_STATES and state not in SATISFIES_DEPENDENCY:
                return dep
        return None

    def ready(self, unit: Unit, states: Mapping[str, str]) -> bool:
        if states[unit.id] != "pending":
            return False
        if any(states[dep] not in SATISFIES_DEPENDENCY for dep in unit.depends_on):
            return False
        # A red test-first unit blocks only the units that do not implement it.
        return all(states[other] in FINAL_STATES
                   or (states[other] == "red" and other in unit.depends_on)
                   for other in self._blockers[unit.id])

    def waves(self, max_active: int) -> list[list[str]]:
        """Simulate the schedule with every unit integrating: the ids started together."""
        states = {unit.id: "pending" for unit in self.order}
        waves: list[list[str]] = []
        while any(state == "pending" for state in states.values()):
            wave = [u.id for u in self.order if self.ready(u, states)][:max_active]
            if not wave:  # pragma: no cover - validated plans have no cycles
                raise AssertionError("no unit can start")
            waves.append(wave)
            for unit_id in wave:
                states[unit_id] = "integrated"
        return waves

