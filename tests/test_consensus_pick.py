"""``select: manual`` (SPEC 12) through the real CLI: a manual unit lands nothing and
waits with every passing candidate's patch and a comparison written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PROOF,
    Result,
    git,
    lane,
    state_dir,
    wtmesh,
)
from test_consensus import THREE, by_name, critic, plan_for

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
