"""Deterministic fault injection, for crash tests.

``WTMESH_FAULT=after-event:N`` kills wtmesh right after the Nth ledger event is on disk;
``WTMESH_FAULT=at:POINT`` (or ``at:POINT:K``, the Kth time) at a named point of the code.
Death is SIGKILL to ourselves: no cleanup, no finally blocks, lanes left running — the
same as a power cut or ``kill -9`` from the user's point of view.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

POINTS = (
    "lane",          # a lane process is running
    "lanes-done",    # the unit's result ref is written, its ledger event not yet
    "apply",         # the candidate commit exists, its proof has not started
    "proof",         # the proof process is running
    "bring-along",   # the target moved to the candidate, the user's worktree not yet
    "land",          # the landing ref moved (and the worktree), its ledger event not yet
    "strand",        # the stranded event is written, the stranded branch not yet made
    "patch",         # patch_first: landed, the patch file not yet written
    "admin-claimed",  # a worktree's private admin dir says whose it is, nothing else yet
    "admin-emptied",  # a worktree's admin dir being removed holds only its claim
)

# Points only some plans reach (every plan passes those above).
OPTIMISTIC_POINTS = (
    "rerun",         # a conflicting unit's rerun is in the ledger, the unit not yet pending
)

_lock = threading.Lock()
_hits: Counter[str] = Counter()


def _spec() -> tuple[str, str, int] | None:
    raw = os.environ.get("WTMESH_FAULT", "")
    if not raw:
        return None
    kind, _, rest = raw.partition(":")
    if kind == "after-event":
        return kind, "", int(rest)
    if kind == "at":
        name, _, nth = rest.partition(":")
        return kind, name, int(nth or 1)
    return None


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_event(seq: int) -> None:
    spec = _spec()
    if spec is not None and spec[0] == "after-event" and spec[2] == seq:
        die()


def point(name: str) -> None:
    spec = _spec()
    if spec is None or spec[0] != "at" or spec[1] != name:
        return
    with _lock:
        _hits[name] += 1
        hit = _hits[name] == spec[2]
    if hit:
        die()
