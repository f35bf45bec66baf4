"""The sandbox (SPEC 10), tried as a hostile lane would: with bubblewrap a lane, its setup
and a proof see the file system read-only but for their own paths, a private /tmp, no
other worktree and no other unit's run files, and nothing they start outlives them. With
``--sandbox none`` the same lanes get through, so the option does what it says.

Each lane is a shell script that makes its attempts and prints one line per attempt
(``NAME: done`` or ``NAME: refused``) to its log; the assertions check the host as well.
Lanes that must meet wait on files in a directory the plan makes writable
(``sandbox_writable``), never on a clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, alive, git, lane, one_error_line, repo_snapshot, state_dir, wtmesh
from test_live import Terminal

from worktree_mesh.sandbox import Confinement, bwrap_argv, probe

WHY_NOT = probe()
needs_bwrap = pytest.mark.skipif(WHY_NOT is not None,
                                 reason=f"bubblewrap cannot run here: {WHY_NOT}")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]

# Make each attempt in a subshell, quietly, and say how it went.
TRY = ('try() { name=$1; shift; if ( eval "$@" ) >/dev/null 2>&1; then echo "$name: done"; '
       'else echo "$name: refused"; fi; }\n')
WAIT = 'wait_for() { while [ ! -e "$1" ]; do sleep 0.05; done; }\n'


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    """A lane or proof command: ``sh`` running ``body`` (with ``try`` and ``wait_for``)."""
    path = tmp_path / f"{name}.sh"
    path.write_text(TRY + WAIT + body)
    return ["sh", str(path)]


def run(repo: Path, plan: dict[str, Any], tmp_path: Path, *args: str,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    res = wtmesh("run", path, "--json", *args, cwd=repo, env=env)
    assert "Traceback" not in res.stderr
    assert res.returncode in (0, 1), (res.returncode, res.stderr)
    summary: dict[str, Any] = res.json()
    return summary


def unit(summary: dict[str, Any], unit_id: str = "u1") -> dict[str, Any]:
    return next(u for u in summary["units"] if u["id"] == unit_id)


def said(repo: Path, summary: dict[str, Any], unit_id: str = "u1",
         log: str = "coder-1.stdout.log") -> dict[str, str]:
    """What a lane (or proof) said of its attempts: name -> done | refused."""
    text = (state_dir(repo) / "runs" / summary["run_id"] / "units" / unit_id / log).read_text()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def expected(mode: str, *names: str) -> dict[str, str]:
    """Sandboxed every attempt is refused; unsandboxed every one gets through."""
    return {name: "refused" if mode == "bwrap" else "done" for name in names}


@pytest.fixture
def meet(tmp_path: Path) -> Path:
    """Where lanes and proofs leave each other signals (writable to all of them)."""
    path = tmp_path / "meet"
    path.mkdir()
    return path


@pytest.fixture
def marker() -> Iterator[str]:
    """A name unique to the test, for files in the host's /tmp and for processes; what
    an unconfined lane leaves under it is cleaned up."""
    name = f"wtmesh-sandbox-test-{uuid.uuid4().hex}"
    yield name
    for path in Path("/tmp").glob(f"{name}*"):
        path.unlink()
    for pid in processes_named(name):
        os.kill(pid, signal.SIGKILL)


def processes_named(name: str) -> list[int]:
    """Live processes whose command line holds ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if name.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


