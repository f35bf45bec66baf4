"""Backpressure: fewer units at once after a unit goes badly, one more after each good one.

The limit starts at the budget clamp. A unit that ends ``rejected``, or fails with
``timeout_retry_exhausted`` or ``invalid_output_schema`` (signs of an overloaded or
confused agent), halves it: ``max(1, floor(limit / 2))``. Each unit that integrates
cleanly raises it by one, up to the clamp. Every change is returned as a record for the
ledger; a unit that leaves the limit where it was returns None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKOFF_CODES = frozenset({"timeout_retry_exhausted", "invalid_output_schema"})


@dataclass(frozen=True)
class LimitChange:
    unit: str
    old: int
    new: int
    reason: str  # "rejected", a failure code, or "integrated"

    def as_record(self) -> dict[str, Any]:
        """Fields for a ``backpressure`` ledger event."""
        return {"unit": self.unit, "old": self.old, "new": self.new, "reason": self.reason}


class Backpressure:
    def __init__(self, clamp: int) -> None:
        self.clamp = max(1, clamp)
        self.limit = self.clamp

    def unit_ended(self, unit: str, status: str, failure_code: str | None) -> LimitChange | None:
        old = self.limit
        if status == "rejected" or failure_code in BACKOFF_CODES:
            reason = failure_code if failure_code in BACKOFF_CODES else "rejected"
            self.limit = max(1, old // 2)
        elif status == "integrated" and failure_code is None:
            reason = "integrated"
            self.limit = min(self.clamp, old + 1)
        else:
            return None
        if self.limit == old:
            return None
        return LimitChange(unit, old, self.limit, str(reason))
