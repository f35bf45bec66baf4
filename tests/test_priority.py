"""Who gets the CPU first: the integrator, then lane bookkeeping; lanes keep wtmesh's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import git_first_on_path, wtmesh

from worktree_mesh.proc import LOW_PRIORITY_NICE, LowPriorityRunner, run

NICE_OF_SELF = ["sh", "-c", "cut -d' ' -f19 /proc/$$/stat"]  # field 19: the nice value


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_lane_bookkeeping_runs_nicer_than_the_lanes(repo: Path, tmp_path: Path) -> None:
    """wtmesh's own git work for lanes gives way to the integrator's; the lane commands
    themselves keep the priority wtmesh runs at."""
    own = int(run(NICE_OF_SELF).text)
    runner = LowPriorityRunner(workers=1)
    try:
        assert int(runner(NICE_OF_SELF).text) == min(19, own + LOW_PRIORITY_NICE)
    finally:
        runner.close()
    seen = tmp_path / "lane-nice"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sandbox_writable": [str(tmp_path)], "units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {
            "command": f"cut -d' ' -f19 /proc/$$/stat > {seen}; echo a > a.txt"}}}]}))
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert int(seen.read_text()) == own


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_each_git_call_runs_at_the_priority_of_its_side(repo: Path, tmp_path: Path) -> None:
    """A ``git`` first on PATH records its nice value and subcommand: the lanes' snapshot
    and diff run nicer, the integrator's apply, proof check and bring-along do not."""
    own = int(run(NICE_OF_SELF).text)
    calls = tmp_path / "git-calls"
    env = git_first_on_path(tmp_path, f"""echo "$(cut -d' ' -f19 /proc/$$/stat) $*" >> {calls}
exec "$REAL_GIT" "$@"
""")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "echo a > a.txt"}}}]}))
    res = wtmesh("run", plan, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    nice_of: dict[str, set[int]] = {}
    for line in calls.read_text().splitlines():
        nice, *argv = line.split()
        words = [w for w in argv if not w.startswith("-") and "=" not in w]
        if words:
            # The unit's diff is a patch; the integrator lists a landing's paths too.
            sub = "diff-tree -p" if words[0] == "diff-tree" and "-p" in argv else words[0]
            nice_of.setdefault(sub, set()).add(int(nice))
    low = min(19, own + LOW_PRIORITY_NICE)
    assert nice_of["add"] == {low}  # the lane's snapshot
    assert nice_of["diff-tree -p"] == {low}  # the unit's diff
    assert nice_of["apply"] == {own}  # the integrator
    assert nice_of["status"] == {own}
    assert nice_of["read-tree"] == {own}  # bringing your worktree along
