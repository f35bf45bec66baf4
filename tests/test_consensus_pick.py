"""``select: manual`` and ``wtmesh pick`` (SPEC 12) through the real CLI: a manual unit
lands nothing and waits with every passing candidate's patch and a comparison written;
``wtmesh pick`` integrates the chosen one later, proven afresh on the head as it is
then, in the run's delivery mode; and every pick that cannot be made is refused with one
line and nothing changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import filelock
import pytest
from conftest import (
    PROOF,
    Result,
    git,
    lane,
    no_worktrees_left,
    one_error_line,
    repo_snapshot,
    state_dir,
    wtmesh,
)
from test_consensus import THREE, by_name, critic, events, ledger, plan_for, variant
from test_patch_series import am_series

CRITICS = [critic("c1", "smallest"), critic("c2", "largest")]
MANUAL = {"variants": THREE, "critics": CRITICS, "select": "manual"}
# A test another change lands meanwhile: once calc/extra.py exists, VALUE must be 2.
VALUE_TWO = ("write:tests/test_value.py=import importlib.util\\nimport unittest\\n\\n\\n"
             "class ValueTest(unittest.TestCase):\\n    def test_value(self) -> None:\\n"
             "        if importlib.util.find_spec('calc.extra') is None:\\n"
             "            return\\n        from calc import extra\\n"
             "        self.assertEqual(extra.VALUE, 2)\\n")


def manual_run(repo: Path, plan: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    """A run whose manual unit waits: exit 1; its output and summary."""
    res = wtmesh("run", plan, *args, cwd=repo)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    return res, json.loads((run_dir / "summary.json").read_text())


def pick(repo: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    res = wtmesh("pick", *args, cwd=repo, env=env)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    return res


def status(repo: Path, run_id: str) -> dict[str, Any]:
    res = wtmesh("status", run_id, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    record: dict[str, Any] = res.json()
    return record


def unit_of(record: dict[str, Any], unit_id: str = "u1") -> dict[str, Any]:
    return next(u for u in record["units"] if u["id"] == unit_id)


def land_elsewhere(repo: Path, write_plan: Any, action: str, name: str) -> str:
    """Another run lands one commit on main meanwhile; main's new head."""
    plan = write_plan({"proof_command": PROOF, "units": [
        {"id": "other", "objective": "Another change", "lanes": {
            "coder": {"command": lane("act.py", action)}}}]}, name)
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return git(repo, "rev-parse", "main")


def run_dirs(repo: Path) -> list[Path]:
    return sorted((state_dir(repo) / "runs").iterdir())


def trailers(repo: Path, rev: str) -> list[str]:
    return [line for line in git(repo, "log", "-1", "--format=%B", rev).splitlines()
            if line.startswith("Wtmesh-")]


# -- a manual unit waits --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["commit_first", "patch_first"])
def test_a_manual_unit_lands_nothing_and_waits_with_its_patches_and_comparison(
        repo: Path, write_plan: Any, mode: str) -> None:
    head = git(repo, "rev-parse", "main")
    res, summary = manual_run(repo, write_plan(plan_for(MANUAL)), "--delivery", mode)
    run_id = summary["run_id"]
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("awaiting_choice", "awaiting_choice")
    assert git(repo, "rev-parse", "main") == head
    command = f"wtmesh pick {run_id} u1 CANDIDATE"
    assert unit["pick"] == command
    assert command in res.stdout  # the run's last words say how to choose
    assert unit["comparison"] in res.stdout
    shown = by_name(unit)
    assert not any(c["chosen"] for c in unit["candidates"])
    assert shown["small"]["votes"]["agree"] == 1 and shown["big"]["votes"]["agree"] == 1
    # Each proven candidate's patch, in the mode's place; none for the one that failed.
    run_dir = state_dir(repo) / "runs" / run_id
    if mode == "patch_first":
        where = {n: Path(summary["patch_dir"]) / "candidates/u1" / f"{n}.patch"
                 for n in ("big", "small")}
        assert shown["small"]["patch"] == "candidates/u1/small.patch"
    else:
        where = {n: run_dir / "units/u1/candidates" / n / "candidate.patch"
                 for n in ("big", "small")}
        assert shown["small"]["patch"] == str(where["small"])
    assert "+VALUE = 1" in where["small"].read_text()
    assert "+MORE = 3" in where["big"].read_text()
    assert shown["broken"]["patch"] is None
    assert not list(run_dir.glob("units/u1/candidates/broken/*.patch"))
    # The comparison: every candidate's state, failure, diffstat, votes, and the command.
    text = Path(unit["comparison"]).read_text()
    assert Path(unit["comparison"]) == run_dir / "units/u1/comparison.md"
    assert "# u1: awaiting_choice" in text
    assert "| small | proven |  | 1 | +1/-0 |" in text
    assert "| broken | failed | proof_failed |" in text
    assert "| 1/2 |" in text and str(where["small"]) in text
    assert command in text
    report = (run_dir / "report.md").read_text()
    assert "## Awaiting a choice" in report and command in report


