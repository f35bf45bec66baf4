"""Consensus units (SPEC 12) through the real CLI: variants in their own worktrees, each
proven on the head, critics that read, the vote, the synthesizer, each ``select``, and
what lands: exactly the chosen candidate's tree, with its trailers."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, git, hears_ctrl_c, lane, run_worktrees, state_dir, wtmesh
from test_cost import waits_for

SMALL = "write:calc/extra.py=VALUE = 1\\n"
BIG = "write:calc/extra.py=VALUE = 1\\nOTHER = 2\\nMORE = 3\\n"
BROKEN = "write:calc/ops.py=def add(a, b):\\n    return 0\\n"


def variant(name: str, *actions: str) -> dict[str, Any]:
    return {"name": name, "coder": {"command": lane("act.py", *actions)}}


def critic(name: str, *args: str) -> dict[str, Any]:
    return {"name": name, "command": lane("critic.py", *args)}


def plan_for(consensus: dict[str, Any], writable: Path | None = None,
             **unit: Any) -> dict[str, Any]:
    """One consensus unit; ``writable``: where recording lanes write (beside the repo)."""
    return {"proof_command": PROOF, "max_active": 3,
            **({"sandbox_writable": [str(writable)]} if writable else {}),
            "units": [{"id": "u1", "objective": "Add VALUE to calc", "unit_scope": ["calc/"],
                       "lanes": {"coder": {"command": lane("act.py", SMALL)}},
                       "consensus": consensus, **unit}]}


THREE = [variant("big", BIG), variant("broken", BROKEN), variant("small", SMALL)]


def run(repo: Path, plan: Path, *args: str, code: int = 0) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    summary: dict[str, Any] = res.json()
    return summary


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = state_dir(repo) / "runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(repo: Path, run_id: str, name: str) -> list[dict[str, Any]]:
    return [r for r in ledger(repo, run_id) if r["event"] == name]


def by_name(unit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in unit["candidates"]}


# -- the vote ------------------------------------------------------------------------------

def test_the_critics_choose_the_smaller_of_two_passing_variants(
        repo: Path, write_plan: Any) -> None:
    """One variant breaks the proof and is out; two critics of three (the default quorum)
    agree on the smaller: it lands, exactly its tree, saying so in its trailers."""
    critics = [critic("c1", "smallest"), critic("c2", "smallest"), critic("c3", "largest")]
    summary = run(repo, write_plan(plan_for({"variants": THREE, "critics": critics})))
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("integrated", None)
    shown = by_name(unit)
    assert [c["name"] for c in unit["candidates"]] == ["big", "broken", "small"]
    assert (shown["broken"]["status"], shown["broken"]["failure_code"]) == \
        ("failed", "proof_failed")
    assert shown["broken"]["votes"] is None  # out before the critics
    assert shown["small"]["chosen"] and not shown["big"]["chosen"]
    assert shown["small"]["votes"]["agree"] == 2 and shown["big"]["votes"]["agree"] == 1
    assert shown["small"]["stats"] == {"files": 1, "added": 1, "removed": 0}
    assert shown["small"]["proof_status"] == "pass"
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    message = git(repo, "log", "-1", "--format=%B", "main")
    assert "Wtmesh-Variant: small\nWtmesh-Votes: 2/3" in message
    # Exactly the tree the candidate's proof ran on: the landing's proof was the same tree.
    proofs = events(repo, summary["run_id"], "proof_finished")
    assert proofs[-1].get("cached") is True, proofs[-1]
    assert [e["candidate"] for e in events(repo, summary["run_id"], "chosen")] == ["small"]


def test_each_critic_reads_every_passing_candidate_and_writes_nothing(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    record = tmp_path / "seen.jsonl"
    critics = [critic("c1", "smallest", f"record:{record}")]
    summary = run(repo, write_plan(plan_for({"variants": THREE, "critics": critics},
                                            tmp_path)))
    assert summary["units"][0]["status"] == "integrated"
    (seen,) = [json.loads(line) for line in record.read_text().splitlines()]
    document, env = seen["candidates"], seen["env"]
    assert [c["name"] for c in document["candidates"]] == ["big", "small"]
    assert (document["unit"], document["round"], document["quorum"]) == ("u1", 1, 1)
    assert document["previous"] == []
    small = document["candidates"][1]
    assert "+VALUE = 1" in Path(small["diff"]).read_text()
    assert small["stats"] == {"files": 1, "insertions": 1, "deletions": 0}
    assert small["proof"]["status"] == "pass"
    assert (env["WTMESH_LANE"], env["WTMESH_CRITIC"], env["WTMESH_ROUND"]) == \
        ("critic", "c1", "1")
    assert env["WTMESH_BASE_SHA"] == summary["base"]  # at the unit's start


def test_quorum_not_reached_in_any_round_is_no_consensus_with_every_candidate_kept(
        repo: Path, write_plan: Any) -> None:
    head = git(repo, "rev-parse", "main")
    critics = [critic("c1", "smallest"), critic("c2", "largest")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 2, "rounds": 2}
    summary = run(repo, write_plan(plan_for(consensus)), code=1)
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("no_consensus", "no_consensus")
    assert "no candidate reached the quorum of 2 in 2 rounds" in \
        events(repo, summary["run_id"], "unit_finished")[0]["notes"]
    assert git(repo, "rev-parse", "main") == head
    assert [v["round"] for v in events(repo, summary["run_id"], "vote")] == [1, 2]
    refs = git(repo, "for-each-ref", "--format=%(refname)",
               f"refs/wtmesh/{summary['run_id']}/units/u1/candidates/").splitlines()
    assert {r.rsplit("/", 2)[-2] for r in refs if r.endswith("/result")} == \
        {"big", "broken", "small"}
    assert not any(c["chosen"] for c in unit["candidates"])


def test_round_two_shows_each_critic_the_others_verdicts(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Split in round 1; in round 2 a critic that follows the others' majority tips it."""
    record = tmp_path / "seen.jsonl"
    critics = [critic("c1", "agree:big"), critic("c2", "agree:big"),
               critic("c3", "smallest", "follow", f"record:{record}")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 3}
    summary = run(repo, write_plan(plan_for(consensus, tmp_path)))
    (unit,) = summary["units"]
    assert unit["status"] == "integrated" and by_name(unit)["big"]["chosen"]
    rounds = [json.loads(line)["candidates"] for line in record.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert sorted(p["critic"] for p in rounds[1]["previous"]) == ["c1", "c2"]
    assert "Wtmesh-Votes: 3/3" in git(repo, "log", "-1", "--format=%B", "main")


def test_a_rubric_below_the_pass_line_counts_as_disagree(repo: Path, write_plan: Any) -> None:
    """Both critics agree on small, but one marks it 3 throughout (mean 3.0 < 4.0): only
    one agree counts, short of a quorum of 2."""
    critics = [critic("c1", "smallest", "scores:small=5"),
               critic("c2", "smallest", "scores:small=3")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 2, "rounds": 1}
    summary = run(repo, write_plan(plan_for(consensus)), code=1)
    (unit,) = summary["units"]
    assert unit["status"] == "no_consensus"
    assert by_name(unit)["small"]["votes"]["agree"] == 1
    assert by_name(unit)["small"]["votes"]["rubric_mean"] == 4.0


# -- critics that do not give a verdict -----------------------------------------------------

def test_a_critic_that_writes_is_invalid_and_its_vote_does_not_count(
        repo: Path, write_plan: Any) -> None:
    critics = [critic("writer", "agree:big", "write:calc/extra.py=HACKED = 1\\n"),
               critic("c2", "agree:big"), critic("c3", "smallest")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 2, "rounds": 1}
    summary = run(repo, write_plan(plan_for(consensus)), code=1)
    assert summary["units"][0]["status"] == "no_consensus"
    (wrote,) = [c for c in events(repo, summary["run_id"], "critique")
                if c["critic"] == "writer"]
    assert (wrote["counted"], wrote["failure_code"]) == (False, "invalid_output_schema")
    assert "calc/extra.py" in wrote["notes"]
    assert "HACKED" not in git(repo, "log", "--all", "-p")  # nothing of it was kept


@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_a_critic_that_rewrites_a_candidates_diff_changes_nothing_that_lands(
        repo: Path, write_plan: Any, sandbox: str) -> None:
    """A hostile critic overwrites every candidate's diff file it can reach by path
    (sandboxed: none; unsandboxed: all of them) and votes like the others: what lands is
    the chosen candidate's change, taken again from its commits."""
    critics = [critic("evil", "smallest", "tamper:HACKED = 1\n"), critic("c2", "smallest")]
    summary = run(repo, write_plan(plan_for({"variants": THREE, "critics": critics})),
                  "--sandbox", sandbox)
    (unit,) = summary["units"]
    assert (unit["status"], by_name(unit)["small"]["chosen"]) == ("integrated", True), unit
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    assert "HACKED" not in git(repo, "log", "-p", "main")


@pytest.mark.parametrize("verdict", [
    "not json", "[]", '{"decision": "maybe", "votes": {}}',
    '{"decision": "accept", "votes": {"nobody": "agree"}}',
    '{"decision": "accept", "votes": {"big": "agree"}, "scores": {"big": {"legibility_trace": 9}}}',
])
def test_a_critic_with_a_malformed_verdict_does_not_count(
        repo: Path, write_plan: Any, verdict: str) -> None:
    critics = [critic("bad", f"verdict:{verdict}"), critic("c2", "smallest")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 1, "rounds": 1}
    summary = run(repo, write_plan(plan_for(consensus)))
    assert by_name(summary["units"][0])["small"]["chosen"]
    (bad,) = [c for c in events(repo, summary["run_id"], "critique") if c["critic"] == "bad"]
    assert (bad["counted"], bad["failure_code"]) == (False, "invalid_output_schema"), bad
    assert bad["notes"]


# -- the synthesizer ------------------------------------------------------------------------

def test_the_synthesis_is_proven_and_voted_on_in_the_next_round(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    record = tmp_path / "synth.jsonl"
    synthesizer = {"command": lane("critic.py", f"record:{record}",
                                   "write:calc/extra.py=VALUE = 1  # merged\\n")}
    critics = [critic("c1", "agree:synthesis"), critic("c2", "agree:synthesis")]
    consensus = {"variants": THREE, "critics": critics, "synthesizer": synthesizer,
                 "quorum": 2}
    summary = run(repo, write_plan(plan_for(consensus, tmp_path)))
    (unit,) = summary["units"]
    assert unit["status"] == "integrated"
    assert [c["name"] for c in unit["candidates"]] == ["big", "broken", "small", "synthesis"]
    assert by_name(unit)["synthesis"]["chosen"]
    assert by_name(unit)["synthesis"]["proof_status"] == "pass"
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1  # merged"
    (seen,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen["env"]["WTMESH_LANE"] == "synthesizer"
    assert sorted(p["critic"] for p in seen["candidates"]["previous"]) == ["c1", "c2"]
    assert [v["round"] for v in events(repo, summary["run_id"], "vote")] == [1, 2]


def test_a_synthesizer_that_changes_nothing_leaves_the_candidates_standing(
        repo: Path, write_plan: Any) -> None:
    critics = [critic("c1", "smallest"), critic("c2", "largest")]
    consensus = {"variants": THREE, "critics": critics, "quorum": 2, "rounds": 2,
                 "synthesizer": {"command": lane("act.py")}}
    summary = run(repo, write_plan(plan_for(consensus)), code=1)
    (unit,) = summary["units"]
    assert unit["status"] == "no_consensus"
    synthesis = by_name(unit)["synthesis"]  # shown, as what the synthesizer did
    assert (synthesis["status"], synthesis["votes"], synthesis["chosen"]) == \
        ("no_diff", None, False)
    second = events(repo, summary["run_id"], "vote")[1]
    assert [s["name"] for s in second["standings"]] == ["big", "small"]


# -- select without a vote ------------------------------------------------------------------

def test_first_passing_is_the_default_without_critics(repo: Path, write_plan: Any) -> None:
    variants = [variant("broken", BROKEN), variant("big", BIG), variant("small", SMALL)]
    summary = run(repo, write_plan(plan_for({"variants": variants})))
    (unit,) = summary["units"]
    assert by_name(unit)["big"]["chosen"] and unit["status"] == "integrated"
    assert "Wtmesh-Variant: big\n" in git(repo, "log", "-1", "--format=%B", "main") + "\n"
    assert "Wtmesh-Votes" not in git(repo, "log", "-1", "--format=%B", "main")


def test_smallest_takes_the_fewest_changed_lines(repo: Path, write_plan: Any) -> None:
    summary = run(repo, write_plan(plan_for({"variants": THREE, "select": "smallest"})))
    assert by_name(summary["units"][0])["small"]["chosen"]
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"


def test_n_variants_are_told_apart_by_wtmesh_variant(repo: Path, write_plan: Any,
                                                     tmp_path: Path) -> None:
    record = tmp_path / "variants.jsonl"
    plan = plan_for({"variants": 3}, tmp_path)
    plan["units"][0]["lanes"]["coder"]["command"] = lane("act.py", f"record:{record}", SMALL)
    summary = run(repo, write_plan(plan))
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(s["env"]["WTMESH_VARIANT"] for s in seen) == ["v1", "v2", "v3"]
    assert by_name(summary["units"][0])["v1"]["chosen"]


def test_a_unit_needs_no_coder_of_its_own_when_every_variant_names_one(
        repo: Path, write_plan: Any) -> None:
    plan = plan_for({"variants": [variant("big", BIG), variant("small", SMALL)],
                     "select": "smallest"})
    del plan["units"][0]["lanes"]
    assert wtmesh("validate", write_plan(plan), cwd=repo).returncode == 0
    summary = run(repo, write_plan(plan))
    assert by_name(summary["units"][0])["small"]["chosen"]
    del plan["units"][0]["consensus"]["variants"][1]["coder"]
    res = wtmesh("validate", write_plan(plan), cwd=repo)
    assert res.returncode == 2 and "no coder lane" in res.stderr, res.stderr


def test_all_variants_failing_fail_the_unit(repo: Path, write_plan: Any) -> None:
    head = git(repo, "rev-parse", "main")
    variants = [variant("b1", BROKEN), variant("b2", BROKEN)]
    summary = run(repo, write_plan(plan_for({"variants": variants})), code=1)
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("failed", "proof_failed")
    assert git(repo, "rev-parse", "main") == head


def test_variants_count_toward_max_active(repo: Path, write_plan: Any) -> None:
    """max_active 1: the three variants' lanes run one after another, never two at once."""
    plan = plan_for({"variants": THREE, "critics": [critic("c1", "smallest")]})
    plan["max_active"] = 1
    summary = run(repo, write_plan(plan))
    running = 0
    for record in ledger(repo, summary["run_id"]):
        if record["event"] == "lane_started":
            running += 1
            assert running == 1, record
        elif record["event"] == "lane_finished":
            running -= 1


def test_critics_cost_at_most_one_worktree_beyond_the_variants(
        repo: Path, write_plan: Any) -> None:
    """Two variants, three critics, room for five lanes: the critics take the variants'
    worktrees back (reset to the start, not filled again) and one more."""
    critics = [critic("c1", "smallest"), critic("c2", "smallest"), critic("c3", "largest")]
    plan = plan_for({"variants": [variant("big", BIG), variant("small", SMALL)],
                     "critics": critics})
    plan["max_active"] = 5
    summary = run(repo, write_plan(plan), "--keep-worktrees")
    assert summary["units"][0]["status"] == "integrated"
    made = sorted(p.name for p in run_worktrees(repo, summary["run_id"]).iterdir())
    assert made == ["integration", "w001", "w002", "w003"], made


# -- crash safety ---------------------------------------------------------------------------

KILLED = -9
CONSENSUS_EVENTS = ("candidate_finished", "critique", "vote", "chosen")


def resumable_plan() -> dict[str, Any]:
    """Two variants, critics split in round 1, the synthesis chosen in round 2."""
    critics = [critic("c1", "agree:synthesis,small"), critic("c2", "agree:synthesis,big")]
    synthesizer = {"command": lane("act.py", "write:calc/extra.py=VALUE = 1  # merged\\n")}
    return plan_for({"variants": [variant("big", BIG), variant("small", SMALL)],
                     "critics": critics, "synthesizer": synthesizer, "quorum": 2})


def consensus_outcome(repo: Path) -> dict[str, Any]:
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    (unit,) = summary["units"]
    return {"status": unit["status"], "exit": summary["exit_code"],
            "candidates": [(c["name"], c["status"], c["chosen"]) for c in unit["candidates"]],
            "tree": git(repo, "rev-parse", "main^{tree}"),
            "trailers": [line for line in git(repo, "log", "-1", "--format=%B", "main")
                         .splitlines() if line.startswith("Wtmesh-")
                         and not line.startswith("Wtmesh-Run:")],
            "commits": git(repo, "rev-list", "--count", "main")}


@pytest.fixture(scope="module")
def uninterrupted(hermetic_module: None, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[dict[str, Any], list[int]]:
    """The outcome without a kill, and the ledger positions of its consensus events."""
    from conftest import make_repo

    base = tmp_path_factory.mktemp("uninterrupted")
    repo = make_repo(base / "repo")
    plan = base / "plan.json"
    plan.write_text(json.dumps(resumable_plan()))
    assert wtmesh("run", plan, cwd=repo).returncode == 0
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    return consensus_outcome(repo), [r["seq"] for r in records
                                     if r["event"] in CONSENSUS_EVENTS]


# Of the ten consensus events (3 candidates, 4 critiques, 2 votes, chosen), in the order
# of an uninterrupted run: each kind once, and the synthesis.
KILL_AT = {"first-candidate": 0, "first-critique": 2, "first-vote": 4, "synthesis": 5,
           "last-critique": 7, "chosen": 9}


@pytest.mark.parametrize("nth", KILL_AT.values(), ids=KILL_AT.keys())
def test_a_kill_at_any_consensus_event_then_resume_gives_the_same_outcome(
        repo: Path, write_plan: Any, uninterrupted: tuple[dict[str, Any], list[int]],
        nth: int) -> None:
    """kill -9 right after a consensus event, then --resume: the same candidates, choice
    and tree; what had finished (a candidate's lanes, a critique) is not run again."""
    expected, positions = uninterrupted
    assert len(positions) == 10, positions
    plan = write_plan(resumable_plan())
    killed = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": f"after-event:{positions[nth]}"})
    assert killed.returncode == KILLED, (killed.returncode, killed.stderr)
    codes = [KILLED]
    while codes[-1] == KILLED:
        res = wtmesh("run", plan, "--resume", cwd=repo)
        assert "Traceback" not in res.stderr, res.stderr
        codes.append(res.returncode)
        assert len(codes) < 4, codes
    assert consensus_outcome(repo) == expected
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    resumed_at = next(i for i, r in enumerate(records) if r["event"] == "run_resumed")
    before, after = records[:resumed_at], records[resumed_at:]
    done = {r["candidate"] for r in before if r["event"] == "candidate_finished"}
    criticised = {(r["critic"], r["round"]) for r in before if r["event"] == "critique"}
    rerun = {r.get("candidate") for r in after if r["event"] == "lane_started"}
    assert not done & rerun, (done, rerun)
    again = {(r["critic"], r["round"]) for r in after if r["event"] == "critique"}
    assert not criticised & again, (criticised, again)


def ledger_holds(repo: Path, proc: subprocess.Popen[str], **wanted: str) -> None:
    """Wait until the run's ledger holds an event with these fields (the run going on)."""
    deadline = time.monotonic() + 60
    while True:
        for path in (state_dir(repo) / "runs").glob("*/ledger.jsonl"):
            for line in path.read_text().splitlines():
                if all(json.loads(line).get(k) == v for k, v in wanted.items()):
                    return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {wanted} in the ledger"
        time.sleep(0.05)


def waiting_for_a_resume(repo: Path) -> dict[str, Any]:
    """A variant whose lane goes on only in a resumed run (runs use --sandbox none: the
    ledger it waits on lies in the state directory, which the sandbox hides)."""
    return {"name": "slow", "coder": {"command": waits_for(repo, 1, "event=run_resumed")
                                      + shlex.join(lane("act.py", BIG))}}


def start_run(repo: Path, plan: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan),
                             "--sandbox", "none"], cwd=repo, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=hears_ctrl_c)


def interrupt(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.parametrize("cut_off", ["variant", "critic"])
def test_a_lane_cut_off_by_ctrl_c_is_run_again_on_resume(repo: Path, write_plan: Any,
                                                         cut_off: str) -> None:
    """What a variant's or critic's lane ends with when the run is interrupted is no
    outcome: nothing of it (nor of critics asked after it) is kept, and --resume runs it
    again."""
    critics = [critic("c1", "agree:slow")]
    if cut_off == "critic":
        critics.append({"name": "c2", "command": waits_for(repo, 1, "event=run_resumed")
                        + shlex.join(lane("critic.py", "agree:slow"))})
    variants = [variant("small", SMALL), waiting_for_a_resume(repo) if cut_off == "variant"
                else variant("slow", BIG)]
    plan = write_plan(plan_for({"variants": variants, "critics": critics}))
    proc = start_run(repo, plan)
    try:
        ledger_holds(repo, proc, event="candidate_finished", candidate="small")
        ledger_holds(repo, proc, event="lane_started",
                     **({"candidate": "slow"} if cut_off == "variant" else {"critic": "c2-r1"}))
    finally:
        code = interrupt(proc)
    assert code == 130
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    finished = {r["candidate"] for r in records if r["event"] == "candidate_finished"}
    assert finished == ({"small"} if cut_off == "variant" else {"small", "slow"})
    assert not [r for r in records if r["event"] == "vote"]
    assert not [r for r in records if r["event"] == "critique" and r["critic"] == "c2"]
    resumed = wtmesh("run", plan, "--resume", "--sandbox", "none", cwd=repo)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1\nOTHER = 2\nMORE = 3"
    message = git(repo, "log", "-1", "--format=%B", "main")
    assert f"Wtmesh-Variant: slow\nWtmesh-Votes: {len(critics)}/{len(critics)}" in message
