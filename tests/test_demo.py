"""``scripts/demo`` end to end: it runs as designed and says where its results are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, git

DEMO = ROOT / "scripts" / "demo"

# unit -> (state, failure code) as the demo plan is designed to end.
EXPECTED = {
    "add-power": ("integrated", ""),
    "caret-operator": ("integrated", ""),
    "add-modulo": ("integrated", ""),
    "tidy-tests": ("rejected", "safety_regression_risk"),
    "round-division": ("failed", "proof_failed"),
    "add-version": ("failed", "scope_violation"),
    "add-mean": ("integrated", ""),  # the consensus unit
}
PATCHES = ["0001-add-power.patch", "0002-caret-operator.patch", "0003-add-modulo.patch",
           "0004-add-mean.patch"]
# The optimistic plan (fixtures/demo/optimistic.json): every unit integrates, one is rerun.
OPTIMISTIC = ["pin-negate", "add-negate", "docs-usage", "docs-examples"]


def shown(out: str, label: str) -> Path:
    """The path the demo prints after ``label:``."""
    match = re.search(rf"^{label}:\s+(\S+)$", out, re.M)
    assert match, f"no {label!r} in:\n{out}"
    return Path(match.group(1))


def test_demo_runs_as_designed(tmp_path: Path) -> None:
    # This suite's interpreter already has wtmesh: no venv made, nothing installed. The demo
    # directory goes under tmp_path. A fresh machine: no git identity anywhere (conftest
    # already hides the user's and the system's git config).
    env = dict(os.environ, WTMESH_DEMO_PYTHON=sys.executable, TMPDIR=str(tmp_path))
    for role in ("AUTHOR", "COMMITTER"):
        for field in ("NAME", "EMAIL", "DATE"):
            env.pop(f"GIT_{role}_{field}", None)
    res = subprocess.run([str(DEMO)], env=env, capture_output=True, text=True, timeout=120,
                         check=False, stdin=subprocess.DEVNULL, cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "demo OK" in out

    # Both runs print each unit's end: "<unit> <state> [<failure code>: <evidence>]".
    lines = out.splitlines()
    for unit, (state, code) in EXPECTED.items():
        ends = [line for line in lines if line.split()[:2] == [unit, state] and code in line]
        assert len(ends) == 2, f"{unit} {state} {code}:\n{out}"

    # Where the commits and patches are.
    demo_dir = shown(out, "demo directory")
    assert demo_dir.parent == tmp_path
    assert re.search(r"^\s+\w+ add-modulo: ", out, re.M)  # git log --oneline
    patch_dir = shown(out, "patch directory")
    assert (patch_dir / "series").read_text().splitlines() == PATCHES
    assert all(name in out for name in PATCHES)
    assert f"rm -rf {demo_dir}" in out

    # The consensus unit: of three variants one failed its proof, two were proven, and the
    # critics chose the smaller; its commit says which variant it is.
    run_dirs = re.findall(r"^(?:run state and logs:)?\s+(/\S+/runs/\S+)/$", out, re.M)
    summaries = [json.loads((Path(run_dir) / "summary.json").read_text())
                 for run_dir in run_dirs]
    assert len(summaries) == 3
    for summary in summaries[:2]:
        (unit,) = [u for u in summary["units"] if u["id"] == "add-mean"]
        candidates = {c["name"]: c for c in unit["candidates"]}
        assert list(candidates) == ["explicit", "off-by-one", "concise"]
        assert (candidates["off-by-one"]["status"], candidates["off-by-one"]["failure_code"]) \
            == ("failed", "proof_failed")
        assert [c["status"] for c in candidates.values()].count("proven") == 2
        assert [name for name, c in candidates.items() if c["chosen"]] == ["concise"]
        concise, explicit = candidates["concise"]["stats"], candidates["explicit"]["stats"]
        assert concise["added"] + concise["removed"] < explicit["added"] + explicit["removed"]
        assert candidates["concise"]["votes"]["agree"] == 3
    commit_repo = demo_dir / "commit_first"
    message = git(commit_repo, "log", "-1", "--format=%B", "main^{/^add-mean:}")
    assert "Wtmesh-Variant: concise" in message.splitlines()
    assert "return sum(values) / len(values)" in git(commit_repo, "show", "main:calc/stats.py")
    assert sorted(p.name for p in (patch_dir / "candidates" / "add-mean").iterdir()) == \
        ["concise.patch", "explicit.patch"]
    assert re.search(r"^\s+variant off-by-one\s+failed\s+proof_failed", out, re.M)

    # The optimistic plan: the test-first group landed in one move of main, never at its
    # red test commit; docs-examples, whose README line docs-usage changed first, was rerun
    # from the new head and its line is what landed.
    summary = summaries[2]
    units = {u["id"]: u for u in summary["units"]}
    assert list(units) == OPTIMISTIC
    assert {u["status"] for u in units.values()} == {"integrated"}
    assert {uid: (u["reruns"], u["attempts"]) for uid, u in units.items()} == {
        "pin-negate": (0, 1), "add-negate": (0, 1), "docs-usage": (0, 1),
        "docs-examples": (1, 2)}
    assert re.search(r"^docs-examples\s+rerun\s+conflicted on README\.md \(after docs-usage\)",
                     out, re.M)
    assert re.search(r"^pin-negate\s+red\s+its proof passes", out, re.M)
    optimistic = demo_dir / "optimistic"
    tests, tip = units["pin-negate"]["commit"], units["add-negate"]["commit"]
    assert git(optimistic, "rev-parse", f"{tip}^") == tests
    moves = git(optimistic, "reflog", "--format=%H", "main").splitlines()
    assert moves == [units["docs-examples"]["commit"], units["docs-usage"]["commit"], tip,
                     git(optimistic, "rev-parse", f"{tests}^")]
    assert "Wtmesh-Proof: red by design (test-first, green at add-negate)" in \
        git(optimistic, "log", "-1", "--format=%B", tests).splitlines()
    readme = git(optimistic, "show", "main:README.md")
    assert 'evaluate("7 / 2")' in readme and "6 * 7" not in readme
    (ledger,) = [Path(d) / "ledger.jsonl" for d in run_dirs if d.startswith(str(optimistic))]
    events = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["unit"], e["met"]) for e in events if e["event"] == "rerun"] == [
        ("docs-examples", ["docs-usage"])]
