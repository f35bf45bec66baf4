"""`wtmesh run-csv --execute` through the real runner, and `wtmesh ledger --run` over the
ledger that run wrote."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, Result, git, make_repo, one_error_line, state_dir, wtmesh

MESH = ["id", "objective", "unit_scope", "constraints", "invariants", "proof_command",
        "delivery_mode", "attempt", "variant", "budget_tier"]
RESULT_COLUMNS = ["job_id", "item_id", "status", "attempt_count", "last_error", "result_json"]

# A coder: writes notes/<id>.txt holding the objective; an objective saying "reject" exits 1,
# one saying "nothing" changes nothing, one saying "stray" writes outside notes/.
CODER = """\
import json, os, sys
unit = json.load(open(os.environ["WTMESH_UNIT_JSON"]))
if "reject" in unit["objective"]:
    sys.exit(1)
if "nothing" in unit["objective"]:
    sys.exit(0)
target = "stray.txt" if "stray" in unit["objective"] else f"notes/{unit['id']}.txt"
os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
with open(target, "w", encoding="utf-8") as fh:
    fh.write(unit["objective"] + "\\n")
"""

OBJECTIVE_A = 'Write "notes", with commas,\nand a second line'
ROWS = [
    # id, objective, scope, proof, extra columns (note, status)
    ("a", OBJECTIVE_A, "notes/a.txt", "", "first, note", "stale"),
    ("b", "please reject this", "notes/", "", "", ""),
    ("c", "do nothing", "notes/", "", 'say "x"', ""),
    ("d", "stray outside", "notes/d.txt", "", "", ""),
    ("p", "proof fails", "notes/p.txt", "test ! -e notes/p.txt", "", ""),  # the base passes
]




def write_wave(path: Path, rows: list[dict[str, str]], header: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({h: row.get(h, "") for h in header})
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dataclass
class Executed:
    repo: Path
    wave: Path
    output: Path
    result: Result
    base: str


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, hermetic_module: None) -> Iterator[Executed]:
    root = tmp_path_factory.mktemp("execute")
    repo = make_repo(root / "repo")
    base = git(repo, "rev-parse", "HEAD")
    (root / "coder.py").write_text(CODER)
    header = ["note", *MESH, "status"]
    rows = [{"id": i, "objective": o, "unit_scope": s, "proof_command": p, "note": n,
             "status": st, "attempt": "1", "variant": "baseline", "budget_tier": "t1"}
            for i, o, s, p, n, st in ROWS]
    wave = write_wave(root / "wave.csv", rows, header)
    output = root / "out" / "result.csv"
    result = wtmesh("run-csv", "--csv-path", wave, "--output-csv-path", output, "--execute",
                    "--repo", repo, "--coder", f"{PY} {root / 'coder.py'}", "--proof", "true",
                    "--max-active", "2", cwd=root)
    yield Executed(repo, wave, output, result, base)


def test_execute_runs_every_row_through_wtmesh_run(executed: Executed) -> None:
    res = executed.result
    assert res.returncode == 1, res.stderr  # the run's exit code: some units did not land
    assert "Traceback" not in res.stderr
    assert res.stdout.count("\n") == 1
    out = res.json()
    run_id = out["run_id"]
    assert out == {"command": "run_csv", "row_count": 5, "csv_path": str(executed.wave),
                   "output_csv_path": str(executed.output), "status": "executed",
                   "run_id": run_id, "exit_code": 1,
                   "counts": {"pending": 0, "running": 0, "integrated": 1, "no_diff": 1,
                              "rejected": 1, "failed": 2, "skipped": 0,
                              "no_consensus": 0, "awaiting_choice": 0}}
    # The real integrator landed exactly the accepted unit, with its trailers.
    repo = executed.repo
    assert git(repo, "rev-list", "--count", f"{executed.base}..main") == "1"
    assert git(repo, "show", "main:notes/a.txt") == OBJECTIVE_A
    assert f"Wtmesh-Run: {run_id}" in git(repo, "log", "-1", "--format=%B", "main")
    assert (state_dir(repo) / "runs" / run_id / "ledger.jsonl").is_file()


def test_execute_writes_input_columns_plus_the_job_columns(executed: Executed) -> None:
    run_id = executed.result.json()["run_id"]
    with open(executed.output, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    # The input's own "status" column gives way to the run's.
    assert header == ["note", *MESH, *RESULT_COLUMNS]
    rows = {row["id"]: row for row in read_rows(executed.output)}
    assert list(rows) == ["a", "b", "c", "d", "p"]
    assert all(row["job_id"] == run_id and row["item_id"] == uid for uid, row in rows.items())
    assert {uid: row["status"] for uid, row in rows.items()} == {
        "a": "integrated", "b": "rejected", "c": "no_diff", "d": "failed", "p": "failed"}
    assert rows["a"]["objective"] == OBJECTIVE_A and rows["a"]["note"] == "first, note"
    assert rows["c"]["note"] == 'say "x"'
    assert rows["a"]["last_error"] == "" and rows["c"]["last_error"] == ""
    assert rows["b"]["last_error"].startswith("lane_failed: ")
    assert rows["d"]["last_error"].startswith("scope_violation: ")
    assert "stray.txt" in rows["d"]["last_error"]
    assert rows["p"]["last_error"].startswith("proof_failed")
    assert rows["a"]["attempt_count"] == "1"
    assert int(rows["b"]["attempt_count"]) >= 1
    result = json.loads(rows["a"]["result_json"])
    assert result["id"] == "a" and result["status"] == "integrated"
    assert result["commit"] == git(executed.repo, "rev-parse", "main")
    assert result["files"] == ["notes/a.txt"]
    assert result["labels"] == {"attempt": "1", "variant": "baseline", "budget_tier": "t1"}
    assert json.loads(rows["d"]["result_json"])["failure_code"] == "scope_violation"
    # RFC 4180 on disk: the objective's quotes doubled, its comma and newline quoted.
    raw = executed.output.read_bytes()
    assert b'"Write ""notes"", with commas,\nand a second line"' in raw
    assert raw.count(b"\r\n") == 6


def test_ledger_of_the_run(executed: Executed) -> None:
    run_id = executed.result.json()["run_id"]
    res = wtmesh("ledger", "--run", run_id, "--repo", executed.repo, cwd=executed.repo.parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    out = res.json()
    assert out["command"] == "ledger"
    events = out["events"]
    head = git(executed.repo, "rev-parse", "main")
    assert events == {
        "run_id": run_id, "delivery_mode": "commit_first", "target": "main",
        "base": executed.base, "head": head, "integrated": ["a"], "no_diff": ["c"],
        "rejected": ["b"], "failed": ["d", "p"],
        "failure_codes": {"b": "lane_failed", "d": "scope_violation", "p": "proof_failed"},
        "counts": {"pending": 0, "running": 0, "integrated": 1, "no_diff": 1, "rejected": 1,
                   "failed": 2, "skipped": 0},
        "finished": True, "exit_code": 1}
    # What did not occur is left out: no skipped or unfinished unit, no interrupt, no resume.
    for absent in ("skipped", "unfinished", "interrupted", "resumed", "stranded",
                   "backpressure"):
        assert absent not in events
    # From inside the repository, --repo is not needed.
    assert wtmesh("ledger", "--run", run_id, cwd=executed.repo / "calc").json() == out


def test_ledger_run_errors(executed: Executed, tmp_path: Path) -> None:
    assert "no run 'nope' in this repository" in one_error_line(
        wtmesh("ledger", "--run", "nope", "--repo", executed.repo, cwd=tmp_path))
    assert "no run '../../x' in this repository" in one_error_line(
        wtmesh("ledger", "--run", "../../x", "--repo", executed.repo, cwd=tmp_path))
    assert "not inside a git repository" in one_error_line(
        wtmesh("ledger", "--run", "x", cwd=tmp_path), code=3)
    assert "give one of --input-json FILE and --run RUN_ID" in one_error_line(
        wtmesh("ledger", cwd=tmp_path))


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Any]:
    repo = make_repo(tmp_path / "repo")
    rows = [{"id": "x", "objective": "o", "unit_scope": "notes/", "delivery_mode": "commit_first"},
            {"id": "y", "objective": "o", "unit_scope": "docs/"}]
    return {"repo": repo, "wave": write_wave(tmp_path / "w.csv", rows, MESH),
            "args": ["--output-csv-path", tmp_path / "o.csv", "--execute", "--repo", repo,
                     "--coder", "true"]}


def test_rows_that_make_no_plan_are_refused_before_anything_runs(tmp_path: Path,
                                                                 small: dict[str, Any]) -> None:
    rows = [{"id": "bad id", "objective": "o"}, {"id": "ok", "objective": "",
                                                  "unit_scope": "../outside"}]
    wave = write_wave(tmp_path / "bad.csv", rows, MESH)
    res = wtmesh("run-csv", "--csv-path", wave, *small["args"], cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith(f"wtmesh: error: {wave}: line ") for line in lines)
    assert any("line 2 (id 'bad id'): id" in line for line in lines)
    assert any("line 3 (id 'ok'): objective must not be empty" in line for line in lines)
    assert any("line 3 (id 'ok'): unit_scope scope '../outside' leaves the repository" in line
               for line in lines)
    assert not state_dir(small["repo"]).exists()
    assert not (tmp_path / "o.csv").exists()


def test_delivery_modes_must_agree(tmp_path: Path, small: dict[str, Any]) -> None:
    line = one_error_line(wtmesh("run-csv", "--csv-path", small["wave"], *small["args"],
                                 "--delivery", "patch_first", cwd=tmp_path))
    assert "rows x carry a delivery_mode other than the run's 'patch_first'" in line
    rows = [{"id": "x", "objective": "o", "delivery_mode": "commit_first"},
            {"id": "y", "objective": "o", "delivery_mode": "patch_first"}]
    mixed = write_wave(tmp_path / "mixed.csv", rows, MESH)
    assert "rows ask for different delivery modes (commit_first, patch_first)" in \
        one_error_line(wtmesh("run-csv", "--csv-path", mixed, *small["args"], cwd=tmp_path))
    odd = write_wave(tmp_path / "odd.csv", [{"id": "x", "objective": "o",
                                             "delivery_mode": "sideways"}], MESH)
    assert "delivery_mode 'sideways' is not one of commit_first, patch_first" in \
        one_error_line(wtmesh("run-csv", "--csv-path", odd, *small["args"], cwd=tmp_path))
    assert not state_dir(small["repo"]).exists()


def test_a_refusing_environment_passes_the_runs_exit_code_through(
        tmp_path: Path, small: dict[str, Any]) -> None:
    (tmp_path / "plain").mkdir()
    args = [a if a != small["repo"] else tmp_path / "plain" for a in small["args"]]
    res = wtmesh("run-csv", "--csv-path", small["wave"], *args, cwd=tmp_path)
    assert "not inside a git repository" in one_error_line(res, code=3)
    assert res.stdout == ""
    assert not (tmp_path / "o.csv").exists()


def test_patch_first_run_of_a_clean_wave(tmp_path: Path, small: dict[str, Any]) -> None:
    rows = [{"id": "x", "objective": "o", "unit_scope": "notes/"}]
    wave = write_wave(tmp_path / "pf.csv", rows, MESH)
    coder = f"{PY} -c \"open('notes/x.txt', 'w').write('x')\""
    (small["repo"] / "notes").mkdir()
    (small["repo"] / "notes" / ".keep").write_text("")
    git(small["repo"], "add", "-A")
    git(small["repo"], "commit", "-q", "-m", "notes")
    before = git(small["repo"], "rev-parse", "main")
    res = wtmesh("run_csv", "--csv-path", wave, "--output-csv-path", tmp_path / "o.csv",
                 "--execute", "--repo", small["repo"], "--coder", coder, "--delivery",
                 "patch_first", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.json()["exit_code"] == 0
    assert git(small["repo"], "rev-parse", "main") == before  # patch_first: target untouched
    row = read_rows(tmp_path / "o.csv")[0]
    assert (row["status"], row["last_error"]) == ("integrated", "")
    assert json.loads(row["result_json"])["patch"] == "0001-x.patch"
