"""Cost and tokens (SPEC 17): what lanes report flows to the ledger, the summary, `status`,
report.md and the live view; `--max-cost-usd` stops new lanes once the run has spent it."""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from conftest import LANES, PY, lane, state_dir, wtmesh
from test_live import Terminal, rows_of

KILLED = -signal.SIGKILL


def spends(uid: str, *attempts: dict[str, Any] | str, **result: Any) -> list[str]:
    """A coder lane writing ``{uid}.txt`` and a result file whose usage is, on attempt N,
    the Nth of ``attempts`` (a dict, or raw JSON text for a usage that is not valid)."""
    actions = [f"write:{uid}.txt={uid}\\n"]
    for n, usage in enumerate(attempts, 1):
        said = usage if isinstance(usage, str) else json.dumps(usage)
        fields = {"decision": "accept", **result}
        if n < len(attempts):  # earlier attempts fail in a way that is retried
            fields = {"decision": "reject", "failure_code": "lane_failed"}
        text = json.dumps(fields)[:-1] + f', "usage": {said}}}'
        actions.append(f"attempt={n}:result:{text}" if len(attempts) > 1 else f"result:{text}")
    return lane("act.py", *actions)


def unit(uid: str, coder: list[str] | str, fixer: list[str] | None = None) -> dict[str, Any]:
    """Scopes apart, so units may run side by side; a fixer writes ``{uid}.review``."""
    lanes: dict[str, Any] = {"coder": {"command": coder}}
    if fixer is not None:
        lanes["fixer"] = {"command": fixer}
    return {"id": uid, "objective": f"do {uid}", "unit_scope": [f"{uid}.txt", f"{uid}.review"],
            "lanes": lanes}


def plan_file(tmp_path: Path, units: list[dict[str, Any]], **extra: Any) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": 1, "units": units, **extra}))
    return plan


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = state_dir(repo) / "runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def lanes_finished(records: list[dict[str, Any]]) -> list[tuple[str, str, int, Any]]:
    return [(r["unit"], r["lane"], r["attempt"], r["usage"]) for r in records
            if r["event"] == "lane_finished"]


def status_rows(repo: Path) -> tuple[dict[str, list[str]], str]:
    """`wtmesh status` as text: each unit's row (its cells), and the whole text."""
    res = wtmesh("status", cwd=repo)
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) > 3 and cells[0]:
            rows[cells[0]] = cells
    return rows, res.stdout


def report_rows(repo: Path, run_id: str) -> tuple[dict[str, list[str]], str]:
    text = (state_dir(repo) / "runs" / run_id / "report.md").read_text()
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows, text


