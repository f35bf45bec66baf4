"""What a person reads at the end of a run: the table and where the results are."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import lane, wtmesh


def test_the_final_note_keeps_the_git_am_line_whole(repo: Path,
                                                                   tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"delivery_mode": "patch_first", "proof_command": "true",
                                "units": [{"id": "u1", "objective": "o",
                                           "lanes": {"coder": {"command": lane(
                                               "act.py", "write:f.txt=x\\n")}}}]}))
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.split()[1].rstrip(":")
    assert f"run {run_id}" in res.stdout.splitlines()  # the table's title, unpadded
    am_lines = [line for line in res.stdout.splitlines() if "git am " in line]
    assert am_lines, res.stdout
    # The whole command on one line, however long the paths.
    assert am_lines[0].rstrip().endswith("*.patch); main untouched")
