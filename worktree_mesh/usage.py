"""What lanes spent (SPEC 17): tokens and cost, read from results, summed from the ledger.

A lane attempt may report ``usage``: ``{"tokens_in": n, "tokens_out": n, "cost_usd": x}``,
any part null where its CLI said nothing. Sums are taken from the run's ledger (the
``lane_finished`` events), the one record that survives a crash, so a resumed run counts
what the interrupted process spent too. A part no attempt reported stays unknown (None,
never 0); a part some reporting attempts left unknown is the sum of the known ones, marked
``partial`` (a lower bound). A lane that reports no usage at all (a script) counts for
nothing: most cost nothing, and an agent lane always reports one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PARTS = ("tokens_in", "tokens_out", "cost_usd")
# Sums of float dollars drift (0.1 + 0.2); a billionth of a dollar is below any price.
COST_DIGITS = 9


@dataclass(frozen=True)
class Usage:
    """What one lane attempt said it spent (None: it did not say)."""

    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    def record(self) -> dict[str, Any]:
        return {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cost_usd": self.cost_usd}


class UsageProblem(ValueError):
    """A ``usage`` that is not the contract's shape."""


def parse(value: Any) -> Usage:
    """A result file's ``usage`` object, checked: each part a non-negative number or null
    (tokens whole numbers). Parts it does not name are unknown; keys it should not have
    are a problem, since a misspelt part would otherwise be silently unknown."""
    if not isinstance(value, dict):
        raise UsageProblem(f"usage must be an object, got {_kind(value)}")
    unknown = sorted(set(value) - set(PARTS))
    if unknown:
        raise UsageProblem(f"usage has unknown key {unknown[0]!r} (known: {', '.join(PARTS)})")
    tokens_in = _tokens(value, "tokens_in")
    tokens_out = _tokens(value, "tokens_out")
    cost = value.get("cost_usd")
    if cost is not None:
        if not _number(cost) or cost < 0:
            raise UsageProblem(f"usage.cost_usd must be a non-negative number or null, "
                               f"got {cost!r}")
        cost = float(cost)
    return Usage(tokens_in, tokens_out, cost)


def _tokens(value: Mapping[str, Any], key: str) -> int | None:
    count = value.get(key)
    if count is None:
        return None
    if not _number(count) or count < 0 or count != int(count):
        raise UsageProblem(f"usage.{key} must be a whole number >= 0 or null, got {count!r}")
    return int(count)