def usage(tokens_in: Any, tokens_out: Any, cost: Any) -> dict[str, Any]:
    return {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost_usd": cost}


def summed(tokens_in: Any, tokens_out: Any, cost: Any, partial: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    return {**usage(tokens_in, tokens_out, cost), "partial": list(partial)}


def test_usage_flows_to_ledger_summary_status_and_report_with_exact_sums(
        repo: Path, tmp_path: Path) -> None:
    review = lane("act.py", "write:a.review=ok\\n",
                  "result:" + json.dumps({"decision": "accept",
                                          "usage": usage(30, 5, 0.2)}))
    plan = plan_file(tmp_path, [
        # A coder and a fixer: 0.1 + 0.2, which floats make 0.30000000000000004.
        unit("a", spends("a", usage(100, 20, 0.1)), fixer=review),
        # Two attempts of one lane, both counted.
        unit("b", spends("b", usage(7, 1, 0.7), usage(3, 2, 0.2))),
        unit("c", lane("act.py", "write:c.txt=c\\n")),  # says nothing of what it spent
    ])
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    records = ledger(repo, summary["run_id"])
    # The ledger: each lane attempt's usage, as the lane said it.
    assert lanes_finished(records) == [
        ("a", "coder", 1, usage(100, 20, 0.1)), ("a", "fixer", 1, usage(30, 5, 0.2)),
        ("b", "coder", 1, usage(7, 1, 0.7)), ("b", "coder", 2, usage(3, 2, 0.2)),
        ("c", "coder", 1, None)]
    # The summary: per lane, per unit (over lanes and attempts), per run.
    units = {u["id"]: u for u in summary["units"]}
    assert units["a"]["usage"] == {**summed(130, 25, 0.3), "lanes": {
        "coder": summed(100, 20, 0.1), "fixer": summed(30, 5, 0.2)}}
    assert units["b"]["usage"] == {**summed(10, 3, 0.9), "lanes": {"coder": summed(10, 3, 0.9)}}
    assert units["c"]["usage"] is None
    assert summary["usage"] == summed(140, 28, 1.2)
    written = json.loads((state_dir(repo) / "runs" / summary["run_id"] / "summary.json")
                         .read_text())
    assert [u["usage"] for u in written["units"]] == [u["usage"] for u in summary["units"]]
    assert written["usage"] == summary["usage"]
    # status, as JSON and as text.
    status = wtmesh("status", "--json", cwd=repo).json()
    assert [u["usage"] for u in status["units"]] == [u["usage"] for u in summary["units"]]
    assert status["usage"] == summary["usage"]
    rows, text = status_rows(repo)
    assert "130 in / 25 out" in rows["a"] and "$0.3000" in rows["a"]
    assert "10 in / 3 out" in rows["b"] and "$0.9000" in rows["b"]
    assert "?" not in "".join(rows["c"]) and "$" not in "".join(rows["c"])
    assert "spent: $1.2000, tokens 140 in / 28 out" in text
    # report.md: the same, in its table and its opening lines.
    rows, text = report_rows(repo, summary["run_id"])
    header = rows["unit"]
    assert header[header.index("tokens"):header.index("cost") + 1] == ["tokens", "cost"]
    at = header.index("tokens")
    assert rows["a"][at:at + 2] == ["130 in / 25 out", "$0.3000"]
    assert rows["b"][at:at + 2] == ["10 in / 3 out", "$0.9000"]
    assert rows["c"][at:at + 2] == ["", ""]
    assert "Spent: $1.2000, tokens 140 in / 28 out." in text


def test_null_parts_stay_unknown_never_zero(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [
        unit("a", spends("a", usage(10, None, None))),
        unit("b", spends("b", usage(5, 7, 0.25))),
        unit("c", spends("c", {})),  # a usage that names no part at all
    ])
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert lanes_finished(ledger(repo, summary["run_id"]))[0][3] == usage(10, None, None)
    units = {u["id"]: u["usage"] for u in summary["units"]}
    assert units["a"] == {**summed(10, None, None), "lanes": {"coder": summed(10, None, None)}}
    assert units["c"] == {**summed(None, None, None),
                          "lanes": {"coder": summed(None, None, None)}}
    # The run's sums: the known parts, marked partial where some attempt did not say.
    assert summary["usage"] == summed(15, 7, 0.25, ("tokens_in", "tokens_out", "cost_usd"))
    rows, text = status_rows(repo)
    assert "10 in / ? out" in rows["a"] and "?" in rows["a"]
    assert "$0.0000" not in text and " 0 out" not in text
    assert "? in / ? out" in rows["c"]
    assert "spent: $0.2500+?, tokens 15+? in / 7+? out" in text
    rows, _ = report_rows(repo, summary["run_id"])
    at = rows["unit"].index("tokens")
    assert rows["a"][at:at + 2] == ["10 in / ? out", "?"]


def test_nothing_is_shown_when_no_lane_reports_usage(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [unit("a", lane("act.py", "write:a.txt=a\\n"))])
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "tokens" not in res.stdout and "spent" not in res.stdout
    summary = json.loads(next(state_dir(repo).glob("runs/*/summary.json")).read_text())
    assert summary["usage"] is None and summary["units"][0]["usage"] is None
    _, text = status_rows(repo)
    assert "tokens" not in text and "spent" not in text and "$" not in text
    _, text = report_rows(repo, summary["run_id"])
    assert "tokens" not in text and "Spent" not in text


def test_a_malformed_usage_is_ignored_with_a_note_and_never_fails_the_unit(
        repo: Path, tmp_path: Path) -> None:
    malformed = {
        "not-an-object": "5", "negative": json.dumps(usage(1, 1, -0.5)),
        "a-string": json.dumps(usage("12", 1, 0.1)), "fractional": json.dumps(usage(1.5, 1, 0)),
        "boolean": json.dumps(usage(True, 1, 0)), "nan": '{"cost_usd": NaN}',
        "misspelt": '{"cost": 0.1}',
    }
    units = [unit(uid, spends(uid, text)) for uid, text in malformed.items()]
    # A result file that is not valid otherwise: the unit is rejected, but what its lane
    # said it spent still counts.
    units.append(unit("bad-result", spends("bad-result", usage(1, 2, 0.5),
                                           decision="maybe")))
    res = wtmesh("run", plan_file(tmp_path, units), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    summary = res.json()
    states = {u["id"]: (u["status"], u["failure_code"], u["usage"]) for u in summary["units"]}
    for uid in malformed:
        assert states[uid] == ("integrated", None, None), uid
    assert states["bad-result"][:2] == ("rejected", "invalid_output_schema")
    assert states["bad-result"][2]["cost_usd"] == 0.5
    assert summary["usage"] == summed(1, 2, 0.5)
    records = ledger(repo, summary["run_id"])
    ignored = {r["unit"]: r["usage_ignored"] for r in records
               if r["event"] == "lane_finished" and "usage_ignored" in r}
    assert set(ignored) == set(malformed)
    assert "must be an object" in ignored["not-an-object"]
    assert "cost_usd" in ignored["negative"] and "tokens_in" in ignored["fractional"]
    assert "unknown key 'cost'" in ignored["misspelt"]
    warnings = [r["message"] for r in records if r["event"] == "warning"]
    assert any(m.startswith("negative: coder attempt 1 reported a usage that was ignored")
               for m in warnings), warnings


def waits_for(repo: Path, count: int, *event: str) -> str:
    """A shell prefix that waits for ``count`` ledger events matching ``event``. The
    ledger lies in the state directory, which the sandbox hides: such runs use
    ``--sandbox none``."""
    return shlex.join([PY, str(LANES / "wait_for_events.py"), str(state_dir(repo)),
                       str(count), *event]) + " && "


def test_max_cost_usd_stops_new_lanes_the_running_lane_finishes(repo: Path,
                                                                tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [
        # a runs beside b (b's lane ends only once a's has started), and ends only once
        # b's lane has spent the budget.
        unit("a", waits_for(repo, 1, "event=lane_finished", "unit=b")
             + shlex.join(spends("a", usage(1, 1, 0.25)))),
        unit("b", waits_for(repo, 1, "event=lane_started", "unit=a")
             + shlex.join(spends("b", usage(1, 1, 1.0)))),
        unit("c", spends("c", usage(1, 1, 0.1))),
        unit("d", spends("d", usage(1, 1, 0.1))),
    ], max_active=2, max_cost_usd=100)
    res = wtmesh("run", plan, "--json", "--sandbox", "none", "--max-cost-usd", "0.5",
                 cwd=repo)
    assert res.returncode == 1, res.stderr  # SPEC 6: units skipped
    summary = res.json()
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {"a": ("integrated", None), "b": ("integrated", None),
                      "c": ("skipped", "budget_exhausted"),
                      "d": ("skipped", "budget_exhausted")}
    assert summary["usage"]["cost_usd"] == 1.25  # the running lane's cost counts too
    assert summary["max_cost_usd"] == 0.5  # the command line over the plan
    records = ledger(repo, summary["run_id"])
    started = {r["unit"] for r in records if r["event"] == "lane_started"}
    assert started == {"a", "b"}
    (exhausted,) = [r for r in records if r["event"] == "budget_exhausted"]
    assert (exhausted["spent_usd"], exhausted["max_cost_usd"]) == (1.0, 0.5)
    notes = {r["unit"]: r["notes"] for r in records if r["event"] == "unit_finished"}
    # What the run had spent when c was skipped: b's cost, or a's too if a ended first.
    assert re.search(r"not started: the run has spent \$1\.(0000|2500) of its "
                     r"--max-cost-usd \$0\.5000", notes["c"]), notes["c"]
    rows, text = status_rows(repo)
    assert rows["c"][1] == "skipped" and "budget_exhausted" in rows["c"]
    assert "spent: $1.2500, tokens 2 in / 2 out (--max-cost-usd $0.5000)" in text


def test_the_plans_max_cost_usd_stops_a_fixer_and_a_retry(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [
        unit("free", lane("act.py", "write:free.txt=free\\n")),  # says nothing of its cost
        unit("cheap", spends("cheap", usage(1, 1, 0.2))),
        # Its coder spends the rest: its fixer, a new lane, never starts.
        unit("reviewed", spends("reviewed", usage(1, 1, 0.4)),
             fixer=lane("act.py", "write:reviewed.review=ok\\n")),
        unit("later", spends("later", usage(1, 1, 0.1))),
    ], max_cost_usd=0.5)
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    summary = res.json()
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {"free": ("integrated", None), "cheap": ("integrated", None),
                      "reviewed": ("failed", "budget_exhausted"),
                      "later": ("skipped", "budget_exhausted")}
    records = ledger(repo, summary["run_id"])
    assert [(u, lane_name) for u, lane_name, _, _ in lanes_finished(records)] == [
        ("free", "coder"), ("cheap", "coder"), ("reviewed", "coder")]
    # The budget cannot see what a lane does not report: said once.
    (uncounted,) = [r["message"] for r in records if r["event"] == "warning"]
    assert uncounted == ("free: coder attempt 1 did not report its cost: --max-cost-usd "
                         "counts only the costs lanes report")
    notes = {r["unit"]: r["notes"] for r in records if r["event"] == "unit_finished"}
    assert "no fixer started" in notes["reviewed"]

    # A lane attempt that failed is not retried once the budget is spent.
    retried = plan_file(tmp_path, [
        unit("flaky", spends("flaky", usage(1, 1, 0.6), usage(1, 1, 0.1)))],
        max_cost_usd=0.5)
    res = wtmesh("run", retried, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    (flaky,) = res.json()["units"]
    assert (flaky["status"], flaky["failure_code"], flaky["attempts"]) == (
        "failed", "budget_exhausted", 1)


def test_a_budget_of_nothing_starts_no_lane(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [unit("a", spends("a", usage(1, 1, 0.1)))])
    res = wtmesh("run", plan, "--json", "--max-cost-usd", "0", cwd=repo)
    assert res.returncode == 1, res.stderr
    (only,) = res.json()["units"]
    assert (only["status"], only["failure_code"]) == ("skipped", "budget_exhausted")
    assert not [r for r in ledger(repo, res.json()["run_id"]) if r["event"] == "lane_started"]


def test_resume_after_a_kill_keeps_the_spent_total(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [unit(uid, spends(uid, usage(10, 1, 0.6)))
                                for uid in ("a", "b", "c")], max_cost_usd=1.0)
    # Killed once a's lane has finished (its cost in the ledger), before b started.
    first = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:lanes-done"})
    assert first.returncode == KILLED, first.stderr
    status = wtmesh("status", "--json", cwd=repo).json()
    assert status["usage"]["cost_usd"] == 0.6
    refused = wtmesh("run", plan, "--resume", "--max-cost-usd", "5", cwd=repo)
    assert refused.returncode == 2 and "--max-cost-usd" in refused.stderr
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    summary = res.json()
    # 0.6 before the kill + 0.6 for b reach the budget: c never starts.
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {"a": ("integrated", None), "b": ("integrated", None),
                      "c": ("skipped", "budget_exhausted")}
    assert summary["usage"] == summed(20, 2, 1.2)
    assert summary["max_cost_usd"] == 1.0
    assert [u["usage"]["cost_usd"] for u in summary["units"][:2]] == [0.6, 0.6]


def test_max_cost_usd_is_validated(repo: Path, tmp_path: Path) -> None:
    good = plan_file(tmp_path, [unit("a", "true")], max_cost_usd=2.5)
    assert wtmesh("validate", good, cwd=repo).returncode == 0
    for value, said in ((-1, "$.max_cost_usd: must be >= 0 (got -1)"),
                        ("5", "$.max_cost_usd: expected number, got str"),
                        (True, "$.max_cost_usd: expected number, got bool")):
        bad = plan_file(tmp_path, [unit("a", "true")], max_cost_usd=value)
        for command in ("validate", "run"):
            res = wtmesh(command, bad, cwd=repo)
            assert res.returncode == 2, (value, res.stderr)
            assert said in res.stderr, (value, res.stderr)
    for value in ("-1", "nan", "inf", "ten"):
        res = wtmesh("run", good, "--max-cost-usd", value, cwd=repo)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1 and "--max-cost-usd" in res.stderr, res.stderr
    assert not state_dir(repo).exists()  # nothing ran


def test_the_live_view_shows_tokens_and_cost(repo: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    plan = plan_file(tmp_path, [
        unit("first", spends("first", usage(1200, 34, 0.3))),
        # Holds the run open until the test has seen the live view.
        unit("second", f"until [ -e {shlex.quote(str(release))} ]; do sleep 0.05; done; "
             + shlex.join(spends("second", usage(1, 1, 0.01)))),
    ], max_cost_usd=10)
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(plan), "--sandbox",
                     "none"], repo, rows=30, cols=150)
    try:
        term.pump_until("spent: $0.3000, tokens 1200 in / 34 out (--max-cost-usd $10.0000)",
                        timeout=120)
    finally:
        release.touch()
    live = [s for s in term.snapshots if "units finished" in s][-1]
    header = next(line for line in live.splitlines() if "failure" in line)
    assert "tokens" in header and "cost" in header
    (row,) = rows_of(live, "first")
    assert "1200 in / 34 out" in row and "$0.3000" in row
    assert term.finish(timeout=120) == 0
    (row,) = rows_of(term.text.replace("│", " "), "second")
    assert "1 in / 1 out" in row and "$0.0100" in row
