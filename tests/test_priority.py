"""Who gets the CPU first: the integrator, then lane bookkeeping; lanes keep wtmesh's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import wtmesh

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
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": f"cut -d' ' -f19 /proc/$$/stat > {seen}; echo a > a.txt"}}}]}))
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert int(seen.read_text()) == own


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_each_git_call_runs_at_the_priority_of_its_side(repo: Path, tmp_path: Path) -> None:
    """A ``git`` first on PATH records its nice value and subcommand: the lanes' snapshot
    and diff run nicer, the integrator's apply, proof check and bring-along do not."""
    own = int(run(NICE_OF_SELF).text)
    real_git = shutil.which("git")
    assert real_git is not None
    calls = tmp_path / "git-calls"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f"""#!/bin/sh
echo "$(cut -d' ' -f19 /proc/$$/stat) $*" >> {calls}
exec {real_git} "$@"
""")
    wrapper.chmod(0o755)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "echo a > a.txt"}}}]}))
    path = f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"
    res = wtmesh("run", plan, cwd=repo, env={"PATH": path})
    assert res.returncode == 0, res.stderr
    nice_of: dict[str, set[int]] = {}
    for line in calls.read_text().splitlines():
        nice, *argv = line.split()
        words = [w for w in argv if not w.startswith("-") and "=" not in w]
        if words:
            nice_of.setdefault(words[0], set()).add(int(nice))
    low = min(19, own + LOW_PRIORITY_NICE)
    assert nice_of["add"] == {low}  # the lane's snapshot
    assert nice_of["diff-tree"] == {low}  # the unit's diff
    assert nice_of["apply"] == {own}  # the integrator
    assert nice_of["status"] == {own}
    assert nice_of["read-tree"] == {own}  # bringing your worktree along