def _number(value: Any) -> bool:
    """A JSON number: not a boolean (a Python int), and finite (Python's json reads NaN
    and Infinity)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class Total:
    """Usage summed over lane attempts that reported one."""

    tokens_in: int | None
    tokens_out: int | None
    cost_usd: float | None
    partial: tuple[str, ...]  # parts some reporting attempt left unknown, others not

    def record(self) -> dict[str, Any]:
        return {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cost_usd": self.cost_usd, "partial": list(self.partial)}


def total(usages: Iterable[Usage]) -> Total | None:
    """None when there is nothing to sum: no attempt reported any usage."""
    reported = list(usages)
    if not reported:
        return None
    sums: dict[str, Any] = {}
    partial = []
    for part in PARTS:
        known = [getattr(u, part) for u in reported if getattr(u, part) is not None]
        if not known:
            sums[part] = None
            continue
        if len(known) < len(reported):
            partial.append(part)
        sums[part] = (round(math.fsum(known), COST_DIGITS) if part == "cost_usd"
                      else sum(known))
    return Total(sums["tokens_in"], sums["tokens_out"], sums["cost_usd"], tuple(partial))


# -- from the ledger ---------------------------------------------------------------------

@dataclass(frozen=True)
class LaneSpend:
    unit: str
    lane: str
    attempt: int
    usage: Usage


def lane_spends(records: Iterable[Mapping[str, Any]]) -> list[LaneSpend]:
    """Every finished lane attempt that reported usage, in ledger order."""
    spends = []
    for record in records:
        if record.get("event") != "lane_finished" or record.get("usage") is None:
            continue
        try:
            usage = parse(record["usage"])
        except UsageProblem:  # not written by wtmesh: counted as unreported
            continue
        spends.append(LaneSpend(str(record.get("unit")), str(record.get("lane")),
                                int(record.get("attempt", 0)), usage))
    return spends


def unit_usage(spends: Iterable[LaneSpend], unit_id: str) -> dict[str, Any] | None:
    """A unit's usage summed over its lanes and their attempts, with each lane's sum
    under ``lanes``; None when none of its lanes reported any."""
    mine = [s for s in spends if s.unit == unit_id]
    summed = total(s.usage for s in mine)
    if summed is None:
        return None
    lanes: dict[str, Any] = {}
    for name in dict.fromkeys(s.lane for s in mine):
        lane_total = total(s.usage for s in mine if s.lane == name)
        assert lane_total is not None
        lanes[name] = lane_total.record()
    return {**summed.record(), "lanes": lanes}


def run_usage(spends: Iterable[LaneSpend]) -> dict[str, Any] | None:
    summed = total(s.usage for s in spends)
    return None if summed is None else summed.record()


def spent_usd(spends: Iterable[LaneSpend]) -> float:
    """What counts against ``--max-cost-usd``: the known costs of finished attempts."""
    return round(math.fsum(s.usage.cost_usd for s in spends if s.usage.cost_usd is not None),
                 COST_DIGITS)


# -- the budget --------------------------------------------------------------------------

@dataclass
class Budget:
    """``--max-cost-usd``: once the run has spent it, no new lane starts. Lane threads
    add to it and ask it; the scheduler asks it before starting a unit."""

    max_usd: float | None
    spent: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, cost_usd: float | None) -> bool:
        """Count one finished attempt's cost; True when this is what exhausted the budget."""
        if cost_usd is None:
            return False
        with self._lock:
            was = self._exhausted()
            self.spent = round(self.spent + cost_usd, COST_DIGITS)
            return not was and self._exhausted()

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self._exhausted()

    def _exhausted(self) -> bool:
        return self.max_usd is not None and self.spent >= self.max_usd

    def refusal(self) -> str | None:
        """Why a new lane may not start, or None."""
        with self._lock:
            if not self._exhausted():
                return None
            return (f"the run has spent {cost_text(self.spent)} of its --max-cost-usd "
                    f"{cost_text(self.max_usd)}")


# -- for people --------------------------------------------------------------------------

UNKNOWN = "?"


def cost_text(value: float | None, partial: bool = False) -> str:
    """``$0.1234``; ``?`` when unknown; ``+?`` after a sum that leaves some out."""
    if value is None:
        return UNKNOWN
    return f"${value:.4f}" + ("+?" if partial else "")


def tokens_text(summed: Mapping[str, Any] | None) -> str:
    """``1200 in / 340 out``; empty when nothing was reported."""
    if summed is None:
        return ""
    partial = summed.get("partial", [])
    return " / ".join(_count(summed.get(part), part in partial) + f" {side}"
                      for part, side in (("tokens_in", "in"), ("tokens_out", "out")))


def _count(value: int | None, partial: bool) -> str:
    if value is None:
        return UNKNOWN
    return f"{value}" + ("+?" if partial else "")


def summed_cost_text(summed: Mapping[str, Any] | None) -> str:
    if summed is None:
        return ""
    return cost_text(summed.get("cost_usd"), "cost_usd" in summed.get("partial", []))


def spent_line(summed: Mapping[str, Any] | None, max_usd: float | None) -> str:
    """The run's line: what its lanes spent, and of which budget."""
    if summed is None and max_usd is None:
        return ""
    line = (f"spent: {summed_cost_text(summed)}, tokens {tokens_text(summed)}"
            if summed is not None else "spent: no lane reported what it spent")
    if max_usd is not None:
        line += f" (--max-cost-usd {cost_text(max_usd)})"
    return line
