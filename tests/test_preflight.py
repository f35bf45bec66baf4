"""The preflight (SPEC 9): before any worktree is made, every lane's program and every
preset's CLI is found, or the run exits 3 with one line naming the unit, the lane and
what is missing, and nothing is created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, lane, one_error_line, state_dir, wtmesh
from fake_clis.harness import git_only
from test_consensus import SMALL, critic, variant

MISSING = "wtmesh-no-such-agent"


def unit(**lanes: Any) -> dict[str, Any]:
    return {"id": "u1", "objective": "Add VALUE to calc", "unit_scope": ["calc/"],
            "lanes": {"coder": {"command": lane("act.py", SMALL)}, **lanes}}


def refused(repo: Path, plan: Path, env: dict[str, str] | None = None) -> str:
    res = wtmesh("run", plan, cwd=repo, env=env)
    line = one_error_line(res, code=3)
    assert not state_dir(repo).exists() or not any(state_dir(repo).rglob("*")), \
        list(state_dir(repo).rglob("*"))
    return line


def test_missing_coder_program(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": PROOF,
                       "units": [unit(coder={"command": [MISSING, "--task"]})]})
    line = refused(repo, plan)
    assert line == (f"wtmesh: error: unit u1, coder lane: `{MISSING}` is not on PATH; "
                    "nothing was started")


def test_missing_fixer_program_in_a_shell_string(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": PROOF,
                       "units": [unit(fixer={"command": f"{MISSING} --review"})]})
    assert f"unit u1, fixer lane: `{MISSING}` is not on PATH" in refused(repo, plan)


def test_missing_absolute_path(repo: Path, write_plan: Any, tmp_path: Path) -> None:
    gone = tmp_path / "gone" / "agent"
    plan = write_plan({"proof_command": PROOF,
                       "units": [unit(coder={"command": [str(gone)]})]})
    assert f"coder lane: {gone} does not exist" in refused(repo, plan)


def test_missing_consensus_critic(repo: Path, write_plan: Any) -> None:
    consensus = {"variants": [variant("a", SMALL), variant("b", SMALL)],
                 "critics": [critic("ok"), {"name": "gone", "command": [MISSING]}]}
    plan = write_plan({"proof_command": PROOF, "units": [{**unit(), "consensus": consensus}]})
    assert f"unit u1, critic gone lane: `{MISSING}` is not on PATH" in refused(repo, plan)


def test_missing_preset_cli(repo: Path, write_plan: Any, tmp_path: Path) -> None:
    plan = write_plan({"proof_command": PROOF,
                       "units": [unit(coder={"preset": "claude"})]})
    line = refused(repo, plan, env={"PATH": str(git_only(tmp_path / "gitonly"))})
    assert "unit u1, coder lane: preset claude: `claude` is not on PATH" in line


@pytest.mark.parametrize("command", ["cd calc && true", "FOO=1 true", "$AGENT --go",
                                     "./make-it.sh", "if true; then :; fi"])
def test_what_is_not_certainly_missing_runs(repo: Path, write_plan: Any,
                                            command: str) -> None:
    plan = write_plan({"proof_command": PROOF, "units": [unit(coder={"command": command})]})
    res = wtmesh("run", plan, "--json", cwd=repo, env={"AGENT": "true"})
    assert res.returncode != 3 or "nothing was started" not in res.stderr, res.stderr


def test_the_first_line_says_waves_max_active_overlap_and_executor(
        repo: Path, write_plan: Any) -> None:
    units = [{"id": f"u{i}", "objective": "Add", "unit_scope": ["calc/"],
              "lanes": {"coder": {"command": lane("act.py", SMALL)}}} for i in range(3)]
    plan = write_plan({"proof_command": PROOF, "max_active": 2, "units": units})
    res = wtmesh("run", plan, "--remaining-five-hour", "9", "--remaining-weekly", "90",
                 cwd=repo)
    first = res.stdout.splitlines()[0]
    assert first.startswith("run "), res.stdout
    # One scope for all three: one wave each; the budget clamps max_active to 1.
    assert ": 3 units in 3 waves, commit_first onto main from " in first, first
    assert (", overlap serialize, executor local, 1 at a time (budget single_agent: at "
            "most 1)") in first, first
