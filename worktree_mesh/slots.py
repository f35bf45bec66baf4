"""How many lanes may run at once (``max_active``, or what backpressure allows now).

A unit holds one slot while its lanes run; a consensus unit holds one per variant,
critic or synthesizer lane it has running, so that every lane counts (SPEC 12).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# While waiting for a slot, how often to look whether the run is being stopped.
STOP_CHECK_S = 0.2


class Stopped(Exception):
    """The run is stopping: no slot is given any more."""


class LaneSlots:
    def __init__(self, limit: Callable[[], int], stopping: threading.Event,
                 on_give: Callable[[], None] | None = None) -> None:
        self._limit = limit
        self._on_give = on_give  # the scheduler, which may start a unit now
        self._stopping = stopping
        self._cond = threading.Condition()
        self.in_use = 0

    def try_take(self) -> bool:
        with self._cond:
            if self.in_use >= self._limit():
                return False
            self.in_use += 1
            return True

    def give(self) -> None:
        with self._cond:
            self.in_use -= 1
            self._cond.notify_all()
        if self._on_give is not None:
            self._on_give()

    def raise_if_stopped(self) -> None:
        """Stopped once the run is stopping: what a lane or proof ended with then is the
        interruption's doing, not an outcome to keep."""
        if self._stopping.is_set():
            raise Stopped

    @contextmanager
    def held(self) -> Iterator[None]:
        """One slot, waited for, for the duration of the block."""
        with self._cond:
            while self.in_use >= self._limit():
                if self._stopping.is_set():
                    raise Stopped
                self._cond.wait(STOP_CHECK_S)
            self.in_use += 1
        try:
            yield
        finally:
            self.give()
