"""A consensus unit's candidates side by side (SPEC 12) wherever a run is shown: the plain
lines and the final table, ``wtmesh status``, report.md and the live view. Through the
real CLI with the scripted lanes of test_consensus.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import lane, state_dir, wtmesh
from test_consensus import (
    BIG,
    BROKEN,
    SMALL,
    THREE,
    critic,
    interrupt,
    ledger_holds,
    plan_for,
    start_run,
    variant,
    waiting_for_a_resume,
)
from test_cost import waits_for
from test_live import Terminal, rows_of

VOTED = {"variants": THREE,
         "critics": [critic("c1", "smallest"), critic("c2", "smallest"),
                     critic("c3", "largest")]}


def plain_run(repo: Path, plan: Path, code: int = 0) -> list[str]:
    """``wtmesh run`` off a terminal: its lines, without trailing blanks."""
    res = subprocess.run([sys.executable, "-m", "worktree_mesh", "run", str(plan)], cwd=repo,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    return [line.rstrip() for line in res.stdout.splitlines()]


def squeezed(line: str) -> str:
    return " ".join(line.split())


# -- plain lines ----------------------------------------------------------------------------

def test_plain_lines_say_which_candidate_and_critic_each_is_about(
        repo: Path, write_plan: Any) -> None:
    lines = [squeezed(line) for line in plain_run(repo, write_plan(plan_for(VOTED)))]
    for name in ("big", "broken", "small"):
        assert f"u1 [{name}] running coder" in lines, lines
    assert len([line for line in lines if line.endswith("running coder")]) == 3
    assert any(line.startswith("u1 [small] proven +1 -0, proof ") for line in lines), lines
    assert any(line.startswith("u1 [broken] failed proof_failed: proof exited 1")
               for line in lines), lines
    for name in ("c1", "c2", "c3"):
        assert f"u1 critic {name} round 1" in lines, lines
    assert "u1 verdict c1 round 1: accept, agree: small" in lines
    assert "u1 verdict c3 round 1: accept, agree: big" in lines
    assert "u1 vote round 1: big 1/3, small 2/3 (chosen)" in lines


def test_plain_lines_say_a_critic_that_did_not_count_and_a_vote_short_of_quorum(
        repo: Path, write_plan: Any) -> None:
    consensus = {"variants": THREE, "critics": [critic("bad", "verdict:not json"),
                                                critic("c2", "smallest")],
                 "quorum": 2, "rounds": 1}
    lines = [squeezed(line) for line in plain_run(repo, write_plan(plan_for(consensus)),
                                                  code=1)]
    assert ("u1 verdict bad round 1: invalid_output_schema: result file is not JSON: "
            "Expecting value: line 1 column 1 (char 0)") in lines, lines
    assert "u1 vote round 1: big 0/2, small 1/2; none reached the quorum of 2" in lines


def test_plain_lines_say_a_choice_made_without_a_vote(repo: Path, write_plan: Any) -> None:
    variants = [variant("broken", "write:calc/ops.py=def add(a, b):\\n    return 0\\n"),
                variant("big", "write:calc/extra.py=VALUE = 1\\nOTHER = 2\\n")]
    lines = [squeezed(line) for line in plain_run(repo, write_plan(plan_for(
        {"variants": variants})))]
    assert "u1 [big] chosen first passing" in lines, lines


# -- the final table ------------------------------------------------------------------------

def comparison_rows(lines: list[str], unit: str = "u1") -> dict[str, list[str]]:
    """The comparison table printed after ``<unit>: N candidates``: cells by candidate."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{unit}: ")
                 and line.endswith(" candidates"))
    header = lines[start + 1].split()
    assert header == ["candidate", "state", "failure", "+/-", "proof", "s", "votes", "borda",
                      "rubric", "chosen"], lines[start + 1]
    rows = {}
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()
    return rows


def test_the_final_table_compares_the_candidates(repo: Path, write_plan: Any) -> None:
    rows = comparison_rows(plain_run(repo, write_plan(plan_for(VOTED))))
    assert rows["small"][:3] == ["small", "proven", "+1"] and rows["small"][3] == "-0"
    assert rows["small"][5:] == ["2/3", "2", "✓"], rows["small"]
    assert rows["big"][5:] == ["1/3", "1"], rows["big"]  # not chosen: no mark
    assert rows["broken"][:3] == ["broken", "failed", "proof_failed"]
    float(rows["small"][4])  # the proof's seconds


