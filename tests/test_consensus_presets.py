"""A consensus unit whose variants and critics are different agent presets (SPEC 12),
through the real CLI with the fake agent CLIs first on PATH: each variant's lanes run its
own CLI in its own worktree, both are proven, each critic's CLI gives its critique
(``--role critic``: read-only flags, the verdict through its schema feature or a
WTMESH_VERDICT line), and the chosen one lands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, git, state_dir, wtmesh
from fake_clis.harness import install

SMALL = "calc/extra.py=VALUE = 1\\n"
BIG = "calc/extra.py=VALUE = 1\\nOTHER = 2\\nMORE = 3\\n"
VARIANTS = ("claude", "codex")
# critic name -> its preset; the last one dissents.
CRITICS = {"skeptic": "claude", "correctness": "codex", "coverage": "gemini"}


def variant(preset: str, edit: str) -> dict[str, Any]:
    # The fakes write what FAKE_EDIT says: each variant's CLI makes its own change.
    return {"name": preset, "coder": {"preset": preset, "timeout_s": 60},
            "env": {"FAKE_EDIT": edit}}


def critic(name: str, preset: str, agree: str, other: str) -> dict[str, Any]:
    # FAKE_VERDICT: the critique the fake CLI answers with.
    verdict = {"decision": "accept", "votes": {agree: "agree", other: "disagree"},
               "ranking": [agree, other], "notes": f"{name} prefers {agree}"}
    return {"name": name, "preset": preset, "timeout_s": 60,
            "env": {"FAKE_VERDICT": json.dumps(verdict)}}


@pytest.mark.parametrize("small", VARIANTS)
def test_variants_and_critics_of_different_presets_each_run_their_own_cli(
        repo: Path, write_plan: Any, tmp_path: Path, small: str) -> None:
    """Whichever preset's change the critics prefer lands: the vote, not the variant
    order, decides."""
    big = next(p for p in VARIANTS if p != small)
    record = tmp_path / "calls.jsonl"
    variants = [variant(p, SMALL if p == small else BIG) for p in VARIANTS]
    critics = [critic(name, preset, big if name == "coverage" else small,
                      small if name == "coverage" else big)
               for name, preset in CRITICS.items()]
    plan = write_plan({
        "proof_command": PROOF, "max_active": 3, "sandbox_writable": [str(tmp_path)],
        "units": [{"id": "u1", "objective": "Add VALUE to calc", "unit_scope": ["calc/"],
                   "lanes": {"coder": {"preset": "claude"}},
                   "consensus": {"variants": variants, "critics": critics}}]})
    env = {"PATH": f"{install(tmp_path / 'fakebin')}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SCENARIO": "success", "FAKE_RECORD": str(record)}
    res = wtmesh("run", plan, "--json", cwd=repo, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, (res.stdout, res.stderr)
    summary = res.json()
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("integrated", None)
    shown = {c["name"]: c for c in unit["candidates"]}
    assert [c["name"] for c in unit["candidates"]] == list(VARIANTS)
    assert all(c["status"] == "proven" and c["proof_status"] == "pass"
               for c in shown.values()), shown
    assert [name for name, c in shown.items() if c["chosen"]] == [small]
    assert (shown[small]["votes"]["agree"], shown[big]["votes"]["agree"]) == (2, 1)

    # Each lane's log shows its own CLI ran, and no other.
    unit_dir = state_dir(repo) / "runs" / summary["run_id"] / "units" / "u1"
    logs = {preset: unit_dir / "candidates" / preset / "coder-1.stdout.log"
            for preset in VARIANTS}
    for name in CRITICS:
        logs[name] = unit_dir / "critics" / f"{name}-r1" / "critic-1.stdout.log"
    for who, log in logs.items():
        ran = CRITICS.get(who, who)
        text = log.read_text()
        assert f"wtmesh-preset: {ran} --version: " in text, (who, text)
        assert all(f"wtmesh-preset: {other} " not in text
                   for other in {*VARIANTS, *CRITICS.values()} - {ran}), (who, text)
    # Each critic's verdict was read and counted as it gave it.
    critiques = [json.loads(line) for line in
                 (state_dir(repo) / "runs" / summary["run_id"] / "ledger.jsonl")
                 .read_text().splitlines()]
    counted = {r["critic"]: r["critique"]["votes"] for r in critiques
               if r["event"] == "critique" and r["counted"]}
    assert counted == {name: {small: "agree" if name != "coverage" else "disagree",
                              big: "disagree" if name != "coverage" else "agree"}
                       for name in CRITICS}

    # One call of each CLI per lane: the variants in worktrees of their own, each told
    # which variant it is; the critics as critics.
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    coders = [c for c in calls if c["env"]["WTMESH_LANE"] == "coder"]
    assert {c["cli"]: c["env"]["WTMESH_VARIANT"] for c in coders} == {p: p for p in VARIANTS}
    assert len(coders) == 2 and len({c["cwd"] for c in coders}) == 2
    judges = [c for c in calls if c["env"]["WTMESH_LANE"] == "critic"]
    assert {c["env"]["WTMESH_CRITIC"]: c["cli"] for c in judges} == CRITICS
    assert len(judges) == 3

    # What lands is the chosen CLI's change, saying which variant it was.
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    message = git(repo, "log", "-1", "--format=%B", "main")
    assert f"Wtmesh-Variant: {small}\nWtmesh-Votes: 2/3" in message