# -- pick, in each delivery mode ------------------------------------------------------------

def test_pick_in_commit_first_lands_the_candidate_proven_afresh_on_the_head(
        repo: Path, write_plan: Any) -> None:
    head = git(repo, "rev-parse", "main")
    _res, summary = manual_run(repo, write_plan(plan_for(MANUAL)))
    run_id = summary["run_id"]
    res = pick(repo, run_id, "u1", "small")
    assert "u1: small integrated as" in res.stdout
    assert git(repo, "rev-parse", "main^") == head
    result = f"refs/wtmesh/{run_id}/units/u1/candidates/small/result"
    assert git(repo, "rev-parse", "main^{tree}") == git(repo, "rev-parse", f"{result}^{{tree}}")
    assert trailers(repo, "main") == [f"Wtmesh-Run: {run_id}", "Wtmesh-Unit: u1",
                                      "Wtmesh-Variant: small", "Wtmesh-Votes: 1/2"]
    # The user's worktree came along.
    assert (repo / "calc/extra.py").read_text() == "VALUE = 1\n"
    assert git(repo, "status", "--porcelain") == ""
    # The ledger: picked, a proof run now (not the candidate's kept verdict), landed, the
    # unit's and the run's new outcome.
    records = ledger(repo, run_id)
    names = [r["event"] for r in records]
    at = names.index("picked")
    assert records[at]["candidate"] == "small"
    after = names[at:]
    assert after.index("proof_started") < after.index("landed") < after.index("unit_finished")
    proof = next(r for r in records[at:] if r["event"] == "proof_finished")
    assert proof["status"] == "pass" and not proof.get("cached")
    finished = events(repo, run_id, "unit_finished")[-1]
    assert (finished["status"], finished["commit"]) == \
        ("integrated", git(repo, "rev-parse", "main"))
    assert events(repo, run_id, "run_finished")[-1]["exit_code"] == 0
    # Every view says so.
    rewritten = json.loads((state_dir(repo) / "runs" / run_id / "summary.json").read_text())
    (unit,) = rewritten["units"]
    assert (unit["status"], unit["commit"]) == ("integrated", finished["commit"])
    assert "pick" not in unit and by_name(unit)["small"]["chosen"]
    assert (rewritten["exit_code"], rewritten["counts"]["integrated"]) == (0, 1)
    assert rewritten["head"] == finished["commit"]
    shown = status(repo, run_id)
    assert (unit_of(shown)["state"], shown["exit_code"]) == ("integrated", 0)
    report = (state_dir(repo) / "runs" / run_id / "report.md").read_text()
    assert "| u1 | integrated |  | 1 | +1/-0 |" in report and "Awaiting a choice" not in report
    comparison = Path(unit["comparison"]).read_text()
    assert "# u1: integrated" in comparison and "picked small" in comparison
    assert no_worktrees_left(repo)


