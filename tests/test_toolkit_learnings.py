"""Learnings: one record per failed or rejected unit, appended once per fingerprint."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from pathlib import Path

from worktree_mesh.toolkit import learnings

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
KEYS = ["id", "captured_at", "status", "learning", "evidence", "application", "source",
        "fingerprint"]


def capture(unit: str = "u1", status: str = "failed", code: str | None = "proof_failed",
            objective: str = "Fix the parser", *, now: dt.datetime = NOW,
            run_id: str = "r1") -> learnings.Learning:
    found = learnings.capture(unit, status, code, objective, now=now, run_id=run_id,
                              evidence="pytest: 1 failed")
    assert found is not None
    return found


def test_record_shape() -> None:
    record = capture().as_record()
    assert list(record) == KEYS
    assert re.fullmatch(r"lrn-20260304T050607Z-[0-9a-f]{8}", record["id"])
    assert record["captured_at"] == "2026-03-04T05:06:07Z"
    assert record["status"] == "failed"
    assert record["learning"] == "Unit u1 (Fix the parser) ended failed with proof_failed."
    assert record["evidence"] == "pytest: 1 failed"
    assert record["application"] == learnings.ADVICE["proof_failed"]
    assert record["source"] == "wtmesh run r1 unit u1"
    assert re.fullmatch(r"[0-9a-f]{64}", record["fingerprint"])


def test_only_failed_and_rejected_units_are_learned_from() -> None:
    for status, code in (("integrated", None), ("no_diff", None),
                         ("skipped", "dependency_failed"), ("failed", "interrupted")):
        assert learnings.capture("u", status, code, "o") is None
    assert learnings.capture("u", "rejected", None, "o") is not None


def test_fingerprint_is_the_failure_not_the_moment() -> None:
    first = capture()
    later = capture(now=NOW + dt.timedelta(days=3), run_id="r2")
    assert first.fingerprint == later.fingerprint
    assert first.id != later.id
    assert capture(code="scope_violation").fingerprint != first.fingerprint
    assert capture(unit="u2").fingerprint != first.fingerprint
    assert capture(objective="Fix the lexer").fingerprint != first.fingerprint
    assert capture(status="rejected").fingerprint != first.fingerprint


def test_append_creates_and_skips_known_fingerprints(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "learnings.jsonl"
    written = learnings.append_new(path, [capture(), capture(unit="u2"), capture()])
    assert [w.as_record()["learning"][:7] for w in written] == ["Unit u1", "Unit u2"]
    again = learnings.append_new(path, [capture(run_id="r9"), capture(unit="u3")])
    assert [w.learning.split()[1] for w in again] == ["u3"]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["learning"].split()[1] for line in lines] == ["u1", "u2", "u3"]


def test_a_torn_last_line_is_cut_and_a_whole_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    kept = json.dumps(capture(unit="old").as_record())
    path.write_text(kept + "\n" + '{"id": "lrn-torn", "fingerp')
    learnings.append_new(path, [capture()])
    lines = path.read_text().splitlines()
    assert lines[0] == kept and len(lines) == 2
    assert json.loads(lines[1])["learning"].startswith("Unit u1 ")
    # A last record without its newline is whole: kept, and its fingerprint counts.
    path.write_text(kept)
    written = learnings.append_new(path, [capture(unit="old"), capture()])
    assert [w.fingerprint for w in written] == [capture().fingerprint]
    lines = path.read_text().splitlines()
    assert lines[0] == kept and len(lines) == 2


def test_broken_lines_elsewhere_do_not_stop_a_run(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text("not json\n[1, 2]\n\n")
    assert len(learnings.append_new(path, [capture()])) == 1
    assert path.read_text().startswith("not json\n[1, 2]\n\n{")


def test_concurrent_appends_write_a_fingerprint_once(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    barrier = threading.Barrier(8)

    def append() -> None:
        barrier.wait()
        learnings.append_new(path, [capture(), capture(unit="u2")])

    threads = [threading.Thread(target=append) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(path.read_text().splitlines()) == 2