def test_the_final_table_fits_80_columns(repo: Path, write_plan: Any) -> None:
    consensus = {**VOTED, "critics": [critic("c1", "smallest", "scores:small=5,big=4"),
                                      critic("c2", "smallest"), critic("c3", "largest")]}
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run",
                     str(write_plan(plan_for(consensus)))], repo, rows=60, cols=80)
    assert term.finish() == 0
    lines = [line.rstrip() for line in term.text.splitlines()]
    # Each candidate's row whole on one line of the 80 (nothing folded onto the next).
    rows = comparison_rows(lines)
    assert rows["small"][5:] == ["2/3", "2", "5.00", "✓"], rows["small"]
    assert rows["big"][5:] == ["1/3", "1", "4.00"], rows["big"]
    assert rows["broken"][1:3] == ["failed", "proof_failed"]


# -- wtmesh status --------------------------------------------------------------------------

def test_status_compares_the_candidates_of_a_finished_run(repo: Path, write_plan: Any) -> None:
    plain_run(repo, write_plan(plan_for(VOTED)))
    status = wtmesh("status", "--json", cwd=repo).json()
    (unit,) = status["units"]
    assert [(c["name"], c["status"], c["chosen"]) for c in unit["candidates"]] == \
        [("big", "proven", False), ("broken", "failed", False), ("small", "proven", True)]
    rows = comparison_rows(wtmesh("status", cwd=repo).stdout.splitlines())
    assert rows["small"][1:4] == ["proven", "+1", "-0"] and rows["small"][5:] == \
        ["2/3", "2", "✓"]
    assert rows["broken"][1:3] == ["failed", "proof_failed"]


def test_status_compares_the_candidates_while_running_once_interrupted_and_resumed(
        repo: Path, write_plan: Any) -> None:
    """One variant's lane waits for a resume: status shows it running beside the proven
    one, then interrupted; after the resume, as the summary says."""
    consensus = {"variants": [variant("small", SMALL), waiting_for_a_resume(repo)],
                 "critics": [critic("c1", "smallest")]}
    plan = write_plan(plan_for(consensus))
    proc = start_run(repo, plan)
    try:
        ledger_holds(repo, proc, event="candidate_finished", candidate="small")
        ledger_holds(repo, proc, event="lane_started", candidate="slow")
        running = wtmesh("status", "--json", cwd=repo).json()
        assert running["state"] == "running"
        assert [(c["name"], c["status"]) for c in running["units"][0]["candidates"]] == \
            [("small", "proven"), ("slow", "running")]
        rows = comparison_rows(wtmesh("status", cwd=repo).stdout.splitlines())
        assert rows["slow"] == ["slow", "running"] and rows["small"][1] == "proven"
    finally:
        assert interrupt(proc) == 130
    stopped = wtmesh("status", "--json", cwd=repo).json()
    assert stopped["state"] == "interrupted"
    assert [(c["name"], c["status"]) for c in stopped["units"][0]["candidates"]] == \
        [("small", "proven"), ("slow", "interrupted")]
    rows = comparison_rows(wtmesh("status", cwd=repo).stdout.splitlines())
    assert rows["slow"] == ["slow", "interrupted"]

    resumed = wtmesh("run", plan, "--resume", "--sandbox", "none", cwd=repo)
    assert resumed.returncode == 0, resumed.stderr
    finished = wtmesh("status", "--json", cwd=repo).json()
    (unit,) = finished["units"]
    assert [(c["name"], c["status"], c["chosen"]) for c in unit["candidates"]] == \
        [("small", "proven", True), ("slow", "proven", False)]
    summary = json.loads((state_dir(repo) / "runs" / finished["run_id"] / "summary.json")
                         .read_text())
    assert summary["units"][0]["candidates"] == unit["candidates"]


# -- report.md ------------------------------------------------------------------------------

def report_of(repo: Path) -> str:
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    return (run_dir / "report.md").read_text()


