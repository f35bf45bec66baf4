"""Learnings (SPEC 7, ``wtmesh run --learnings FILE``): one JSONL record per failed or
rejected unit, appended unless a record with the same fingerprint is already there.

A record: ``id`` (``lrn-YYYYMMDDTHHMMSSZ-<8 hex>``), ``captured_at`` (ISO 8601 UTC),
``status``, ``learning``, ``evidence``, ``application``, ``source``, ``fingerprint``.
The fingerprint hashes what makes two failures the same failure — the unit id, its
status, its failure code and its objective — and never the time or the run, so the same
unit failing the same way in a later run adds nothing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEARNED_STATUSES = frozenset({"failed", "rejected"})
EVIDENCE_LIMIT = 2000  # characters of notes kept as evidence

# What to do differently next time, by failure code.
ADVICE = {
    "lane_failed": "Read the lane log; make the command exit 0 on success or write a result.",
    "invalid_output_schema": "Make the lane write the mesh result shape "
                             "(id, decision, proof_status, failure_code, notes) or none.",
    "timeout_retry_exhausted": "Split the unit into smaller units or raise its timeout_s.",
    "tooling_unavailable": "Install the lane's command or fix the setup command.",
    "scope_violation": "Widen unit_scope to the paths the change needs, or narrow the "
                       "objective.",
    "integration_conflict": "Make the unit depend on the unit it conflicts with, or "
                            "re-run it from the new head.",
    "proof_failed": "Run the proof on the unit's change locally and fix what fails before "
                    "retrying.",
    "proof_missing": "Give the unit or the plan a proof_command.",
    "scope_overlap_conflict": "Give overlapping units disjoint scopes or a depends_on.",
    "requires_clarification": "Answer the agent's question in the objective or constraints.",
    "safety_regression_risk": "Review the change by hand; tighten the invariants.",
    "delivery_blocked": "Clear what blocked delivery (a dirty target, a lock) and resume.",
}
DEFAULT_ADVICE = "Review the unit's logs and adjust its objective, scope or lanes."


@dataclass(frozen=True)
class Learning:
    id: str
    captured_at: str
    status: str
    learning: str
    evidence: str
    application: str
    source: str
    fingerprint: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(unit_id: str, status: str, failure_code: str | None, objective: str) -> str:
    key = json.dumps([unit_id, status, failure_code, objective.strip()], ensure_ascii=True)
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def capture(unit_id: str, status: str, failure_code: str | None, objective: str, *,
            evidence: str = "", run_id: str | None = None,
            now: dt.datetime | None = None) -> Learning | None:
    """The record for a unit that ended ``failed`` or ``rejected``; None for any other end,
    and for a unit cut off by an interrupt (nothing was learned)."""
    if status not in LEARNED_STATUSES or failure_code == "interrupted":
        return None
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    first_line = (objective.strip().splitlines() or [""])[0]
    how = f"with {failure_code}" if failure_code else "without a failure code"
    return Learning(
        id=f"lrn-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
        captured_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        status=status,
        learning=f"Unit {unit_id} ({first_line}) ended {status} {how}.",
        evidence=evidence.strip()[:EVIDENCE_LIMIT],
        application=ADVICE.get(failure_code or "", DEFAULT_ADVICE),
        source=f"wtmesh run {run_id} unit {unit_id}" if run_id else f"wtmesh unit {unit_id}",
        fingerprint=fingerprint(unit_id, status, failure_code, objective),
    )


def _fingerprints(data: bytes) -> set[str]:
    found = set()
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash, or a line someone broke by hand
        if isinstance(record, dict) and isinstance(record.get("fingerprint"), str):
            found.add(record["fingerprint"])
    return found


def _torn_record(tail: bytes) -> bool:
    """The start of a record that a crash cut short: an object that does not parse.
    Anything else without its newline is a whole line and is never cut."""
    if not tail.lstrip().startswith(b"{"):
        return False
    try:
        json.loads(tail)
    except ValueError:
        return True
    return False


def append_new(path: Path, learnings: Iterable[Learning]) -> list[Learning]:
    """Append the learnings whose fingerprint the file lacks; returns those written.

    A missing file is created. A torn last line (no newline, not JSON: a crash mid-write)
    is cut before appending; a last line that is whole JSON but lacks its newline gets
    one. The file is locked (``flock``) while read and appended, so two runs writing to
    one file neither lose nor duplicate a record.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+b") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                tail_start = data.rfind(b"\n") + 1
                if _torn_record(data[tail_start:]):
                    fh.truncate(tail_start)
                    data = data[:tail_start]
                else:  # a whole last line (a record, or someone's text): keep it
                    fh.write(b"\n")
                    data += b"\n"
            known = _fingerprints(data)
            written = []
            for learning in learnings:
                if learning.fingerprint in known:
                    continue
                known.add(learning.fingerprint)
                fh.seek(0, os.SEEK_END)
                fh.write(json.dumps(learning.as_record(), ensure_ascii=False).encode("utf-8")
                         + b"\n")
                written.append(learning)
            fh.flush()
            os.fsync(fh.fileno())
        return written
    finally:
        os.close(fd)  # closing releases the flock
