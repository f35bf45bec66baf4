"""The candidates file a critic or synthesizer reads (``WTMESH_CANDIDATES_JSON``).

Each reader gets its own copy, in its own lane directory, with a copy of every
candidate's diff beside it: a sandboxed lane sees no other part of the run's state, and
what a reader does to its copies reaches nothing else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..state import safe_name, write_atomic
from .vote import Critique


@dataclass(frozen=True)
class Shown:
    """A candidate as readers see it."""

    name: str
    diff: Path
    stats: dict[str, int]
    proof_status: str
    proof_s: float
    notes: str

    @property
    def changed_lines(self) -> int:
        return self.stats.get("added", 0) + self.stats.get("removed", 0)


def write(dest_dir: Path, *, unit_id: str, objective: str, round_: int, rounds: int,
          quorum: int, candidates: Sequence[Shown], previous: Sequence[Critique]) -> Path:
    """The file, and the diffs it names, in ``dest_dir``; returns the file's path."""
    diffs = dest_dir / "candidates"
    diffs.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for candidate in candidates:
        copy = diffs / f"{safe_name(candidate.name)}.diff"
        shutil.copyfile(candidate.diff, copy)
        entries.append({
            "name": candidate.name, "diff": str(copy),
            "stats": {"files": candidate.stats.get("files", 0),
                      "insertions": candidate.stats.get("added", 0),
                      "deletions": candidate.stats.get("removed", 0)},
            "changed_lines": candidate.changed_lines,
            "proof": {"status": candidate.proof_status,
                      "duration_s": round(candidate.proof_s, 3)},
            "notes": candidate.notes,
        })
    path = dest_dir / "candidates.json"
    document = {"unit": unit_id, "objective": objective, "round": round_, "rounds": rounds,
                "quorum": quorum, "candidates": entries,
                "previous": [critique.as_record() for critique in previous]}
    write_atomic(path, json.dumps(document, indent=2).encode() + b"\n")
    return path
