"""``wtmesh run`` end to end: real repositories, real lane scripts, the real CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, git, lane, make_repo, no_worktrees_left, wtmesh


def mixed_plan(mode: str) -> dict[str, Any]:
    """Every kind of unit a new user would try, in one plan."""
    reject = '{"id": "u-fix-rejects", "decision": "reject", "notes": "not good enough"}'
    return {
        "delivery_mode": mode,
        "proof_command": PROOF,
        "max_active": 3,
        "lanes": {"coder": {"command": lane("act.py"), "timeout_s": 60}},
        "units": [
            {"id": "u-edit", "objective": "Add negate\n\nA longer body line.",
             "unit_scope": "calc/ops.py",
             "lanes": {"coder": {"command": lane(
                 "act.py", "append:calc/ops.py=\\n\\ndef negate(a):\\n    return -a\\n")}}},
            {"id": "u-binary", "objective": "Add a logo", "unit_scope": ["assets/"],
             "lanes": {"coder": {"command": lane("act.py", "binary:assets/logo.bin")}}},
            {"id": "u-power", "objective": "Add power", "unit_scope": "calc/power.py",
             "lanes": {"coder": {"command": lane(
                 "act.py", "write:calc/power.py=def power(a, b):\\n    return a ** b\\n")}}},
            {"id": "u-power-test", "objective": "Test power", "depends_on": ["u-power"],
             "unit_scope": "tests/test_power.py",
             "lanes": {"coder": {"command": lane(
                 "act.py", "require:calc/power.py",
                 "write:tests/test_power.py=import unittest\\nfrom calc.power import power\\n\\n"
                 "class T(unittest.TestCase):\\n    def test(self):\\n"
                 "        self.assertEqual(power(2, 3), 8)\\n")}}},
            {"id": "u-fixed", "objective": "Write docs", "unit_scope": "docs/",
             "lanes": {"coder": {"command": lane("act.py", "write:docs/a.md=coder\\n")},
                       "fixer": {"command": lane("act.py", "append:docs/a.md=fixer\\n")}}},
            {"id": "u-fix-rejects", "objective": "More docs", "unit_scope": "docs/",
             "lanes": {"coder": {"command": lane("act.py", "write:docs/b.md=draft\\n")},
                       "fixer": {"command": lane("act.py", f"result:{reject}")}}},
            {"id": "u-outside", "objective": "Stray edit", "unit_scope": "calc/parse.py",
             "lanes": {"coder": {"command": lane("act.py", "write:calc/stray.py=x = 1\\n")}}},
            {"id": "u-breaks", "objective": "Break parsing", "unit_scope": "calc/parse.py",
             "lanes": {"coder": {"command": lane("act.py", "write:calc/parse.py=def (\\n")}}},
            {"id": "u-noop", "objective": "Nothing to do",
             "lanes": {"coder": {"command": lane("act.py")}}},
        ],
    }


EXPECTED = {
    "u-edit": ("integrated", None),
    "u-binary": ("integrated", None),
    "u-power": ("integrated", None),
    "u-power-test": ("integrated", None),
    "u-fixed": ("integrated", None),
    "u-fix-rejects": ("rejected", None),
    "u-outside": ("failed", "scope_violation"),
    "u-breaks": ("failed", "proof_failed"),
    "u-noop": ("no_diff", None),
}
INTEGRATED = [uid for uid, (state, _) in EXPECTED.items() if state == "integrated"]


def run_mixed(tmp_path: Path, write_plan: Any, mode: str) -> tuple[Path, str, dict[str, Any]]:
    repo = make_repo(tmp_path / f"repo-{mode}")
    base = git(repo, "rev-parse", "HEAD")
    res = wtmesh("run", write_plan(mixed_plan(mode), f"plan-{mode}.json"), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    return repo, base, res.json()


def test_mixed_plan_commit_first(tmp_path: Path, write_plan: Any) -> None:
    repo, base, summary = run_mixed(tmp_path, write_plan, "commit_first")
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == EXPECTED
    # History: exactly the integrated units, in plan order, each with its trailers.
    subjects = git(repo, "log", "--format=%s", f"{base}..main").splitlines()[::-1]
    assert subjects == [
        "u-edit: Add negate", "u-binary: Add a logo", "u-power: Add power",
        "u-power-test: Test power", "u-fixed: Write docs"]
    for unit_id in INTEGRATED:
        body = git(repo, "log", "-1", "--format=%B", f"--grep=Wtmesh-Unit: {unit_id}$", "main")
        assert f"Wtmesh-Run: {summary['run_id']}" in body
        assert f"Wtmesh-Unit: {unit_id}" in body
    assert "A longer body line." in git(repo, "log", "-1", "--format=%B",
                                        "--grep=Wtmesh-Unit: u-edit$", "main")
    assert summary["head"] == git(repo, "rev-parse", "main")
    # The fixer's further edit landed; the rejected and failed units did not.
    assert (repo / "docs/a.md").read_text() == "coder\nfixer\n"
    assert not (repo / "docs/b.md").exists()
    assert not (repo / "calc/stray.py").exists()
    assert (repo / "assets/logo.bin").read_bytes() == bytes(range(256))
    # The user's worktree is clean and on the new head; the proof passes there.
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == summary["head"]
    subprocess.run(PROOF, cwd=repo, check=True, capture_output=True)
    assert no_worktrees_left(repo)
    unit = {u["id"]: u for u in summary["units"]}
    assert unit["u-binary"]["files"] == ["assets/logo.bin"]
    assert unit["u-edit"]["commit"] == git(repo, "log", "-1", "--format=%H",
                                           "--grep=Wtmesh-Unit: u-edit$", "main")
    assert unit["u-breaks"]["commit"] is None


def test_mixed_plan_patch_first_series_reproduces_tree(tmp_path: Path, write_plan: Any) -> None:
    repo, base, summary = run_mixed(tmp_path, write_plan, "patch_first")
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == EXPECTED
    # Target and user worktree untouched.
    assert git(repo, "rev-parse", "main") == base
    assert git(repo, "status", "--porcelain") == ""
    patch_dir = Path(summary["patch_dir"])
    series = (patch_dir / "series").read_text()
    assert series.endswith("\n")
    names = series.splitlines()
    assert names == [f"{i:04d}-{uid}.patch" for i, uid in enumerate(INTEGRATED, 1)]
    assert [u["patch"] for u in summary["units"] if u["status"] == "integrated"] == names
    # git am of the series on base reproduces the integrated tree exactly.
    clone = tmp_path / "am"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "checkout", "-q", "--detach", base)
    git(clone, "am", "-q", *[str(patch_dir / n) for n in names])
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")
    assert no_worktrees_left(repo)


def test_both_modes_integrate_the_same_tree(tmp_path: Path, write_plan: Any) -> None:
    _, _, commit_summary = run_mixed(tmp_path, write_plan, "commit_first")
    patch_repo, _, patch_summary = run_mixed(tmp_path, write_plan, "patch_first")
    commit_repo = tmp_path / "repo-commit_first"
    assert git(commit_repo, "rev-parse", commit_summary["head"] + "^{tree}") == \
        git(patch_repo, "rev-parse", patch_summary["head"] + "^{tree}")


def test_summary_has_the_spec_shape(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
        "command": lane("act.py", "write:new.txt=hi\\n")}}}]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert set(summary) >= {"run_id", "delivery_mode", "target", "base", "head", "patch_dir",
                            "units", "counts", "exit_code"}
    assert summary["patch_dir"] is None and summary["target"] == "main"
    (unit,) = summary["units"]
    assert set(unit) >= {"id", "status", "failure_code", "commit", "patch", "files",
                         "attempts", "duration_s"}
    assert unit["status"] == "integrated" and unit["attempts"] == 1
    assert summary["counts"]["integrated"] == 1 and summary["exit_code"] == 0
    # --json prints the summary and nothing else on stdout.
    assert res.stdout.count("\n") == 1


def test_plain_lines_and_table_off_a_terminal(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"units": [
        {"id": "ok", "objective": "o", "lanes": {"coder": {
            "command": lane("act.py", "write:a.txt=1\\n")}}},
        {"id": "bad", "objective": "o", "lanes": {"coder": {"command": lane("act.py", "exit:4")}}},
    ]})
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert any(line.startswith("ok") and "integrated" in line for line in lines)
    assert any(line.startswith("bad") and "rejected" in line and "lane_failed" in line
               for line in lines)
    assert "1 commits on main" in res.stdout


@pytest.mark.parametrize("mode", ["commit_first", "patch_first"])
def test_dependant_starts_from_integrated_result(repo: Path, write_plan: Any, mode: str,
                                                 tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    plan = write_plan({"delivery_mode": mode, "sandbox_writable": [str(tmp_path)], "units": [
        {"id": "b", "objective": "second", "depends_on": ["a"], "unit_scope": "b.txt",
         "lanes": {"coder": {"command": lane("act.py", f"record:{record}", "require:a.txt",
                                             "write:b.txt=b\\n")}}},
        {"id": "a", "objective": "first", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:a.txt=a\\n")}}},
    ]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    by_id = {u["id"]: u for u in summary["units"]}
    # b was started from a's integrated commit.
    import json
    env = json.loads(record.read_text().splitlines()[0])["env"]
    assert env["WTMESH_BASE_SHA"] == by_id["a"]["commit"]
    # Dependencies integrate first even when listed later.
    assert [u["id"] for u in summary["units"]] == ["b", "a"]
    assert git(repo, "log", "-1", "--format=%s", summary["head"]) == "b: second"


def test_failed_dependency_skips_dependants_transitively(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"units": [
        {"id": "a", "objective": "o", "lanes": {"coder": {"command": lane("act.py", "exit:1")}}},
        {"id": "b", "objective": "o", "depends_on": ["a"]},
        {"id": "c", "objective": "o", "depends_on": ["b"]},
        {"id": "d", "objective": "o", "unit_scope": "d.txt"},
    ], "lanes": {"coder": {"command": lane("act.py", "write:d.txt=d\\n")}}})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 1
    states = {u["id"]: (u["status"], u["failure_code"]) for u in res.json()["units"]}
    assert states == {"a": ("rejected", "lane_failed"), "b": ("skipped", "dependency_failed"),
                      "c": ("skipped", "dependency_failed"), "d": ("integrated", None)}


def test_overlapping_units_run_one_after_another(repo: Path, write_plan: Any,
                                                  tmp_path: Path) -> None:
    """Both edit the same line region; the second starts from the first's result, so the
    two cannot conflict even with max_active 2."""
    record = tmp_path / "record.jsonl"
    plan = write_plan({"max_active": 2, "sandbox_writable": [str(tmp_path)], "units": [
        {"id": "one", "objective": "o", "unit_scope": "calc/ops.py", "lanes": {"coder": {
            "command": lane("act.py", f"record:{record}", "sleep:0.5",
                            "append:calc/ops.py=# one\\n")}}},
        {"id": "two", "objective": "o", "unit_scope": "calc/", "lanes": {"coder": {
            "command": lane("act.py", f"record:{record}", "append:calc/ops.py=# two\\n")}}},
    ]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert (repo / "calc/ops.py").read_text().endswith("# one\n# two\n")
    starts = [__import__("json").loads(line)["env"]["WTMESH_BASE_SHA"]
              for line in record.read_text().splitlines()]
    by_id = {u["id"]: u for u in res.json()["units"]}
    assert starts[1] == by_id["one"]["commit"]


def test_max_active_bounds_concurrency(repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Four disjoint units that each record start and end: never more than two overlap."""
    log = tmp_path / "spans.jsonl"
    units = [{"id": f"u{i}", "objective": "o", "unit_scope": f"f{i}.txt", "lanes": {"coder": {
        "command": lane("act.py", f"record:{log}", "sleep:0.3", f"write:f{i}.txt=x\\n",
                        f"record:{log}")}}} for i in range(4)]
    res = wtmesh("run", write_plan({"max_active": 2, "units": units,
                                    "sandbox_writable": [str(tmp_path)]}), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    import json
    events = [json.loads(line)["env"]["WTMESH_UNIT_ID"] for line in log.read_text().splitlines()]
    active, peak = set(), 0
    for unit_id in events:
        if unit_id in active:
            active.remove(unit_id)
        else:
            active.add(unit_id)
        peak = max(peak, len(active))
    assert peak == 2


def test_unit_ids_that_are_not_valid_ref_names_still_run(repo: Path, tmp_path: Path) -> None:
    """`a..b`, `x.lock`, `.h` and `..` are valid unit ids but not valid ref components;
    each unit's work still gets its own ref and lands."""
    ids = ["a..b", "x.lock", ".h", "..", "plain"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"proof_command": "true", "units": [
        {"id": uid, "objective": "o", "unit_scope": f"f{n}.txt",
         "lanes": {"coder": {"command": lane("act.py", f"write:f{n}.txt={n}\\n")}}}
        for n, uid in enumerate(ids)]}))
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert {u["id"]: u["status"] for u in summary["units"]} == dict.fromkeys(ids, "integrated")
    refs = git(repo, "for-each-ref", "--format=%(refname)",
               f"refs/wtmesh/{summary['run_id']}/units/").splitlines()
    result_refs = {r.rsplit("/", 2)[1] for r in refs if r.endswith("/result")}
    assert len(result_refs) == len(ids)  # one distinct ref per unit
    assert "plain" in result_refs


