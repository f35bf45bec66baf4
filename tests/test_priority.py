"""Who gets the CPU first: the integrator, then lane bookkeeping; lanes keep wtmesh's."""

from __future__ import annotations

import json
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
