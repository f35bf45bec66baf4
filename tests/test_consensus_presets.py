"""A consensus unit whose variants are different agent presets (SPEC 12), through the real
CLI with the fake agent CLIs first on PATH: each variant's lanes run its own CLI in its
own worktree, both are proven, the critics vote, and the chosen one lands.

The critics here are command lanes (tests/lanes/critic.py): the presets take the roles
coder and fixer only so far."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, git, lane, state_dir, wtmesh
from fake_clis.harness import install

SMALL = "calc/extra.py=VALUE = 1\\n"
BIG = "calc/extra.py=VALUE = 1\\nOTHER = 2\\nMORE = 3\\n"
PRESETS = ("claude", "codex")


def variant(preset: str, edit: str) -> dict[str, Any]:
    # The fakes write what FAKE_EDIT says: each variant's CLI makes its own change.
    return {"name": preset, "coder": {"preset": preset, "timeout_s": 60},
            "env": {"FAKE_EDIT": edit}}


def critics() -> list[dict[str, Any]]:
    return [{"name": f"c{i}", "command": lane("critic.py", "smallest")} for i in (1, 2, 3)]


@pytest.mark.parametrize("small", PRESETS)
def test_variants_of_different_presets_each_run_their_own_cli_and_the_chosen_lands(
        repo: Path, write_plan: Any, tmp_path: Path, small: str) -> None:
    """Whichever preset's change is the smaller is the critics' choice: the vote, not the
    variant order, decides what lands."""
    record = tmp_path / "calls.jsonl"
    variants = [variant(p, SMALL if p == small else BIG) for p in PRESETS]
    plan = write_plan({
        "proof_command": PROOF, "max_active": 3, "sandbox_writable": [str(tmp_path)],
        "units": [{"id": "u1", "objective": "Add VALUE to calc", "unit_scope": ["calc/"],
                   "lanes": {"coder": {"preset": "claude"}},
                   "consensus": {"variants": variants, "critics": critics()}}]})
    env = {"PATH": f"{install(tmp_path / 'fakebin')}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SCENARIO": "success", "FAKE_RECORD": str(record)}
    res = wtmesh("run", plan, "--json", cwd=repo, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, (res.stdout, res.stderr)
    summary = res.json()
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("integrated", None)
    shown = {c["name"]: c for c in unit["candidates"]}
    assert [c["name"] for c in unit["candidates"]] == list(PRESETS)
    assert all(c["status"] == "proven" and c["proof_status"] == "pass"
               for c in shown.values()), shown
    assert [name for name, c in shown.items() if c["chosen"]] == [small]
    assert shown[small]["votes"]["agree"] == 3

    # Each variant's lane log shows its own CLI ran, and no other.
    candidates = state_dir(repo) / "runs" / summary["run_id"] / "units" / "u1" / "candidates"
    for preset in PRESETS:
        log = (candidates / preset / "coder-1.stdout.log").read_text()
        assert f"wtmesh-preset: {preset} --version: " in log, log
        other = next(p for p in PRESETS if p != preset)
        assert f"wtmesh-preset: {other} " not in log, log
    # One call of each CLI, in a worktree of its own, told which variant it is.
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(c["cli"] for c in calls) == sorted(PRESETS)
    assert {c["cli"]: c["env"]["WTMESH_VARIANT"] for c in calls} == {p: p for p in PRESETS}
    assert len({c["cwd"] for c in calls}) == 2

    # What lands is the chosen CLI's change, saying which variant it was.
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    message = git(repo, "log", "-1", "--format=%B", "main")
    assert f"Wtmesh-Variant: {small}\nWtmesh-Votes: 3/3" in message
