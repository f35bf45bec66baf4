"""A budget-aware run with a consensus unit (SPEC 12): every variant and critic lane holds
one of the slots the budget allows, under the clamp and as backpressure moves it. Read
from the ledger: at each ``lane_started``, how many lanes were running then."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import PROOF, lane, state_dir, wtmesh

# strict 15 between 10 and 33: linear_clamp, floor(12 * 5 / 23) = 2 lanes at once.
BUDGET = ("--remaining-five-hour", "15", "--remaining-weekly", "50")
CLAMP = 2
# Lanes that take a moment, so that unlimited they would overlap.
SLOW = "sleep:0.3"


def consensus_unit() -> dict[str, Any]:
    variants = [{"name": name, "coder": {"command": lane("act.py", SLOW, edit)}}
                for name, edit in (("big", "write:calc/extra.py=A = 1\\nB = 2\\n"),
                                   ("small", "write:calc/extra.py=A = 1\\n"),
                                   ("other", "write:calc/extra.py=A = 1\\nC = 3\\n"))]
    critics = [{"name": f"c{i}", "command": lane("critic.py", "smallest", SLOW)}
               for i in (1, 2, 3)]
    return {"id": "vote", "objective": "Add A to calc", "unit_scope": ["calc/"],
            "lanes": {"coder": variants[0]["coder"]},
            "consensus": {"variants": variants, "critics": critics}}


def writer(uid: str) -> dict[str, Any]:
    return {"id": uid, "objective": f"write {uid}", "unit_scope": [f"{uid}.txt"],
            "lanes": {"coder": {"command": lane("act.py", SLOW, f"write:{uid}.txt={uid}\\n")}}}


def run(repo: Path, write_plan: Any, units: list[dict[str, Any]],
        code: int) -> list[dict[str, Any]]:
    plan = write_plan({"proof_command": PROOF, "units": units})
    res = wtmesh("run", plan, "--max-active", "6", *BUDGET, "--json", cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.stdout, res.stderr)
    path = state_dir(repo) / "runs" / res.json()["run_id"] / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def lanes_within_the_limit(records: list[dict[str, Any]]) -> list[str]:
    """Check every lane start against the limit of the moment; return who started."""
    limit = records[0]["max_active"]
    running: set[tuple[Any, ...]] = set()
    started = []
    for record in records:
        who = (record.get("unit"), record.get("candidate") or record.get("critic"),
               record.get("lane"))
        if record["event"] == "backpressure":
            limit = record["new"]
        elif record["event"] == "lane_started":
            assert len(running) < limit, (record, sorted(map(str, running)), limit)
            running.add(who)
            started.append("/".join(str(part) for part in who if part))
        elif record["event"] == "lane_finished":
            running.remove(who)
    assert not running
    return started


def test_the_budget_clamp_counts_every_variant_and_critic_lane(
        repo: Path, write_plan: Any) -> None:
    """Asked for 6, the budget allows 2: with three variants, three critics and an
    ordinary unit beside them, never more than 2 lanes run at once."""
    records = run(repo, write_plan, [consensus_unit(), writer("w")], code=0)
    assert records[0]["max_active"] == CLAMP
    assert records[0]["budget"]["max_active_units"] == CLAMP
    started = lanes_within_the_limit(records)
    assert sorted(started) == sorted(["vote/big/coder", "vote/small/coder", "vote/other/coder",
                                      "vote/c1-r1/critic", "vote/c2-r1/critic",
                                      "vote/c3-r1/critic", "w/coder"])
    chosen = [r["candidate"] for r in records if r["event"] == "chosen"]
    assert chosen == ["small"]


def test_backpressure_narrows_the_consensus_lanes_too(repo: Path, write_plan: Any) -> None:
    """A unit rejected early halves the limit to 1: from then on the variants and
    critics still waiting run one at a time."""
    reject = json.dumps({"id": "r", "decision": "reject",
                         "failure_code": "requires_clarification", "notes": "which file?"})
    rejected = {"id": "r", "objective": "unclear", "unit_scope": ["r.txt"],
                "lanes": {"coder": {"command": lane("act.py", f"result:{reject}")}}}
    records = run(repo, write_plan, [rejected, consensus_unit()], code=1)
    changes = [(r["old"], r["new"], r["unit"]) for r in records if r["event"] == "backpressure"]
    assert changes[0] == (CLAMP, 1, "r")
    started = lanes_within_the_limit(records)
    narrowed = next(i for i, r in enumerate(records) if r["event"] == "backpressure")
    later = [r for r in records[narrowed:] if r["event"] == "lane_started"]
    assert later, "no consensus lane started after the limit fell"
    assert len(started) == 7
    ended = {r["unit"]: r["status"] for r in records if r["event"] == "unit_finished"}
    assert ended == {"r": "rejected", "vote": "integrated"}
