"""The lane contract (SPEC 3.3-3.4): environment, logs, result file, timeouts, retries."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, alive, git, lane, run_worktrees, state_dir, wtmesh

from worktree_mesh.lanes import render


def one_unit(coder: Any, **extra: Any) -> dict[str, Any]:
    unit = {"id": "u1", "objective": "do it", **extra}
    return {"lanes": {"coder": {"command": coder, "timeout_s": 30}}, "units": [unit]}


def run_json(repo: Path, plan: Path, *args: str) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo)
    assert "Traceback" not in res.stderr
    assert res.returncode in (0, 1), res.stderr
    summary: dict[str, Any] = res.json()
    return summary


def unit_of(summary: dict[str, Any], unit_id: str = "u1") -> dict[str, Any]:
    return next(u for u in summary["units"] if u["id"] == unit_id)


def test_lane_environment_cwd_and_closed_stdin(repo: Path, write_plan: Any,
                                               tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    plan = write_plan({
        "lanes": {"coder": {"command": lane("act.py", f"record:{record}", "write:x.txt=1\\n"),
                            "env": {"EXTRA_VAR": "yes"}},
                  "fixer": {"command": lane("act.py", f"record:{record}")}},
        "units": [{"id": "u1", "objective": "o"}], "sandbox_writable": [str(tmp_path)]})
    summary = run_json(repo, plan)
    assert unit_of(summary)["status"] == "integrated"
    coder, fixer = (json.loads(line) for line in record.read_text().splitlines())
    env = coder["env"]
    assert env["WTMESH_RUN_ID"] == summary["run_id"]
    assert env["WTMESH_UNIT_ID"] == "u1" and env["WTMESH_LANE"] == "coder"
    assert env["WTMESH_ATTEMPT"] == "1"
    assert env["WTMESH_BASE_SHA"] == summary["base"]
    assert env["WTMESH_REPO"] == str(repo)
    assert env["WTMESH_PLAN_DIR"] == str(plan.parent)
    assert coder["cwd"] == env["WTMESH_WORKTREE"]
    # The worktree lives outside the user's working tree and every .git directory, where
    # the run's directory says.
    worktree = Path(env["WTMESH_WORKTREE"])
    assert worktree.is_relative_to(run_worktrees(repo, summary["run_id"]))
    assert not worktree.is_relative_to(repo) and ".git" not in worktree.parts
    unit_json = json.loads(Path(env["WTMESH_UNIT_JSON"]).read_text())
    assert unit_json["id"] == "u1" and unit_json["objective"] == "o"
    assert unit_json["unit_scope"] == ["**"] and unit_json["test_first"] is False
    assert "WTMESH_DIFF" not in env
    assert coder["stdin"] == ""  # stdin is closed: reads give end of file at once
    assert "GIT_DIR" not in env and "GIT_INDEX_FILE" not in env
    assert fixer["env"]["WTMESH_LANE"] == "fixer"
    diff = Path(fixer["env"]["WTMESH_DIFF"]).read_text()
    assert "+++ b/x.txt" in diff and "+1" in diff


def test_extra_lane_env_is_passed(repo: Path, write_plan: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    plan = write_plan({"lanes": {"coder": {
        "command": f"printf %s \"$EXTRA_VAR\" > {out}", "env": {"EXTRA_VAR": "yes"}}},
        "units": [{"id": "u1", "objective": "o"}], "sandbox_writable": [str(tmp_path)]})
    run_json(repo, plan)
    assert out.read_text() == "yes"


def test_lane_output_goes_to_log_files(repo: Path, write_plan: Any) -> None:
    plan = write_plan(one_unit("echo to-stdout; echo to-stderr >&2; echo x > f.txt"))
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "to-stdout" not in res.stdout and "to-stderr" not in res.stderr
    unit_dir = next((state_dir(repo) / "runs").iterdir()) / "units" / "u1"
    assert (unit_dir / "coder-1.stdout.log").read_text() == "to-stdout\n"
    assert (unit_dir / "coder-1.stderr.log").read_text() == "to-stderr\n"


HOSTILE = "$(touch {marker}) `touch {marker}` \"q\" 'single' ; touch {marker} \\ $HOME"


@pytest.mark.parametrize("template", [
    "printf %s {objective} > out.txt",
    "printf %s \"{objective}\" > out.txt",
    "printf %s '{objective}' > out.txt",
])
def test_hostile_objective_reaches_lane_as_text(repo: Path, write_plan: Any, tmp_path: Path,
                                                template: str) -> None:
    marker = tmp_path / "owned"
    objective = HOSTILE.format(marker=marker)
    # The marker's directory is writable: were the objective run as code, it would show.
    plan = write_plan({"lanes": {"coder": {"command": template}},
                       "units": [{"id": "u1", "objective": objective}],
                       "sandbox_writable": [str(tmp_path)]})
    summary = run_json(repo, plan)
    assert not marker.exists()
    assert unit_of(summary)["status"] == "integrated"
    assert (repo / "out.txt").read_text() == objective


def test_argv_commands_get_raw_placeholder_values(repo: Path, write_plan: Any,
                                                  tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    plan = write_plan(one_unit(lane("act.py", f"record:{record}", "write:{id}.txt={objective}")),
                      "plan.json")
    plan_data = json.loads(plan.read_text())
    plan_data["units"][0]["objective"] = "it's $(x)"
    plan_data["sandbox_writable"] = [str(tmp_path)]
    plan.write_text(json.dumps(plan_data))
    run_json(repo, plan)
    assert (repo / "u1.txt").read_text() == "it's $(x)"


def test_render_leaves_foreign_braces_alone() -> None:
    values = {"id": "u", "objective": "o", "plan_dir": "/p", "repo": "/r", "worktree": "/w",
              "run_id": "r"}
    assert render("echo ${HOME} {unknown} {id}", values) == "echo ${HOME} {unknown} u"
    assert render(("a{id}", "{objective}"), values) == ("au", "o")


@pytest.mark.parametrize(("result", "status", "code"), [
    ("not json", "rejected", "invalid_output_schema"),
    ('{"id": "other", "decision": "accept"}', "rejected", "invalid_output_schema"),
    ('{"id": "u1", "decision": "maybe"}', "rejected", "invalid_output_schema"),
    ('{"id": "u1", "decision": "reject", "failure_code": "bogus"}', "rejected",
     "invalid_output_schema"),
    ('{"id": "u1", "decision": "accept", "failure_code": "proof_missing"}', "rejected",
     "invalid_output_schema"),
    ('{"id": "u1", "decision": "accept", "proof_status": "great"}', "rejected",
     "invalid_output_schema"),
    ('["accept"]', "rejected", "invalid_output_schema"),
    ('{"id": "u1", "decision": "reject", "failure_code": "requires_clarification"}',
     "rejected", "requires_clarification"),
    ('{"id": "u1", "decision": "reject"}', "rejected", None),
    ('{"id": "u1", "decision": "no_diff"}', "no_diff", None),
    ('{"id": "u1", "decision": "accept", "proof_status": "pass", "notes": "fine"}',
     "integrated", None),
])
def test_result_contract(repo: Path, write_plan: Any, result: str, status: str,
                         code: str | None) -> None:
    plan = write_plan(one_unit(lane("act.py", "write:f.txt=x\\n", f"result:{result}")))
    unit = unit_of(run_json(repo, plan))
    assert (unit["status"], unit["failure_code"]) == (status, code)
    landed = (repo / "f.txt").exists()
    assert landed == (status == "integrated")


def test_no_result_and_nonzero_exit_is_lane_failed(repo: Path, write_plan: Any) -> None:
    plan = write_plan(one_unit(lane("act.py", "write:f.txt=x\\n", "exit:3"), ))
    unit = unit_of(run_json(repo, plan))
    assert (unit["status"], unit["failure_code"]) == ("rejected", "lane_failed")
    # lane_failed is retried (retries default 1) before giving up.
    assert unit["attempts"] == 2


# Relative paths, which the preflight lets through (the worktree could make them):
# a program certainly missing is refused before the run (tests/test_preflight.py).
@pytest.mark.parametrize("command", [
    ["./nonexistent/agent-cli", "--task"],
    "./definitely-not-a-command-wtmesh --flag",
])
def test_command_that_cannot_start_is_tooling_unavailable(repo: Path, write_plan: Any,
                                                          command: Any) -> None:
    unit = unit_of(run_json(repo, write_plan(one_unit(command))))
    assert (unit["status"], unit["failure_code"]) == ("failed", "tooling_unavailable")


def test_timeout_kills_the_whole_group_then_retries(repo: Path, write_plan: Any,
                                                    tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The lane leaves a background grandchild, then hangs.
    command = f"sleep 60 & echo $! >> {pids}; sleep 60"
    plan = write_plan({"lanes": {"coder": {"command": command, "timeout_s": 0.5,
                                           "retries": 1}},
                       "units": [{"id": "u1", "objective": "o"}]})
    started = time.monotonic()
    # Unsandboxed: $! is then a pid of this machine's (test_sandbox tries it confined).
    unit = unit_of(run_json(repo, plan, "--sandbox", "none"))
    assert time.monotonic() - started < 30
    assert (unit["status"], unit["failure_code"]) == ("failed", "timeout_retry_exhausted")
    assert unit["attempts"] == 2
    for pid in pids.read_text().split():
        assert not alive(int(pid)), f"background process {pid} survived its lane"


def test_retry_starts_from_a_clean_worktree(repo: Path, write_plan: Any) -> None:
    """Attempt 1 writes a stray file and hangs; attempt 2 must not see that file."""
    plan = write_plan({"lanes": {"coder": {"command": lane(
        "act.py", "attempt=1:write:stray.txt=junk", "attempt=1:sleep:30",
        "write:good.txt=ok\\n"), "timeout_s": 1, "retries": 2}},
        "units": [{"id": "u1", "objective": "o"}]})
    unit = unit_of(run_json(repo, plan))
    assert unit["status"] == "integrated"
    assert unit["attempts"] == 2
    assert unit["files"] == ["good.txt"]
    assert not (repo / "stray.txt").exists()


def test_fixer_runs_only_after_an_accepting_coder_with_changes(repo: Path, write_plan: Any,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "fixer-ran"
    fixer = {"command": lane("act.py", f"write:{marker}=1")}
    plan = write_plan({"lanes": {"fixer": fixer}, "sandbox_writable": [str(tmp_path)],
                       "units": [
        {"id": "rejects", "objective": "o", "lanes": {"coder": {"command": lane(
            "act.py", "write:a.txt=1", 'result:{"decision": "reject"}')}}},
        {"id": "nothing", "objective": "o", "lanes": {"coder": {"command": lane("act.py")}}},
    ]})
    summary = run_json(repo, plan)
    assert unit_of(summary, "rejects")["status"] == "rejected"
    assert unit_of(summary, "nothing")["status"] == "no_diff"
    assert not marker.exists()


def test_fixer_reject_is_final(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"lanes": {
        "coder": {"command": lane("act.py", "write:a.txt=1\\n")},
        "fixer": {"command": lane("act.py", 'result:{"decision": "reject", '
                                            '"failure_code": "safety_regression_risk"}')}},
        "units": [{"id": "u1", "objective": "o"}]})
    unit = unit_of(run_json(repo, plan))
    assert (unit["status"], unit["failure_code"]) == ("rejected", "safety_regression_risk")
    assert not (repo / "a.txt").exists()


def test_unified_diff_patch_in_result_is_applied(repo: Path, write_plan: Any,
                                                 tmp_path: Path) -> None:
    patch = ("diff --git a/calc/ops.py b/calc/ops.py\n--- a/calc/ops.py\n+++ b/calc/ops.py\n"
             "@@ -1,3 +1,3 @@\n-\"\"\"Arithmetic on two numbers.\"\"\"\n"
             "+\"\"\"Arithmetic on two numbers, patched.\"\"\"\n \n \n")
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"id": "u1", "decision": "accept", "patch": patch}))
    unit = unit_of(run_json(repo, write_plan(one_unit(lane("act.py", f"resultfile:{result}")))))
    assert unit["status"] == "integrated", unit
    assert "patched" in (repo / "calc/ops.py").read_text()


def test_apply_patch_format_in_result_is_applied(repo: Path, write_plan: Any,
                                                 tmp_path: Path) -> None:
    patch = ("*** Begin Patch\n*** Add File: notes/new.md\n+hello\n"
             "*** Update File: calc/ops.py\n@@\n-\"\"\"Arithmetic on two numbers.\"\"\"\n"
             "+\"\"\"Arithmetic, via apply_patch.\"\"\"\n*** End Patch\n")
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"id": "u1", "decision": "accept", "patch": patch}))
    unit = unit_of(run_json(repo, write_plan(one_unit(lane("act.py", f"resultfile:{result}")))))
    assert unit["status"] == "integrated", unit
    assert (repo / "notes/new.md").read_text() == "hello\n"
    assert "via apply_patch" in (repo / "calc/ops.py").read_text()


@pytest.mark.parametrize("patch", [
    "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n",
    "*** Begin Patch\n*** Update File: calc/ops.py\n@@\n-no such line\n+x\n*** End Patch\n",
])
def test_patch_that_does_not_apply_is_invalid_output(repo: Path, write_plan: Any,
                                                      tmp_path: Path, patch: str) -> None:
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"id": "u1", "decision": "accept", "patch": patch}))
    unit = unit_of(run_json(repo, write_plan(one_unit(lane("act.py", f"resultfile:{result}")))))
    assert (unit["status"], unit["failure_code"]) == ("rejected", "invalid_output_schema")


def test_setup_copies_ignored_files_and_runs_first(repo: Path, write_plan: Any) -> None:
    (repo / ".env").write_text("SECRET=1\n")  # ignored by the fixture's .gitignore
    plan = write_plan({
        "setup": {"command": "mkdir build && cp .env build/seen",
                  "copy_ignored": [".env", "missing.txt"]},
        "lanes": {"coder": {"command": "cat build/seen > seen.txt"}},
        "units": [{"id": "u1", "objective": "o"}]})
    unit = unit_of(run_json(repo, plan))
    assert unit["status"] == "integrated"
    assert (repo / "seen.txt").read_text() == "SECRET=1\n"
    # Ignored files copied in are not part of the change.
    assert unit["files"] == ["seen.txt"]


def test_setup_failure_is_tooling_unavailable(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"setup": {"command": "exit 9"},
                       "lanes": {"coder": {"command": "echo x > a.txt"}},
                       "units": [{"id": "u1", "objective": "o"}]})
    unit = unit_of(run_json(repo, plan))
    assert (unit["status"], unit["failure_code"]) == ("failed", "tooling_unavailable")


def test_copy_ignored_refuses_a_tracked_file(repo: Path, write_plan: Any) -> None:
    (repo / "README.md").write_text("user's uncommitted edit\n")
    git(repo, "stash", "-q")  # keep the target clean; the file stays tracked
    plan = write_plan({"setup": {"copy_ignored": ["README.md"]},
                       "lanes": {"coder": {"command": "echo x > a.txt"}},
                       "units": [{"id": "u1", "objective": "o"}]})
    unit = unit_of(run_json(repo, plan))
    assert (unit["status"], unit["failure_code"]) == ("failed", "tooling_unavailable")


def test_lane_python_sees_its_worktree_not_the_users(repo: Path, write_plan: Any,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "toplevel.txt"
    script = ("import subprocess; "
              f"open({str(out)!r}, 'w').write(subprocess.check_output("
              "['git', 'rev-parse', '--show-toplevel'], text=True))")
    plan = write_plan({**one_unit([PY, "-c", script]), "sandbox_writable": [str(tmp_path)]})
    summary = run_json(repo, plan)
    toplevel = Path(out.read_text().strip())
    assert toplevel != repo and toplevel.is_relative_to(run_worktrees(repo, summary["run_id"]))
