"""A unit's diff costs wtmesh about nothing by its size (SPEC 3.5): it is streamed from git
to the unit's file, hashed and counted on the way, and applied, checked and delivered from
disk, never held whole in memory (unidiff's objects alone cost ten times a diff's size)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PY, git, state_dir

# The CLI, reporting its own peak resident set size (not its children's: git and the lane
# are processes of their own) when it exits.
PEAK_RSS = ("import atexit, resource, runpy, sys\n"
            "atexit.register(lambda: sys.stderr.write('peak_rss_kb %d\\n' % "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
            "sys.argv[0] = 'wtmesh'\n"
            "runpy.run_module('worktree_mesh', run_name='__main__')\n")

# A lane adding a file of ``lines`` distinct lines, about 40 bytes each.
WRITE_LINES = ("import sys\n"
               "with open('big.txt', 'w') as out:\n"
               "    for i in range(int(sys.argv[1])):\n"
               "        out.write(f'line {i:09d} of the large change, unique\\n')\n")

LINES = 500_000  # about 20 MB of diff


def peak_rss_mb(repo: Path, tmp_path: Path, lines: int, *options: str) -> tuple[float, dict]:
    plan = tmp_path / f"plan-{lines}.json"
    plan.write_text(json.dumps({"units": [
        {"id": "big", "objective": "a large change", "unit_scope": "big.txt",
         "lanes": {"coder": {"command": [PY, "-c", WRITE_LINES, str(lines)]}}}]}))
    res = subprocess.run([PY, "-c", PEAK_RSS, "run", str(plan), "--json", *options],
                         cwd=repo, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr
    peak = [line for line in res.stderr.splitlines() if line.startswith("peak_rss_kb ")]
    assert peak, res.stderr
    return int(peak[-1].split()[1]) / 1024, json.loads(res.stdout)


@pytest.mark.parametrize("delivery", ["commit_first", "patch_first"])
def test_a_large_diff_costs_less_memory_than_its_size(repo: Path, tmp_path: Path,
                                                      delivery: str) -> None:
    """The same run with a one-line change and with a 20 MB one: wtmesh's own peak grows
    by less than the diff's size (before it streamed diffs, by about ten times it)."""
    small, _ = peak_rss_mb(repo, tmp_path, 1, "--delivery", delivery)
    if delivery == "commit_first":
        git(repo, "reset", "-q", "--hard", "HEAD~1")  # the one-line change landed
    big, summary = peak_rss_mb(repo, tmp_path, LINES, "--delivery", delivery)
    unit = summary["units"][0]
    assert unit["status"] == "integrated", unit
    diffs = list((state_dir(repo) / "runs" / summary["run_id"]).rglob("unit.diff"))
    assert len(diffs) == 1
    diff = diffs[0].stat().st_size
    assert diff > 19 * 2**20
    assert big - small < diff / 2**20, (small, big, diff)
    if delivery == "commit_first":
        assert len(git(repo, "show", "main:big.txt").splitlines()) == LINES
    else:
        patches = sorted(Path(summary["patch_dir"]).glob("*.patch"))
        assert len(patches) == 1 and patches[0].stat().st_size > diff