def test_pick_in_patch_first_adds_a_patch_to_the_series(repo: Path, write_plan: Any) -> None:
    """The series grows by the picked unit's patch, checked like any; git am of the whole
    series on base gives the run's integrated tree; main is not touched."""
    head = git(repo, "rev-parse", "main")
    plan = plan_for(MANUAL)
    plan["units"].insert(0, {"id": "u0", "objective": "Add zero", "unit_scope": ["calc/"],
                             "lanes": {"coder": {"command": lane(
                                 "act.py", "write:calc/zero.py=ZERO = 0\\n")}}})
    plan["units"][1]["depends_on"] = ["u0"]
    _res, summary = manual_run(repo, write_plan(plan), "--delivery", "patch_first")
    run_id, patch_dir = summary["run_id"], Path(summary["patch_dir"])
    assert (patch_dir / "series").read_text() == "0001-u0.patch\n"
    res = pick(repo, run_id, "u1", "big")
    assert "0002-u1.patch" in res.stdout
    assert (patch_dir / "series").read_text() == "0001-u0.patch\n0002-u1.patch\n"
    assert git(repo, "rev-parse", "main") == head
    scratch = f"refs/wtmesh/{run_id}/integrated"
    assert "Wtmesh-Variant: big" in trailers(repo, scratch)
    rewritten = json.loads((state_dir(repo) / "runs" / run_id / "summary.json").read_text())
    assert unit_of(rewritten)["patch"] == "0002-u1.patch"
    assert rewritten["head"] == git(repo, "rev-parse", scratch)
    clone = am_series(repo, rewritten, repo.parent / "reviewer")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse", f"{scratch}^{{tree}}")
    assert (clone / "calc/extra.py").read_text().startswith("VALUE = 1\nOTHER = 2")
    assert unit_of(status(repo, run_id))["state"] == "integrated"


def test_pick_after_another_run_landed_builds_on_the_new_head(
        repo: Path, write_plan: Any) -> None:
    _res, summary = manual_run(repo, write_plan(plan_for(MANUAL)))
    moved = land_elsewhere(repo, write_plan, "write:calc/other.py=OTHER = 1\\n", "other.json")
    pick(repo, summary["run_id"], "u1", "small")
    assert git(repo, "rev-parse", "main^") == moved
    assert git(repo, "show", "main:calc/other.py") == "OTHER = 1"
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    proven = [r for r in ledger(repo, summary["run_id"]) if r["event"] == "proof_started"]
    assert git(repo, "rev-parse", f"{proven[-1]['candidate']}^") == moved


def test_a_pick_whose_proof_fails_now_lands_nothing_and_the_unit_still_waits(
        repo: Path, write_plan: Any) -> None:
    """Both variants passed when the run proved them; a test landed since wants VALUE 2:
    picking the one that says 1 fails its fresh proof, the target stays, the unit still
    awaits a choice, and the other can be picked."""
    one, two = variant("one", "write:calc/extra.py=VALUE = 1\\n"), \
        variant("two", "write:calc/extra.py=VALUE = 2\\n")
    _res, summary = manual_run(repo, write_plan(plan_for(
        {"variants": [one, two], "select": "manual"})))
    run_id = summary["run_id"]
    moved = land_elsewhere(repo, write_plan, VALUE_TWO, "other.json")
    res = pick(repo, run_id, "u1", "one", code=1)
    assert "u1: one was not integrated: proof_failed" in res.stdout
    assert f"still awaits a choice: wtmesh pick {run_id} u1 CANDIDATE" in res.stdout
    assert git(repo, "rev-parse", "main") == moved
    (failed,) = events(repo, run_id, "pick_failed")
    assert (failed["candidate"], failed["failure_code"]) == ("one", "proof_failed")
    assert unit_of(status(repo, run_id))["state"] == "awaiting_choice"
    assert "one was not integrated: proof_failed" in \
        (state_dir(repo) / "runs" / run_id / "units/u1/comparison.md").read_text()
    assert no_worktrees_left(repo)
    pick(repo, run_id, "u1", "two")
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 2"
    assert trailers(repo, "main")[2:] == ["Wtmesh-Variant: two"]  # no critics, no votes
    assert unit_of(status(repo, run_id))["state"] == "integrated"


# -- what cannot be picked ------------------------------------------------------------------

