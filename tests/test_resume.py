"""Crash safety (SPEC 5): kill wtmesh anywhere, resume, and get the uninterrupted result."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import alive, git, hears_ctrl_c, lane, make_repo, no_worktrees_left, wtmesh

from worktree_mesh import faults

KILLED = -signal.SIGKILL


def crash_plan(mode: str) -> dict[str, Any]:
    """Four units: plain, with a fixer, a dependant, and one whose proof fails; the proof
    checks something real so a wrong tree would be caught."""
    return {
        "delivery_mode": mode,
        "max_active": 2,
        "proof_command": "test ! -e broken.txt",
        "lanes": {"coder": {"command": lane("act.py", "write:{id}.txt={id}\\n")}},
        "units": [
            {"id": "a", "objective": "A", "unit_scope": "a.txt"},
            {"id": "b", "objective": "B", "unit_scope": ["b.txt", "b2.txt"],
             "lanes": {"fixer": {"command": lane("act.py", "write:b2.txt=fixed\\n")}}},
            {"id": "c", "objective": "C", "unit_scope": "c.txt", "depends_on": ["a"],
             "lanes": {"coder": {"command": lane("act.py", "require:a.txt",
                                                 "write:c.txt=c\\n")}}},
            {"id": "d", "objective": "D", "unit_scope": ["d.txt", "broken.txt"],
             "lanes": {"coder": {"command": lane("act.py", "write:broken.txt=x")}}},
        ],
    }


EXPECTED = {"a": "integrated", "b": "integrated", "c": "integrated", "d": "failed"}


@pytest.fixture(scope="module")
def template(hermetic_module: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("template") / "repo")


def fresh(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


def run_to_end(repo: Path, plan: Path, fault: str | None, *args: str
               ) -> tuple[int, list[int]]:
    """Run (with the fault), then resume until the run finishes. Returns the final exit
    code and every exit code seen on the way."""
    env = {"WTMESH_FAULT": fault} if fault else {}
    first = wtmesh("run", plan, *args, cwd=repo, env=env)
    assert "Traceback" not in first.stderr, first.stderr
    codes = [first.returncode]
    while codes[-1] == KILLED:
        res = wtmesh("run", plan, "--resume", cwd=repo)
        assert "Traceback" not in res.stderr, res.stderr
        codes.append(res.returncode)
        assert len(codes) < 5, codes
    return codes[-1], codes


def outcome(repo: Path, mode: str) -> dict[str, Any]:
    runs = repo / ".git/wtmesh/runs"
    (run_id,) = [p.name for p in runs.iterdir()]
    summary = json.loads((runs / run_id / "summary.json").read_text())
    ledger = [json.loads(line) for line in (runs / run_id / "ledger.jsonl").read_text()
              .splitlines()]
    finished = [r["unit"] for r in ledger if r["event"] == "unit_finished"]
    result: dict[str, Any] = {
        "states": {u["id"]: u["status"] for u in summary["units"]},
        "finished_once": sorted(finished) == sorted(EXPECTED),
        "seqs": [r["seq"] for r in ledger] == list(range(1, len(ledger) + 1)),
    }
    if mode == "commit_first":
        result["tree"] = git(repo, "rev-parse", "main^{tree}")
        subjects = git(repo, "log", "--format=%s", "main").splitlines()
        result["subjects"] = subjects
        result["clean"] = git(repo, "status", "--porcelain") == ""
        result["on_head"] = git(repo, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    else:
        patch_dir = Path(summary["patch_dir"])
        names = (patch_dir / "series").read_text().splitlines()
        result["series"] = names
        result["patches"] = [_normalised((patch_dir / n).read_text(), run_id) for n in names]
        result["main_untouched"] = git(repo, "log", "--format=%s", "main") == "initial"
    result["worktrees_gone"] = no_worktrees_left(repo)
    return result


def _normalised(patch: str, run_id: str) -> str:
    """The first line of a format-patch names the commit and the trailer names the run:
    both differ between runs. Everything else must match."""
    return patch.split("\n", 1)[1].replace(run_id, "RUN-ID")


@pytest.fixture(scope="module")
def reference(hermetic_module: None, template: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, dict[str, Any]]:
    out = {}
    for mode in ("commit_first", "patch_first"):
        base = tmp_path_factory.mktemp(f"ref-{mode}")
        repo = fresh(template, base / "repo")
        plan = base / "plan.json"
        plan.write_text(json.dumps(crash_plan(mode)))
        code, _ = run_to_end(repo, plan, None)
        assert code == 1
        out[mode] = outcome(repo, mode)
        assert out[mode]["states"] == EXPECTED
        ledger = next((repo / ".git/wtmesh/runs").iterdir()) / "ledger.jsonl"
        out[mode]["events"] = len(ledger.read_text().splitlines())
    return out


def check_against_reference(repo: Path, mode: str, reference: dict[str, Any]) -> None:
    got = outcome(repo, mode)
    want = {k: v for k, v in reference.items() if k != "events"}
    assert got == want


# "strand" is only reached when the user's worktree cannot follow: tests/test_bring_along.py.
PATCH_FIRST_ONLY = ("patch",)
POINTS_BY_MODE = {
    "commit_first": [p for p in faults.POINTS if p not in (*PATCH_FIRST_ONLY, "strand")],
    "patch_first": [p for p in faults.POINTS if p not in ("bring-along", "strand")],
}


@pytest.mark.parametrize(("mode", "point"), [(m, p) for m, ps in POINTS_BY_MODE.items()
                                             for p in ps])
def test_kill_at_each_named_point_then_resume(template: Path, tmp_path: Path,
                                              reference: dict[str, Any], mode: str,
                                              point: str) -> None:
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan(mode)))
    code, codes = run_to_end(repo, plan, f"at:{point}")
    assert codes[0] == KILLED, f"the fault point {point} was never reached"
    assert code == 1
    check_against_reference(repo, mode, reference[mode])


@pytest.mark.parametrize("point", POINTS_BY_MODE["commit_first"])
def test_kill_in_a_batched_run_then_resume(template: Path, tmp_path: Path,
                                           reference: dict[str, Any], point: str) -> None:
    """--batch auto: killed anywhere, resumed, the same tree and states as one at a time
    (commit messages carry batch trailers, so subjects are compared, not hashes)."""
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan("commit_first")))
    code, codes = run_to_end(repo, plan, f"at:{point}", "--batch", "auto")
    assert codes[0] == KILLED, f"the fault point {point} was never reached"
    assert code == 1
    check_against_reference(repo, "commit_first", reference["commit_first"])


@pytest.mark.parametrize("mode", ["commit_first", "patch_first"])
def test_kill_after_every_ledger_event_then_resume(template: Path, tmp_path: Path,
                                                   reference: dict[str, Any],
                                                   mode: str) -> None:
    total = reference[mode]["events"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan(mode)))
    for n in range(1, total + 1):
        repo = fresh(template, tmp_path / f"repo-{n}")
        code, codes = run_to_end(repo, plan, f"after-event:{n}")
        assert code == 1, (n, codes)
        try:
            check_against_reference(repo, mode, reference[mode])
        except AssertionError as exc:
            raise AssertionError(f"killed after event {n}: {exc}") from None
        shutil.rmtree(repo)


def test_lane_cut_off_runs_again_and_its_leftover_process_is_stopped(
        template: Path, tmp_path: Path) -> None:
    repo = fresh(template, tmp_path / "repo")
    pid_file = tmp_path / "lane.pid"
    plan = tmp_path / "plan.json"
    # Attempt 1 records its pid and hangs; the run is killed while it hangs.
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
        "command": f"if [ $WTMESH_ATTEMPT = 1 ]; then echo $$ > {pid_file}; sleep 60; fi; "
                   "echo done > u1.txt"}}}]}))
    # Unsandboxed (and so resumed): a sandboxed lane dies with its run (test_sandbox).
    first = wtmesh("run", plan, "--sandbox", "none", cwd=repo, env={"WTMESH_FAULT": "at:lane"})
    assert first.returncode == KILLED
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    lane_pid = int(pid_file.read_text())
    assert alive(lane_pid)  # the lane outlived the killed run
    started = time.monotonic()
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 30
    assert not alive(lane_pid), "the killed run's lane is still running"
    (unit,) = res.json()["units"]
    assert unit["status"] == "integrated" and unit["attempts"] == 2
    assert (repo / "u1.txt").read_text() == "done\n"


def test_finished_lanes_are_not_rerun(template: Path, tmp_path: Path) -> None:
    repo = fresh(template, tmp_path / "repo")
    calls = tmp_path / "calls"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"proof_command": "true", "sandbox_writable": [str(tmp_path)],
                                "units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
                                    "command": f"echo x >> {calls}; echo y > u1.txt"}}}]}))
    assert wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:apply"}).returncode == KILLED
    assert wtmesh("run", plan, "--resume", cwd=repo).returncode == 0
    assert calls.read_text() == "x\n"


def test_torn_last_ledger_line_is_tolerated(template: Path, tmp_path: Path) -> None:
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan("commit_first")))
    assert wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:proof"}).returncode == KILLED
    ledger = next((repo / ".git/wtmesh/runs").iterdir()) / "ledger.jsonl"
    with open(ledger, "ab") as fh:
        fh.write(b'{"seq": 999, "event": "lane_fin')  # a write cut off by the crash
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    assert {u["id"]: u["status"] for u in res.json()["units"]} == EXPECTED
    lines = ledger.read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_resume_of_a_finished_run_says_so_and_keeps_its_exit_code(template: Path,
                                                                   tmp_path: Path) -> None:
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan("commit_first")))
    assert wtmesh("run", plan, cwd=repo).returncode == 1
    head = git(repo, "rev-parse", "main")
    res = wtmesh("run", plan, "--resume", cwd=repo)
    assert res.returncode == 1
    assert "already finished" in res.stderr
    assert git(repo, "rev-parse", "main") == head


def test_resume_without_a_run_is_a_usage_error(template: Path, tmp_path: Path) -> None:
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(crash_plan("commit_first")))
    res = wtmesh("run", plan, "--resume", cwd=repo)
    assert res.returncode == 2
    assert res.stderr.startswith("wtmesh: error: no run of")
    res = wtmesh("run", plan, "--resume", "nope", cwd=repo)
    assert res.returncode == 2 and "no run 'nope'" in res.stderr


def test_interrupt_stops_lanes_and_resumes(template: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    repo = fresh(template, tmp_path / "repo")
    plan = tmp_path / "plan.json"
    marker = tmp_path / "started"
    # The marker is in /tmp: a sandboxed lane (with a /tmp of its own) writes it here only
    # through sandbox_writable.
    plan.write_text(json.dumps({"sandbox_writable": [str(tmp_path)], "units": [
        {"id": "slow", "objective": "o", "lanes": {"coder": {
            "command": f"touch {marker}; if [ $WTMESH_ATTEMPT = 1 ]; then sleep 60; fi; "
                       "echo s > slow.txt"}}}]}))
    proc = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan)],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=hears_ctrl_c)
    deadline = time.monotonic() + 120  # only keeps a broken run from hanging the suite
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the lane never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"--resume" in err and b"Traceback" not in err
    ledger = next((repo / ".git/wtmesh/runs").iterdir()) / "ledger.jsonl"
    assert '"run_interrupted"' in ledger.read_text()
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.json()["units"][0]["attempts"] == 2
    assert no_worktrees_left(repo)