# -- the user's repository ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_lane_cannot_write_the_users_tree_or_git_dir_by_absolute_path(
        repo: Path, tmp_path: Path, mode: str) -> None:
    ops = (repo / "calc" / "ops.py").read_bytes()
    config = (repo / ".git" / "config").read_bytes()
    coder = script(tmp_path, "coder", """
try tree 'echo evil > "$WTMESH_REPO/evil.txt"'
try tracked 'echo "raise SystemExit" >> "$WTMESH_REPO/calc/ops.py"'
try config 'printf "[planted]\\n\\tby = lane\\n" >> "$WTMESH_REPO/.git/config"'
try hook 'printf "#!/bin/sh\\nexit 1\\n" > "$WTMESH_REPO/.git/hooks/pre-commit"'
try branch 'git -C "$WTMESH_REPO" branch planted'
try ref 'git rev-parse HEAD > "$WTMESH_REPO/.git/refs/heads/planted2"'
try own-edit 'echo mine > lane.txt'
try git-status 'git status --porcelain'
""")
    # patch_first: wtmesh itself leaves the user's tree and branches alone.
    summary = run(repo, {"delivery_mode": "patch_first", "lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  "--sandbox", mode)
    attempts = said(repo, summary)
    assert attempts == {**expected(mode, "tree", "tracked", "config", "hook", "branch", "ref"),
                        "own-edit": "done", "git-status": "done"}
    reached = {
        "tree": (repo / "evil.txt").exists(),
        "tracked": (repo / "calc" / "ops.py").read_bytes() != ops,
        "config": (repo / ".git" / "config").read_bytes() != config,
        "hook": (repo / ".git" / "hooks" / "pre-commit").exists(),
        "branch": bool(git(repo, "branch", "--list", "planted", "planted2")),
    }
    if mode == "none":
        # Unsandboxed, the writes went through: what a lane changed in .git is found and
        # undone after it, and its unit fails; the working tree keeps what it wrote.
        assert unit(summary)["failure_code"] == "safety_regression_risk", unit(summary)
        assert reached == {"tree": True, "tracked": True, "config": False, "hook": False,
                           "branch": False}
        return
    # The lane still worked: its edit is the unit's change.
    assert unit(summary)["status"] == "integrated", unit(summary)
    assert unit(summary)["files"] == ["lane.txt"]
    assert reached == dict.fromkeys(reached, False)


# -- other units, the integration worktree, the state directory ------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_lane_cannot_reach_another_units_worktree_or_run_files(
        repo: Path, tmp_path: Path, meet: Path, mode: str) -> None:
    """u1's lane waits until u2's lane is running (u2 waits for u1 in turn), then goes
    for u2's worktree, u2's result file, the run's ledger and the state directory."""
    victim = script(tmp_path, "victim", """
printf %s "$WTMESH_RESULT_JSON" > "$1/u2.result"
printf %s "$WTMESH_WORKTREE" > "$1/u2.worktree.tmp" && mv "$1/u2.worktree.tmp" "$1/u2.worktree"
echo mine > u2.txt
wait_for "$1/u1.done"
""")
    intruder = script(tmp_path, "intruder", """
wait_for "$1/u2.worktree"
W2=$(cat "$1/u2.worktree"); R2=$(cat "$1/u2.result")
try see-worktree 'ls "$W2" | grep -q calc'
try write-worktree 'echo "from u1" > "$W2/stolen.txt"'
try forge-result 'echo "{\\"decision\\": \\"reject\\", \\"notes\\": \\"forged by u1\\"}" > "$R2"'
try list-run-files 'ls "$(dirname "$R2")" | grep -q unit.json'
try see-worktrees 'ls "$(dirname "$W2")" | grep -q "$(basename "$W2")"'
try read-ledger 'grep -q run_started "$WTMESH_REPO/.git/wtmesh/runs/$WTMESH_RUN_ID/ledger.jsonl"'
try see-state 'ls "$WTMESH_REPO/.git/wtmesh" | grep -q integrator.lock'
echo mine > u1.txt
touch "$1/u1.done"
""")
    summary = run(repo, {
        "max_active": 2, "sandbox_writable": [str(meet)],
        "units": [{"id": "u1", "objective": "o", "unit_scope": ["u1.txt"],
                   "lanes": {"coder": {"command": [*intruder, str(meet)], "timeout_s": 120}}},
                  {"id": "u2", "objective": "o", "unit_scope": ["u2.txt"],
                   "lanes": {"coder": {"command": [*victim, str(meet)], "timeout_s": 120}}}]},
        tmp_path, "--sandbox", mode)
    assert said(repo, summary) == expected(
        mode, "see-worktree", "write-worktree", "forge-result", "list-run-files",
        "see-worktrees", "read-ledger", "see-state")
    assert unit(summary)["status"] == "integrated"
    if mode == "bwrap":
        assert unit(summary, "u2")["status"] == "integrated"
        assert unit(summary, "u2")["files"] == ["u2.txt"]  # nothing of u1's in it
    else:  # what the sandbox prevents: u1 decided u2's fate
        assert unit(summary, "u2")["status"] == "rejected"
        ledger = state_dir(repo) / "runs" / summary["run_id"] / "ledger.jsonl"
        finished = [json.loads(line) for line in ledger.read_text().splitlines()
                    if '"unit_finished"' in line]
        assert [e["notes"] for e in finished if e["unit"] == "u2"] == ["forged by u1"]


@pytest.mark.parametrize("mode", MODES)
def test_a_lane_cannot_touch_the_tree_a_proof_runs_on(
        repo: Path, tmp_path: Path, meet: Path, mode: str) -> None:
    """u1 breaks the check its proof runs; while that proof runs, u2's lane swaps the
    check in the integration worktree for one that passes, and puts it back after."""
    (repo / "check.sh").write_text("test ! -e broken.txt\n")
    git(repo, "add", "check.sh")
    git(repo, "commit", "-q", "-m", "a check")
    proof = script(tmp_path, "proof", """
[ -e broken.txt ] || exit 0  # the base's own proof
pwd > "$1/proof.pwd.tmp" && mv "$1/proof.pwd.tmp" "$1/proof.pwd"
wait_for "$1/lane.swapped"
sh check.sh; verdict=$?
touch "$1/proof.checked"
wait_for "$1/lane.restored"
exit $verdict
""")
    swapper = script(tmp_path, "swapper", """
M=$1
wait_for "$M/proof.pwd"
I=$(cat "$M/proof.pwd")
try swap 'cp "$I/check.sh" "$M/check.orig" && echo "exit 0" > "$I/check.sh"'
touch "$M/lane.swapped"
wait_for "$M/proof.checked"
cp "$M/check.orig" "$I/check.sh" 2>/dev/null
touch "$M/lane.restored"
echo mine > u2.txt
""")
    summary = run(repo, {
        "max_active": 2, "sandbox_writable": [str(meet)],
        "units": [{"id": "u1", "objective": "break the check", "unit_scope": ["broken.txt"],
                   "proof_command": [*proof, str(meet)],
                   "lanes": {"coder": {"command": "echo > broken.txt"}}},
                  {"id": "u2", "objective": "o", "unit_scope": ["u2.txt"],
                   "proof_command": "true",
                   "lanes": {"coder": {"command": [*swapper, str(meet)],
                                       "timeout_s": 120}}}]},
        tmp_path, "--sandbox", mode)
    assert said(repo, summary, "u2") == expected(mode, "swap")
    if mode == "bwrap":
        assert (unit(summary)["status"], unit(summary)["failure_code"]) == (
            "failed", "proof_failed")
        assert not (repo / "broken.txt").exists()
    else:  # what the sandbox prevents: the broken unit landed
        assert unit(summary)["status"] == "integrated"
    assert unit(summary, "u2")["status"] == "integrated"


@pytest.mark.parametrize("mode", MODES)
def test_a_proof_cannot_write_outside_the_integration_worktree(
        repo: Path, tmp_path: Path, marker: str, mode: str) -> None:
    config = (repo / ".git" / "config").read_bytes()
    proof = script(tmp_path, "proof", f"""
[ -e a.txt ] || exit 0  # the base's own proof: it runs beside the lane
try tree 'echo evil > "$WTMESH_REPO/proof-was-here"'
try config 'printf "[alias]\\n\\tx = !true\\n" >> "$WTMESH_REPO/.git/config"'
try run-files 'echo forged > "$WTMESH_REPO/.git/wtmesh/runs/$WTMESH_RUN_ID/units/u1/forged"'
try host-tmp 'echo evil > /tmp/{marker}-proof'
exit 0
""")
    summary = run(repo, {"proof_command": proof, "lanes": {"coder": {"command": "echo > a.txt"}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  "--sandbox", mode)
    # Its own /tmp takes the write; the host's never sees it.
    assert said(repo, summary, log="proof.log") == {
        **expected(mode, "tree", "config", "run-files"), "host-tmp": "done"}
    assert unit(summary)["status"] == "integrated"
    unit_dir = state_dir(repo) / "runs" / summary["run_id"] / "units" / "u1"
    reached = {"tree": (repo / "proof-was-here").exists(),
               "config": (repo / ".git" / "config").read_bytes() != config,
               "run-files": (unit_dir / "forged").exists(),
               "host-tmp": Path(f"/tmp/{marker}-proof").exists()}
    if mode == "none":  # all went through; the repository check at the end undid .git's
        assert reached == {"tree": True, "config": False, "run-files": True, "host-tmp": True}
        return
    assert reached == dict.fromkeys(reached, False)


@pytest.mark.parametrize("mode", MODES)
def test_setup_is_confined_like_its_lanes(repo: Path, tmp_path: Path, mode: str) -> None:
    setup = script(tmp_path, "setup", 'try setup-tree \'echo x > "$WTMESH_REPO/setup-was-here"\'\n')
    summary = run(repo, {"setup": {"command": setup},
                         "lanes": {"coder": {"command": "echo > a.txt"}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  "--sandbox", mode)
    assert said(repo, summary, log="setup.log") == expected(mode, "setup-tree")
    assert (repo / "setup-was-here").exists() == (mode == "none")
    assert unit(summary)["status"] == "integrated"


# -- /tmp and processes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_lanes_tmp_is_its_own(repo: Path, tmp_path: Path, marker: str, mode: str) -> None:
    Path(f"/tmp/{marker}-host").write_text("the host's\n")
    coder = script(tmp_path, "coder", f"""
try see-host-tmp 'test -e /tmp/{marker}-host'
try tmp-write 'echo scratch > /tmp/{marker}-lane && test -s "${{TMPDIR:-/tmp}}/{marker}-lane"'
echo mine > lane.txt
""")
    summary = run(repo, {"lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  "--sandbox", mode)
    seen = "refused" if mode == "bwrap" else "done"
    assert said(repo, summary) == {"see-host-tmp": seen, "tmp-write": "done"}
    assert Path(f"/tmp/{marker}-lane").exists() == (mode == "none")
    assert unit(summary)["status"] == "integrated"


@pytest.mark.parametrize("mode", MODES)
def test_a_setsid_daemon_ends_with_its_lane(repo: Path, tmp_path: Path, marker: str,
                                            mode: str) -> None:
    """The daemon leaves the lane's process group and session: the PID namespace (its
    init gone when the lane's first process ends) takes it down, and unsandboxed the
    reaper does."""
    coder = script(tmp_path, "coder", f"""
setsid sh -c 'while :; do sleep 1; done' {marker} </dev/null >/dev/null 2>&1 &
echo mine > lane.txt
""")
    summary = run(repo, {"lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o", "unit_scope": ["lane.txt"]}]},
                  tmp_path, "--sandbox", mode)
    assert unit(summary)["status"] == "integrated"
    # wtmesh has exited: whatever of the lane still runs now outlived it.
    assert processes_named(marker) == []


@needs_bwrap
def test_a_timed_out_sandboxed_lane_leaves_nothing_running(repo: Path, tmp_path: Path,
                                                           marker: str) -> None:
    """Killed for its timeout, the lane takes its children with it, those in its process
    group and a ``setsid`` one alike, before wtmesh retries it."""
    coder = script(tmp_path, "coder", f"""
sh -c 'while :; do sleep 1; done' {marker}-child &
setsid sh -c 'while :; do sleep 1; done' {marker}-daemon </dev/null >/dev/null 2>&1 &
sleep 600
""")
    summary = run(repo, {"lanes": {"coder": {"command": coder, "timeout_s": 1, "retries": 1}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path)
    assert (unit(summary)["status"], unit(summary)["failure_code"]) == (
        "failed", "timeout_retry_exhausted")
    assert unit(summary)["attempts"] == 2
    assert processes_named(marker) == []


@needs_bwrap
def test_a_killed_run_takes_its_sandboxed_lanes_with_it(repo: Path, tmp_path: Path,
                                                        meet: Path, marker: str) -> None:
    """kill -9 of wtmesh: no cleanup runs, yet the lane and its daemon go (bubblewrap
    dies with its parent, the namespace with bubblewrap)."""
    coder = script(tmp_path, "coder", f"""
setsid sh -c 'while :; do sleep 1; done' {marker} </dev/null >/dev/null 2>&1 &
touch "$1/daemon-started"
sleep 600
""")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sandbox_writable": [str(meet)],
                                "lanes": {"coder": {"command": [*coder, str(meet)]}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    wtmesh_run = subprocess.Popen([PY, "-m", "worktree_mesh", "run", str(plan)], cwd=repo,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (meet / "daemon-started").exists(), "the lane never started")
        assert processes_named(marker), "the daemon is not running"
    finally:
        wtmesh_run.kill()
        wtmesh_run.wait()
    # The kernel takes the namespace down after wtmesh has gone, not before.
    wait_until(lambda: not processes_named(marker), "the lane's daemon outlived its run")


def wait_until(condition: Callable[[], bool], failure: str, within_s: float = 60) -> None:
    """Wait for ``condition`` (a state of the machine, not a time): ``failure`` if it
    never comes."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


# -- choosing the sandbox -------------------------------------------------------------


@needs_bwrap
def test_the_first_line_says_lanes_are_sandboxed_and_the_ledger_records_it(
        repo: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"lanes": {"coder": {"command": "echo > a.txt"}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith("run ") and first.endswith("; lanes sandboxed (bwrap)"), first
    # --json: stdout holds the summary only; the line goes to stderr.
    res = wtmesh("run", plan, "--json", cwd=repo)
    summary = res.json()
    assert "lanes sandboxed (bwrap)" in res.stderr.splitlines()[0]
    ledger = state_dir(repo) / "runs" / summary["run_id"] / "ledger.jsonl"
    started = json.loads(ledger.read_text().splitlines()[0])
    assert started["event"] == "run_started"
    assert started["sandbox"] == {"mode": "auto", "active": True, "reason": None}


@needs_bwrap
def test_the_live_view_says_so_too(repo: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"lanes": {"coder": {"command": lane("act.py", "sleep:1.5",
                                                                    "write:a.txt=1")}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    term = Terminal([PY, "-m", "worktree_mesh", "run", str(plan)], repo, rows=30, cols=160)
    term.pump_until("at a time; lanes sandboxed (bwrap)")
    assert term.finish() == 0


def path_without_bwrap(tmp_path: Path) -> dict[str, str]:
    """PATH holding every command of ours but bwrap."""
    bin_dir = tmp_path / "bin-without-bwrap"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name != "bwrap" and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    assert shutil.which("bwrap", path=str(bin_dir)) is None
    return {"PATH": str(bin_dir)}


@pytest.mark.parametrize("where", ["option", "plan"])
def test_bwrap_required_where_it_cannot_run_refuses_the_run(repo: Path, tmp_path: Path,
                                                            where: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**({"sandbox": "bwrap"} if where == "plan" else {}),
                                "lanes": {"coder": {"command": "echo > a.txt"}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, *(["--sandbox", "bwrap"] if where == "option" else []),
                 cwd=repo, env=path_without_bwrap(tmp_path))
    line = one_error_line(res, 3)
    assert line == ("wtmesh: error: --sandbox bwrap: bwrap not found "
                    "(apt-get install bubblewrap)")
    assert repo_snapshot(repo) == before


def test_auto_without_bwrap_runs_unsandboxed_and_says_so_once(repo: Path,
                                                              tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"lanes": {"coder": {"command": 'echo > "$WTMESH_REPO/x"'}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    res = wtmesh("run", plan, cwd=repo, env=path_without_bwrap(tmp_path))
    assert res.returncode == 0, res.stderr
    notice = "lanes NOT sandboxed: bwrap not found (apt-get install bubblewrap)"
    assert res.stdout.splitlines()[0].endswith("; " + notice), res.stdout
    assert (res.stdout + res.stderr).count("NOT sandboxed") == 1
    assert (repo / "x").exists()  # unconfined indeed


@needs_bwrap
def test_the_command_line_overrides_the_plans_sandbox(repo: Path, tmp_path: Path) -> None:
    coder = script(tmp_path, "coder", """
try tree 'echo evil > "$WTMESH_REPO/evil.txt"'
echo mine > lane.txt
""")
    plan = {"sandbox": "none", "lanes": {"coder": {"command": coder}},
            "units": [{"id": "u1", "objective": "o"}]}
    assert said(repo, run(repo, plan, tmp_path)) == {"tree": "done"}
    (repo / "evil.txt").unlink()
    assert said(repo, run(repo, plan, tmp_path, "--sandbox", "bwrap")) == {"tree": "refused"}
    assert said(repo, run(repo, {**plan, "sandbox": "bwrap"}, tmp_path)) == {
        "tree": "refused"}
    assert not (repo / "evil.txt").exists()


@needs_bwrap
def test_sandbox_writable_opens_paths_but_never_the_state_dir(repo: Path,
                                                              tmp_path: Path) -> None:
    """{plan_dir} and ~ are expanded, a missing directory is made; even with the whole
    repository writable, the state directory (inside it) stays hidden, and its git
    directory read-only: no lane plants configuration, refs or objects there."""
    config = (repo / ".git" / "config").read_bytes()
    coder = script(tmp_path, "coder", """
try plan-dir 'echo out > "$WTMESH_PLAN_DIR/out/result.txt"'
try home 'echo cfg > "$HOME/.agent/config"'
try repo 'echo note > "$WTMESH_REPO/notes.txt"'
try see-state 'ls "$WTMESH_REPO/.git/wtmesh/runs/$WTMESH_RUN_ID" | grep -q ledger'
try write-state 'echo x > "$WTMESH_REPO/.git/wtmesh/planted"'
try config 'git -C "$WTMESH_REPO" config core.fsmonitor "touch /tmp/ran"'
try branch 'git -C "$WTMESH_REPO" branch planted'
try hash-object 'echo planted | git -C "$WTMESH_REPO" hash-object -w --stdin'
try replace-git 'mv "$WTMESH_REPO/.git" "$WTMESH_REPO/.git-moved"'
echo mine > lane.txt
""")
    summary = run(repo, {"sandbox_writable": ["{plan_dir}/out", "~/.agent", "{repo}"],
                         "lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path)
    assert said(repo, summary) == {"plan-dir": "done", "home": "done", "repo": "done",
                                   **expected("bwrap", "see-state", "write-state", "config",
                                              "branch", "hash-object", "replace-git")}
    assert (tmp_path / "out" / "result.txt").read_text() == "out\n"
    assert (Path(os.environ["HOME"]) / ".agent" / "config").read_text() == "cfg\n"
    assert not (state_dir(repo) / "planted").exists()
    assert (repo / ".git" / "config").read_bytes() == config
    assert not git(repo, "branch", "--list", "planted")
    assert unit(summary)["status"] == "integrated"


@needs_bwrap
def test_a_writable_directory_around_the_repository_leaves_the_repository_read_only(
        repo: Path, tmp_path: Path) -> None:
    """A plan opens a directory the repository happens to lie in (``~`` for an agent's
    config file, the repository kept under HOME): the lane can write there, but not the
    user's working tree, which only ``{repo}`` itself, or a path inside it, opens."""
    ops = (repo / "calc" / "ops.py").read_bytes()
    coder = script(tmp_path, "coder", """
try around 'echo side > "$WTMESH_PLAN_DIR/side.txt"'
try tree 'echo evil > "$WTMESH_REPO/evil.txt"'
try tracked 'echo "raise SystemExit" >> "$WTMESH_REPO/calc/ops.py"'
try inside 'echo out > "$WTMESH_REPO/build/out.txt"'
echo mine > lane.txt
""")
    summary = run(repo, {"sandbox_writable": ["{plan_dir}", "{repo}/build"],
                         "lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path)
    assert said(repo, summary) == {"around": "done", "inside": "done",
                                   **expected("bwrap", "tree", "tracked")}
    assert (tmp_path / "side.txt").read_text() == "side\n"
    assert (repo / "calc" / "ops.py").read_bytes() == ops
    assert not (repo / "evil.txt").exists()
    assert unit(summary)["status"] == "integrated"


@needs_bwrap
@pytest.mark.parametrize("entry", [
    "{repo}/.git/wtmesh", "{repo}/.git/wtmesh/runs", "{repo}/.git", "{repo}/.git/hooks",
    "home", "home/repo"])
def test_sandbox_writable_never_opens_wtmesh_dirs_or_the_git_dir(
        repo: Path, tmp_path: Path, entry: str) -> None:
    """A plan that asks for wtmesh's own directories (the state directory, the
    worktrees' home or this repository's folder in it) or the repository's git directory
    to be writable: the run is refused before any lane runs."""
    from worktree_mesh.state import repo_key, worktrees_home

    home = worktrees_home()
    path = {"home": str(home), "home/repo": str(home / repo_key(repo / ".git"))}.get(
        entry, entry)
    before = repo_snapshot(repo)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sandbox_writable": [path],
                                "lanes": {"coder": {"command": f'echo x > "{path}/planted"'}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    line = one_error_line(wtmesh("run", plan, cwd=repo), 2)
    assert line.startswith(f"wtmesh: error: sandbox_writable: {path!r} "), line
    assert repo_snapshot(repo) == before
    assert not Path(path.replace("{repo}", str(repo)), "planted").exists()


def test_bad_sandbox_settings_are_plan_errors(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sandbox": "firejail", "sandbox_writable": ["build/", "~/ok"],
                                "lanes": {"coder": {"command": "true"}},
                                "units": [{"id": "u1", "objective": "o"}]}))
    res = wtmesh("validate", plan, cwd=tmp_path)
    assert res.returncode == 2
    assert f"{plan}: $.sandbox: 'firejail' is not one of auto, bwrap, none" in res.stderr
    assert (f"{plan}: $.sandbox_writable[0]: 'build/' must be an absolute path (or start "
            "with ~/, {repo} or {plan_dir})") in res.stderr
    assert "[1]" not in res.stderr


@needs_bwrap
def test_a_command_under_a_readable_directory_in_tmp_runs_through_its_symlink(
        tmp_path: Path) -> None:
    """A virtualenv under /tmp (a CI clone made with ``mktemp -d``): its ``bin/python`` is
    a symlink the lane's command names, inside a directory already bound read-only."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    confined = Confinement(cwd=tmp_path, writable=(), hidden=(), readable=(venv,))
    command = [str(venv / "bin" / "python"), "-c", "print('ran')"]
    done = subprocess.run(bwrap_argv(command, confined), capture_output=True, check=False)
    assert (done.returncode, done.stdout) == (0, b"ran\n"), done.stderr


# -- what a lane may try from inside --------------------------------------------------


@needs_bwrap
def test_a_lane_run_by_root_cannot_take_its_mounts_apart(repo: Path, tmp_path: Path) -> None:
    """bubblewrap started by root (a CI container) keeps every capability for the lane
    unless told otherwise: the lane could unmount what hides the state directory and
    remount the file system writable. Run as another user, the kernel refuses anyway."""
    ops = (repo / "calc" / "ops.py").read_bytes()
    coder = script(tmp_path, "coder", """
try capabilities '! grep -q "^CapEff:[[:space:]]*0*$" /proc/self/status'
S=$WTMESH_REPO/.git/wtmesh
try unhide-state 'umount -l "$S" && ls "$S" | grep -q runs'
try remount-rw 'M=$(findmnt -n -o TARGET -T "$WTMESH_REPO") && mount -o remount,bind,rw "$M" &&
  echo "raise SystemExit" >> "$WTMESH_REPO/calc/ops.py"'
echo mine > lane.txt
""")
    summary = run(repo, {"delivery_mode": "patch_first", "lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path)
    assert said(repo, summary) == expected("bwrap", "capabilities", "unhide-state",
                                           "remount-rw")
    assert (repo / "calc" / "ops.py").read_bytes() == ops
    assert unit(summary)["status"] == "integrated"


@pytest.mark.parametrize("mode", MODES)
def test_a_lane_cannot_signal_wtmesh_or_any_process_outside_its_own(
        repo: Path, tmp_path: Path, marker: str, mode: str) -> None:
    """A process of the user's (here a loop the test starts) and wtmesh itself: the lane
    looks for them among the processes it can see and tries to kill the one it is told of."""
    bystander = subprocess.Popen(["sh", "-c", "while :; do sleep 1; done", marker],
                                 stdin=subprocess.DEVNULL)
    coder = script(tmp_path, "coder", f"""
try see-wtmesh 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done 2>/dev/null |
  grep -q -- "-m worktree_mesh ru[n]"'
try kill-bystander 'kill -KILL {bystander.pid}'
echo mine > lane.txt
""")
    try:
        summary = run(repo, {"lanes": {"coder": {"command": coder}},
                             "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                      "--sandbox", mode)
        assert said(repo, summary) == expected(mode, "see-wtmesh", "kill-bystander")
        assert alive(bystander.pid) == (mode == "bwrap")
        assert unit(summary)["status"] == "integrated"
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("mode", MODES)
def test_a_lane_cannot_write_the_users_object_store(repo: Path, tmp_path: Path,
                                                    mode: str) -> None:
    """The worktree's own ``.git`` names the user's objects in its alternates: the lane
    goes there by that path, through git run on the repository, and through a symlink of
    its own to the repository; its own git (add, commit, stash) works all the same and
    writes into its ``.git`` alone."""
    git(repo, "repack", "-a", "-d", "-q")
    blob = "planted by a lane " + uuid.uuid4().hex
    coder = script(tmp_path, "coder", f"""
OBJ=$(cat .git/objects/info/alternates)
try hash-object 'echo "{blob}" | git -C "$WTMESH_REPO" hash-object -w --stdin'
try via-alternates 'mkdir -p "$OBJ/ff" && echo x > "$OBJ/ff/planted"'
try touch-pack 'touch "$OBJ"/pack/*.pack'
try via-symlink 'ln -s "$WTMESH_REPO" escape && echo evil > escape/evil.txt'
rm -f escape
try lane-git 'echo mine > lane.txt && git add lane.txt && git commit -q -m mine && git stash -q -u'
echo "lane-commit: $(git rev-parse HEAD)"
echo mine > lane.txt
""")
    summary = run(repo, {"delivery_mode": "patch_first", "lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  "--sandbox", mode)
    attempts = said(repo, summary)
    lane_commit = attempts.pop("lane-commit")
    assert attempts == {**expected(mode, "hash-object", "via-alternates", "touch-pack",
                                   "via-symlink"), "lane-git": "done"}
    planted = subprocess.run(["git", "hash-object", "--stdin"], cwd=repo, capture_output=True,
                             input=f"{blob}\n".encode(), check=True).stdout.decode().strip()
    in_store = {name: subprocess.run(["git", "cat-file", "-e", sha], cwd=repo,
                                     check=False).returncode == 0
                for name, sha in (("blob", planted), ("lane-commit", lane_commit))}
    assert in_store == {"blob": mode == "none", "lane-commit": False}
    if mode == "bwrap":
        assert not (repo / ".git" / "objects" / "ff").exists()
        assert not (repo / "evil.txt").exists()
    assert unit(summary)["status"] == "integrated"
    assert unit(summary)["files"] == ["lane.txt"]


@needs_bwrap
@pytest.mark.parametrize(("around", "probes"), [
    # Every repository's worktrees share one home: another repository's run in progress,
    # and an earlier run of this one that was kept, are in it.
    pytest.param(False, [("other-repo", 'cat "{other}/secret.txt"', "refused"),
                         ("earlier-run", 'cat "{earlier}/secret.txt"', "refused"),
                         ("list-home", 'ls "{home}" | grep -q other', "refused")],
                 id="the-shared-home"),
    # ``WTMESH_WORKTREES`` set to a directory that holds the repository and the plan:
    # hiding that home would hide them from the lane; this repository's folder in it
    # (here with an earlier run's worktree) is hidden all the same.
    pytest.param(True, [("read-repo", 'grep -q . "$WTMESH_REPO/calc/ops.py"', "done"),
                        ("lane-git", "git status --porcelain && git log -1", "done"),
                        ("earlier-run", 'cat "{earlier}/secret.txt"', "refused")],
                 id="a-home-around-the-repository"),
])
def test_a_lane_cannot_see_the_worktrees_of_other_repositories_or_runs(
        repo: Path, tmp_path: Path, around: bool, probes: list[tuple[str, str, str]]) -> None:
    from worktree_mesh.state import repo_key, worktrees_home

    home = tmp_path if around else worktrees_home()
    other = home / "other-0123abcd" / "run-1" / "w001"
    earlier = home / repo_key(repo / ".git") / "run-0" / "w001"
    for kept in (other, earlier):
        kept.mkdir(parents=True)
        (kept / "secret.txt").write_text("not the lane's\n")
    tries = "".join(f"try {name} '{command.format(other=other, earlier=earlier, home=home)}'\n"
                    for name, command, _ in probes)
    coder = script(tmp_path, "coder", f"{tries}echo mine > lane.txt\n")
    summary = run(repo, {"lanes": {"coder": {"command": coder}},
                         "units": [{"id": "u1", "objective": "o"}]}, tmp_path,
                  env={"WTMESH_WORKTREES": str(tmp_path)} if around else None)
    assert said(repo, summary) == {name: outcome for name, _, outcome in probes}
    assert unit(summary)["status"] == "integrated"