def test_each_pick_that_cannot_be_made_is_one_line_and_changes_nothing(
        repo: Path, write_plan: Any) -> None:
    plan = plan_for(MANUAL)
    plan["units"].append({"id": "plain", "objective": "o", "unit_scope": ["calc/"],
                          "lanes": {"coder": {"command": lane("act.py")}}})
    _res, summary = manual_run(repo, write_plan(plan))
    run_id = summary["run_id"]
    before = repo_snapshot(repo)
    ledger_before = (state_dir(repo) / "runs" / run_id / "ledger.jsonl").read_bytes()
    refused = {
        ("nope", "u1", "small"): "no run 'nope'",
        (run_id, "u9", "small"): f"run {run_id} has no unit 'u9'",
        (run_id, "u1", "huge"): "has no candidate 'huge'; its candidates that passed: big, "
                                "small",
        (run_id, "u1", "broken"): "candidate broken of unit u1 did not pass (proof_failed)",
    }
    for args, said in refused.items():
        line = one_error_line(pick(repo, *args, code=2))
        assert said in line, line
    assert "is no_diff, not awaiting a choice" in one_error_line(
        pick(repo, run_id, "plain", "small", code=2))
    assert repo_snapshot(repo) == before
    assert (state_dir(repo) / "runs" / run_id / "ledger.jsonl").read_bytes() == ledger_before
    pick(repo, run_id, "u1", "small")
    line = one_error_line(pick(repo, run_id, "u1", "big", code=2))
    assert "unit u1 of run" in line and "is integrated, not awaiting a choice" in line


def test_a_run_that_did_not_finish_is_not_picked_from(repo: Path, write_plan: Any) -> None:
    plan = write_plan(plan_for(MANUAL))
    killed = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "after-event:3"})
    assert killed.returncode == -9
    (run_dir,) = run_dirs(repo)
    line = one_error_line(pick(repo, run_dir.name, "u1", "small", code=2))
    assert f"run {run_dir.name} did not finish; resume it first" in line
    assert f"--resume {run_dir.name}" in line


def test_a_dirty_target_or_a_held_lock_refuses_with_exit_3_and_changes_nothing(
        repo: Path, write_plan: Any) -> None:
    _res, summary = manual_run(repo, write_plan(plan_for(MANUAL)))
    run_id = summary["run_id"]
    ledger_file = state_dir(repo) / "runs" / run_id / "ledger.jsonl"
    written = ledger_file.read_bytes()
    (repo / "calc/ops.py").write_text("# mine, not committed\n")
    before = repo_snapshot(repo)
    line = one_error_line(pick(repo, run_id, "u1", "small", code=3), 3)
    assert "uncommitted changes" in line
    assert repo_snapshot(repo) == before and ledger_file.read_bytes() == written
    git(repo, "checkout", "calc/ops.py")
    before = repo_snapshot(repo)
    with filelock.FileLock(str(state_dir(repo) / "integrator.lock")):
        res = pick(repo, run_id, "u1", "small", "--lock-timeout", "0", code=3)
    assert "waiting for the integrator lock" in res.stdout
    line = one_error_line(res, 3)
    assert "timed out" in line and "pick again" in line and "--resume" not in line
    assert repo_snapshot(repo) == before and ledger_file.read_bytes() == written
    pick(repo, run_id, "u1", "small")  # once the lock is free


def test_gc_keeps_the_candidates_of_a_unit_awaiting_a_choice(
        repo: Path, write_plan: Any) -> None:
    _res, summary = manual_run(repo, write_plan(plan_for(MANUAL)))
    run_id = summary["run_id"]
    res = wtmesh("gc", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert f"kept run {run_id}: u1 awaits a choice" in res.stdout
    pick(repo, run_id, "u1", "small")
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    res = wtmesh("gc", cwd=repo)
    assert "kept run" not in res.stdout
    assert git(repo, "for-each-ref", f"refs/wtmesh/{run_id}/") == ""


def test_a_pick_killed_after_it_landed_is_finished_by_the_next_without_landing_twice(
        repo: Path, write_plan: Any) -> None:
    _res, summary = manual_run(repo, write_plan(plan_for(MANUAL)))
    run_id = summary["run_id"]
    killed = wtmesh("pick", run_id, "u1", "big", cwd=repo, env={"WTMESH_FAULT": "at:land"})
    assert killed.returncode == -9, killed.stderr
    landed = git(repo, "rev-parse", "main")
    assert trailers(repo, "main")[2] == "Wtmesh-Variant: big"
    assert unit_of(status(repo, run_id))["state"] == "awaiting_choice"  # not said yet
    pick(repo, run_id, "u1", "big")
    assert git(repo, "rev-parse", "main") == landed
    assert git(repo, "show", "main:calc/extra.py").startswith("VALUE = 1\nOTHER = 2")
    assert unit_of(status(repo, run_id))["state"] == "integrated"
    assert events(repo, run_id, "unit_finished")[-1]["commit"] == landed
    assert git(repo, "status", "--porcelain") == ""