def markdown_rows(report: str, after: str) -> dict[str, list[str]]:
    """The first Markdown table after the line ``after``: cells by the first cell."""
    lines = report.splitlines()
    start = lines.index(after)
    table = next(i for i in range(start, len(lines)) if lines[i].startswith("| "))
    rows = {}
    for line in lines[table + 2:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def test_report_md_compares_the_candidates_and_tells_each_round(
        repo: Path, write_plan: Any) -> None:
    """patch_first, three critics (one that writes, so does not count), a synthesis voted
    on in round 2, no consensus: every candidate's patch is linked."""
    critics = [critic("c1", "smallest", "notes:small | is enough", "flip:a test for OTHER",
                      "scores:small=5,big=3"),
               critic("c2", "agree:synthesis"),
               critic("writer", "write:calc/x.py=1\\n")]
    synthesizer = {"command": lane("act.py", "write:calc/extra.py=VALUE = 1  # merged\\n")}
    plan = plan_for({"variants": THREE, "critics": critics, "synthesizer": synthesizer,
                     "rounds": 2, "quorum": 2})
    plan["delivery_mode"] = "patch_first"
    plain_run(repo, write_plan(plan), code=1)
    report = report_of(repo)
    assert "No candidate reached the quorum of 2 in 2 rounds" in report
    rows = markdown_rows(report, "## u1: 4 candidates")
    assert list(rows) == ["big", "broken", "small", "synthesis"]
    assert rows["small"][1:4] == ["proven", "", "+1 -0"]
    assert rows["small"][5:9] == ["1/3", "2", "5.00", ""]
    assert rows["big"][5:8] == ["0/3", "1", "3.00"]
    assert rows["broken"][1:3] == ["failed", "proof_failed"] and rows["broken"][9] == ""
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    for name in ("big", "small", "synthesis"):
        link = f"[candidates/u1/{name}.patch](<{run_dir}/patches/candidates/u1/{name}.patch>)"
        assert rows[name][9] == link
        assert (run_dir / "patches" / "candidates" / "u1" / f"{name}.patch").exists()

    first = markdown_rows(report, "### u1, round 1")
    assert first["c1"] == ["c1", "accept", "small", "small, big", "small 5.00, big 3.00",
                           "a test for OTHER", "small \\| is enough"]
    assert first["c2"][1:3] == ["accept", "none"]
    assert first["writer"][1] == "invalid_output_schema (not counted)"
    assert "calc/x.py" in first["writer"][6]
    assert ("Vote (2 of 3 verdicts counted, quorum 2): big 0/3, small 1/3; no candidate "
            "reached the quorum.") in report
    second = markdown_rows(report, "### u1, round 2")
    assert second["c2"][1:4] == ["accept", "synthesis", "synthesis, big, small"]
    assert "Vote (2 of 3 verdicts counted, quorum 2): big 0/3, small 1/3, synthesis 1/3;" \
        in report


def test_report_md_says_which_candidate_was_chosen(repo: Path, write_plan: Any) -> None:
    plain_run(repo, write_plan(plan_for(VOTED)))
    report = report_of(repo)
    assert "Small chosen by 2 of 3 critics in round 1." in report
    rows = markdown_rows(report, "## u1: 3 candidates")
    assert rows["small"][5:] == ["2/3", "2", "", "✓"]  # commit_first: no patch column
    assert "Vote (3 of 3 verdicts counted, quorum 2): big 1/3, small 2/3; small chosen." \
        in report


# -- the live view --------------------------------------------------------------------------

def waits_for_file(path: Path, *actions: str) -> str:
    """A lane that goes on once the test has created ``path``."""
    return f"while [ ! -e {path} ]; do sleep 0.05; done; " + shlex.join(lane("act.py",
                                                                             *actions))


def test_the_live_view_counts_the_candidates_then_shows_the_chosen_one(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """The slow variant waits for a file; so does a second unit, which keeps the live view
    up after the consensus unit has integrated."""
    go, done = tmp_path / "go", tmp_path / "done"
    slow = {"name": "slow", "coder": {"command": waits_for_file(go, BIG)}}
    plan = plan_for({**VOTED, "variants": [variant("small", SMALL), variant("broken", BROKEN),
                                           slow]})
    plan["max_active"] = 4
    plan["units"].append({"id": "later", "objective": "o", "unit_scope": ["later.txt"],
                          "lanes": {"coder": {"command": waits_for_file(
                              done, "write:later.txt=1\\n")}}})
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(write_plan(plan))],
                    repo, rows=30, cols=120)
    try:
        term.pump_until("1 running, 1 proven, 1 out")
        (row,) = rows_of(term.snapshots[-1], "u1")
        assert "running" in row
        # The integrator's last step: the proof of small's or broken's candidate.
        assert "integrator: proving u1 [" in term.snapshots[-1]
        go.touch()
        term.pump_until("small chosen 2/3")
    finally:  # the lanes go on, the run ends, whatever was seen
        go.touch()
        done.touch()
        code = term.finish()
    assert code == 0


def test_the_live_view_of_a_resumed_run_keeps_the_candidates_that_had_finished(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    slow = {"name": "slow", "coder": {"command": waits_for(repo, 1, "event=run_resumed")
                                      + waits_for_file(go, BIG)}}
    plan = write_plan(plan_for({"variants": [variant("small", SMALL), slow],
                                "critics": [critic("c1", "smallest")]}))
    proc = start_run(repo, plan)
    try:
        ledger_holds(repo, proc, event="candidate_finished", candidate="small")
        ledger_holds(repo, proc, event="lane_started", candidate="slow")
    finally:
        assert interrupt(proc) == 130
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(plan), "--resume",
                     "--sandbox", "none"], repo, rows=30, cols=120)
    try:
        term.pump_until("1 running, 1 proven")  # small, from before the interruption
    finally:
        go.touch()
        code = term.finish()
    assert code == 0
    # The view may end before it draws the choice (it refreshes twice a second); the
    # comparison printed after it says it.
    final = [" ".join(line.split()) for line in term.snapshots[-1].splitlines()]
    assert any(line.startswith("small proven +1 -0") and line.endswith("✓")
               for line in final), final
