"""Test-first units (SPEC 13): proven red, never landed alone, landed with their
implementation units in one move of the target once the tip is green."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from conftest import PROOF, git, lane, one_error_line, wtmesh
from test_patch_series import am_series

KILLED = -signal.SIGKILL
TEST = ("tests/test_power.py=import unittest\\n\\nfrom calc.ops import power\\n\\n\\n"
        "class PowerTest(unittest.TestCase):\\n    def test_power(self):\\n"
        "        self.assertEqual(power(2, 3), 8)\\n")
POWER = "calc/ops.py=\\n\\ndef power(a, b):\\n    return a ** b\\n"
WRONG_POWER = "calc/ops.py=\\n\\ndef power(a, b):\\n    return a * b\\n"


def _unit(uid: str, *actions: str, **keys: Any) -> dict[str, Any]:
    return {"id": uid, "objective": f"{uid}", "lanes": {"coder": {
        "command": lane("act.py", *actions), "timeout_s": 120}}, **keys}


def _plan(tmp_path: Path, *units: dict[str, Any], **keys: Any) -> dict[str, Any]:
    record = tmp_path / "lanes.jsonl"
    for unit in units:
        unit["lanes"]["coder"]["command"].insert(2, f"record:{record}")
    return {"proof_command": PROOF, "max_active": 3, "units": list(units),
            "sandbox_writable": [str(tmp_path)], **keys}


def _group(tmp_path: Path, *impl_actions: str, **keys: Any) -> dict[str, Any]:
    return _plan(tmp_path,
                 _unit("tests", f"write:{TEST}", test_first=True, unit_scope=["tests/"]),
                 _unit("impl", *impl_actions, depends_on=["tests"], unit_scope=["calc/"]),
                 **keys)


def _recorded(tmp_path: Path, uid: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "lanes.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["env"]["WTMESH_UNIT_ID"] == uid]


def _ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git/wtmesh/runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _main_moves(repo: Path) -> list[str]:
    """Every commit main has pointed at, newest first (its reflog)."""
    return git(repo, "reflog", "--format=%H", "main").splitlines()


def _proof_passes(repo: Path, commit: str, tmp_path: Path) -> bool:
    where = tmp_path / f"check-{commit[:8]}"
    git(repo, "worktree", "add", "-q", "--detach", str(where), commit)
    done = subprocess.run(PROOF, cwd=where, capture_output=True, check=False)
    git(repo, "worktree", "remove", "--force", str(where))
    return done.returncode == 0


def test_a_test_first_group_lands_in_one_move_never_at_the_red_commit(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    base = git(repo, "rev-parse", "main")
    plan = _group(tmp_path, "require:tests/test_power.py", f"append:{POWER}")
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert [(u["id"], u["status"]) for u in summary["units"]] == [
        ("tests", "integrated"), ("impl", "integrated")]
    tests_commit, impl_commit = (u["commit"] for u in summary["units"])
    assert git(repo, "rev-parse", f"{impl_commit}^") == tests_commit
    assert git(repo, "rev-parse", f"{tests_commit}^") == base
    # One move, from the base to the green tip: main never pointed at the red commit.
    assert _main_moves(repo) == [impl_commit, base]
    assert not _proof_passes(repo, tests_commit, tmp_path)
    assert _proof_passes(repo, impl_commit, tmp_path)
    message = git(repo, "log", "-1", "--format=%B", tests_commit)
    assert "Wtmesh-Proof: red by design (test-first, green at impl)" in message
    # The implementation started from the test-first change, which the ledger recorded.
    (red,) = [e for e in _ledger(repo, summary["run_id"]) if e["event"] == "test_first_red"]
    (impl_lane,) = _recorded(tmp_path, "impl")
    assert impl_lane["env"]["WTMESH_BASE_SHA"] == red["commit"] != base
    assert red["head"] == base


def test_tests_that_already_pass_are_proof_missing_and_nothing_lands(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    base = git(repo, "rev-parse", "main")
    plan = _plan(tmp_path,
                 _unit("tests", "write:tests/test_more.py=import unittest\\n", test_first=True),
                 _unit("impl", f"append:{POWER}", depends_on=["tests"]))
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    tests, impl = res.json()["units"]
    assert (tests["status"], tests["failure_code"]) == ("failed", "proof_missing")
    assert (impl["status"], impl["failure_code"]) == ("skipped", "dependency_failed")
    assert git(repo, "rev-parse", "main") == base
    assert not (tmp_path / "lanes.jsonl").read_text().count('"impl"')


def test_a_head_that_already_fails_is_delivery_blocked(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """The head went red for the test-first unit's proof: a unit with a proof of its own
    (``true``) landed a failing test. A red proof there would say nothing."""
    broken = ("tests/test_broken.py=import unittest\\n\\n\\nclass T(unittest.TestCase):\\n"
              "    def test_x(self):\\n        self.fail('red')\\n")
    plan = _group(tmp_path, f"append:{POWER}")
    plan["units"][0]["depends_on"] = ["breaks"]
    plan["units"].insert(0, _unit("breaks", f"write:{broken}", proof_command=["true"]))
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    breaks, tests, impl = res.json()["units"]
    assert breaks["status"] == "integrated"
    assert (tests["status"], tests["failure_code"]) == ("failed", "delivery_blocked")
    assert (impl["status"], impl["failure_code"]) == ("skipped", "dependency_failed")
    assert git(repo, "rev-parse", "main") == breaks["commit"]


def test_a_group_that_cannot_reach_green_lands_nothing_and_says_why(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", write_plan(_group(tmp_path, f"append:{WRONG_POWER}")), "--json",
                 cwd=repo)
    assert res.returncode == 1, res.stderr
    tests, impl = res.json()["units"]
    assert (impl["status"], impl["failure_code"]) == ("failed", "proof_failed")
    assert (tests["status"], tests["failure_code"]) == ("failed", "proof_failed")
    assert git(repo, "rev-parse", "main") == base and _main_moves(repo) == [base]
    finished = {e["unit"]: e for e in _ledger(repo, res.json()["run_id"])
                if e["event"] == "unit_finished"}
    assert "group's tip fails" in finished["impl"]["notes"]
    assert "its test-first group landed nothing: impl" in finished["tests"]["notes"]


def test_an_implementation_that_fails_its_lanes_leaves_the_tests_unlanded(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", write_plan(_group(tmp_path, "exit:1")), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    tests, impl = res.json()["units"]
    assert impl["status"] == "rejected"  # a lane that exits 1 rejects the change
    assert (tests["status"], tests["failure_code"]) == ("failed", "proof_failed")
    assert git(repo, "rev-parse", "main") == base


def test_two_implementation_units_land_with_their_tests(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """The tests need both: power in ops.py and its export in __init__.py."""
    test = TEST.replace("from calc.ops import power", "from calc import power")
    export = ("calc/__init__.py=\\nfrom .ops import power  # noqa: E402\\n")
    plan = _plan(tmp_path,
                 _unit("tests", f"write:{test}", test_first=True, unit_scope=["tests/"]),
                 _unit("ops", f"append:{POWER}", depends_on=["tests"],
                       unit_scope=["calc/ops.py"]),
                 _unit("export", f"append:{export}", depends_on=["tests"],
                       unit_scope=["calc/__init__.py"]))
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    commits = [u["commit"] for u in res.json()["units"]]
    assert _main_moves(repo) == [commits[-1], base]
    middle = git(repo, "log", "-1", "--format=%B", commits[1])
    assert "covered by the proof of export (test-first group tip)" in middle
    assert "green at export" in git(repo, "log", "-1", "--format=%B", commits[0])


def test_kill_9_in_the_middle_of_a_group_resumes_it(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """Killed while the implementation's lane runs (the tests proven red): a resumed run
    proves the tests red again, reruns the implementation from them and lands the group."""
    base = git(repo, "rev-parse", "main")
    plan = write_plan(_group(tmp_path, "require:tests/test_power.py", f"append:{POWER}"))
    killed = wtmesh("run", plan, "--json", cwd=repo, env={"WTMESH_FAULT": "at:lane:2"})
    assert killed.returncode == KILLED, killed.stderr
    assert git(repo, "rev-parse", "main") == base
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    tests, impl = res.json()["units"]
    assert (tests["status"], impl["status"]) == ("integrated", "integrated")
    assert _main_moves(repo) == [impl["commit"], base]
    assert "red by design" in git(repo, "log", "-1", "--format=%B", tests["commit"])


def test_the_tip_must_pass_the_test_first_units_proof_too(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """The implementation's own proof passes, but the tests' does not: nothing lands."""
    plan = _group(tmp_path, f"append:{WRONG_POWER}")
    plan["units"][1]["proof_command"] = ["true"]
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    finished = {e["unit"]: e for e in _ledger(repo, res.json()["run_id"])
                if e["event"] == "unit_finished"}
    assert finished["impl"]["failure_code"] == "proof_failed"
    assert "fails tests's proof" in finished["impl"]["notes"]
    assert git(repo, "rev-parse", "main") == base


def test_plain_output_says_the_tests_are_red_by_design(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    plan = _group(tmp_path, f"append:{POWER}")
    res = wtmesh("run", write_plan(plan), cwd=repo)
    assert res.returncode == 0, res.stderr
    red = [line for line in res.stdout.splitlines() if line.split()[:2] == ["tests", "red"]]
    assert len(red) == 1 and "fails with its change" in red[0], res.stdout


def test_a_unit_implements_one_test_first_unit(repo: Path, tmp_path: Path,
                                               write_plan: Any) -> None:
    plan = _plan(tmp_path, _unit("t1", "write:a=1", test_first=True),
                 _unit("t2", "write:b=1", test_first=True),
                 _unit("impl", "write:c=1", depends_on=["t1", "t2"]))
    line = one_error_line(wtmesh("run", write_plan(plan), cwd=repo))
    assert line.endswith("plan.json: $.units[2].depends_on: a unit implements one "
                         "test-first unit, not 2 ('t1', 't2')"), line


def test_overlapping_groups_and_units_of_scope_everything_all_land(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """Every unit of scope ** (serialize): a group's members neither wait for a unit that
    waits for the group, nor for each other; a second group follows the first."""
    neg_test = ("tests/test_neg.py=import unittest\\n\\nfrom calc.ops import neg\\n\\n\\n"
                "class NegTest(unittest.TestCase):\\n    def test_neg(self):\\n"
                "        self.assertEqual(neg(2), -2)\\n")
    plan = _plan(tmp_path,
                 _unit("readme", "write:README.md=calc\\n"),
                 _unit("t1", f"write:{TEST}", test_first=True),
                 _unit("t2", f"write:{neg_test}", test_first=True),
                 _unit("power", f"append:{POWER}", depends_on=["t1"]),
                 _unit("docs", "write:docs/power.md=power\\n", depends_on=["t1"]),
                 _unit("neg", "append:calc/ops.py=\\n\\ndef neg(a):\\n    return -a\\n",
                       depends_on=["t2"]))
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert {u["id"]: u["status"] for u in summary["units"]} == {
        u: "integrated" for u in ("readme", "t1", "t2", "power", "docs", "neg")}
    landed = git(repo, "log", "--reverse", "--format=%(trailers:key=Wtmesh-Unit,valueonly)",
                 "main").split()
    assert landed == ["t1", "power", "docs", "t2", "neg", "readme"]


def test_an_implementation_that_rewrites_the_tests_to_pass_is_a_scope_violation(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """A hostile implementation of scope **: it makes power() wrong and the pinned test
    pass anyway by rewriting it. Its group lands nothing."""
    neutered = TEST.replace("self.assertEqual(power(2, 3), 8)", "pass")
    plan = _plan(tmp_path,
                 _unit("tests", f"write:{TEST}", test_first=True, unit_scope=["tests/"]),
                 _unit("impl", f"append:{WRONG_POWER}", f"write:{neutered}",
                       depends_on=["tests"]))
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    tests, impl = res.json()["units"]
    assert (impl["status"], impl["failure_code"]) == ("failed", "scope_violation")
    assert (tests["status"], tests["failure_code"]) == ("failed", "proof_failed")
    finished = {e["unit"]: e for e in _ledger(repo, res.json()["run_id"])
                if e["event"] == "unit_finished"}
    assert "tests/test_power.py" in finished["impl"]["notes"]
    assert git(repo, "rev-parse", "main") == base


def test_patch_first_delivers_the_group_as_a_series_that_git_am_replays(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """The reviewer gets the red test commit, saying so, then the implementation; main
    stays where it was."""
    base = git(repo, "rev-parse", "main")
    plan = _group(tmp_path, f"append:{POWER}", delivery_mode="patch_first")
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert git(repo, "rev-parse", "main") == base
    assert [u["patch"] for u in summary["units"]] == ["0001-tests.patch", "0002-impl.patch"]
    clone = am_series(repo, summary, tmp_path / "reviewer")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")
    assert "red by design (test-first, green at impl)" in git(clone, "log", "-1",
                                                                "--format=%B", "HEAD^")
    assert _proof_passes(clone, git(clone, "rev-parse", "HEAD"), tmp_path)
