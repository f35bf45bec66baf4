"""What a unit whose change conflicted is told when it runs again (SPEC 14).

With optimistic overlap a unit's change that no longer applies to the integrated head is
new work: its lanes run again from the head, and ``WTMESH_CONFLICT`` names the file
written here. It holds what the lanes need to redo the change on the current code: their
previous diff (its exact bytes also beside it, as ``.diff``), the paths where it met
other units' changes, and the commits landed since it started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .git import Git, Sha
from .state import write_atomic

# Commits named in the file: a rerun after a long run needs the latest, not all of them.
NAMED_COMMITS = 50


@dataclass(frozen=True)
class Conflict:
    path: Path  # the JSON file WTMESH_CONFLICT names
    paths: list[str]  # the unit's paths that units landed since also changed
    landed_since: list[dict[str, str]]  # commit, unit, subject; oldest first
    met: list[str]  # the units (or commits) landed since that changed those paths


def write(git: Git, unit_dir: Path, *, unit_id: str, rerun: int, of: int, attempt: int,
          start: Sha, head: Sha, diff_path: Path, diff_files: list[str]) -> Conflict:
    """The conflict file of a unit's ``rerun``-th rerun (of ``of`` allowed): its lanes
    started at ``start``, produced ``diff_path``, and the head is now ``head``."""
    landed = set(p for change in git.changes(start, head) for p in change.paths)
    paths = [p for p in diff_files if p in landed]
    since = _landed_since(git, start, head)
    met = [c["unit"] or c["commit"][:12]
           for c in (_landed_since(git, start, head, paths) if paths else since)]
    previous = diff_path.read_bytes()
    stem = unit_dir / f"conflict-{rerun}"
    write_atomic(stem.with_suffix(".diff"), previous)
    record: dict[str, Any] = {
        "unit": unit_id,
        "rerun": rerun,
        "reruns_allowed": of,
        "conflicted_attempt": attempt,
        "started_at": start,
        "head": head,
        "conflicting_paths": paths,
        "landed_since": since,
        "met": met,
        "previous_diff": previous.decode("utf-8", "replace"),
        "previous_diff_file": str(stem.with_suffix(".diff")),
    }
    path = stem.with_suffix(".json")
    write_atomic(path, json.dumps(record, indent=2).encode() + b"\n")
    return Conflict(path, paths, since, met)


def _landed_since(git: Git, start: Sha, head: Sha,
                  paths: list[str] | None = None) -> list[dict[str, str]]:
    """The commits of ``start..head`` (that touch ``paths``, when given), oldest first;
    the newest ``NAMED_COMMITS`` of them."""
    res = git.run("log", f"-{NAMED_COMMITS}",
                  "--format=%H%x1f%(trailers:key=Wtmesh-Unit,valueonly,separator=%x2C)"
                  "%x1f%s%x1e", f"{start}..{head}", "--",
                  *(f":(literal){p}" for p in paths or ()))
    out = []
    for record in res.text.split("\x1e"):
        fields = record.strip().split("\x1f")
        if len(fields) == 3:
            out.append({"commit": fields[0], "unit": fields[1].strip(), "subject": fields[2]})
    return out[::-1]


def describe(path: Path) -> str:
    """The conflict in a sentence, for an agent's prompt; empty when the file is unreadable
    or not what wtmesh wrote (it lies in a directory the unit's lanes may write: the lane
    then runs as a first attempt would)."""
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(record, dict):
        return ""
    paths = ", ".join(_strings(record.get("conflicting_paths"))) or "the same code"
    units = ", ".join(_strings(record.get("met")))
    since = f" (landed since by {units})" if units else ""
    return (f"Your earlier change conflicted with changes to {paths}{since}; it no longer "
            f"applies. Redo it on the current code. Your previous diff is in "
            f"{record.get('previous_diff_file')}; the details are in {path}.")


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