def test_units_dot_dot_and_underscore_dot_dot_keep_apart(repo: Path, tmp_path: Path) -> None:
    """``..`` and ``_..`` are two valid ids; their lanes run at once and neither reads
    the other's result or logs. ``..`` writes its verdict while ``_..`` runs, and ``_..``
    writes none (an accept)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    verdict = json.dumps({"id": "..", "decision": "reject", "notes": "dotdot says no"})
    dotdot = (f"echo I am $WTMESH_UNIT_ID; until [ -e {marks}/other-started ]; do sleep 0.02; "
              f"done; echo '{verdict}' > \"$WTMESH_RESULT_JSON\"; touch {marks}/dotdot-done")
    other = (f"echo I am $WTMESH_UNIT_ID; touch {marks}/other-started; "
             f"until [ -e {marks}/dotdot-done ]; do sleep 0.02; done; echo b > b.txt")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": 2, "sandbox_writable": [str(marks)], "units": [
        {"id": "..", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": dotdot, "retries": 0}}},
        {"id": "_..", "objective": "o", "unit_scope": "b.txt",
         "lanes": {"coder": {"command": other, "retries": 0}}}]}))
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    summary = res.json()
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {"..": ("rejected", None), "_..": ("integrated", None)}
    assert git(repo, "show", "main:b.txt") == "b"
    status = wtmesh("status", summary["run_id"], "--json", cwd=repo).json()
    assert {u["id"]: u["evidence"] for u in status["units"]}[".."] == "dotdot says no"
    for uid in ("..", "_.."):
        log = wtmesh("log", summary["run_id"], uid, "--lane", "coder", cwd=repo).stdout
        assert [line for line in log.splitlines() if line.startswith("I am")] == [f"I am {uid}"]


def test_an_integrated_unit_keeps_its_fixers_notes(repo: Path, tmp_path: Path) -> None:
    accept = '{"id": "u1", "decision": "accept", "notes": "added a docstring"}'
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"proof_command": "true", "units": [
        {"id": "u1", "objective": "o", "unit_scope": "f.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:f.txt=x\\n")},
                   "fixer": {"command": lane("act.py", f"result:{accept}")}}}]}))
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    ledger = repo / ".git/wtmesh/runs" / res.json()["run_id"] / "ledger.jsonl"
    (finished,) = [json.loads(line) for line in ledger.read_text().splitlines()
                   if json.loads(line)["event"] == "unit_finished"]
    assert finished["status"] == "integrated"
    assert finished["notes"] == "added a docstring"
