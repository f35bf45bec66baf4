"""Batched integration (--batch): one proof per batch, bisection on failure, and exactly
the outcome of integrating one unit at a time."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import LANES, PY, git, git_first_on_path, make_repo, no_worktrees_left, wtmesh


def unit_writing(i: int, files: list[str], lane_s: float) -> dict[str, Any]:
    """Unit ``u<i>``: after ``lane_s`` seconds its coder writes ``files``, its scope."""
    command = f"sleep {lane_s}; " + "; ".join(f"echo {i} > {name}" for name in files)
    return {"id": f"u{i:02d}", "objective": f"unit {i}", "unit_scope": files,
            "lanes": {"coder": {"command": command}}}


def plan_of(tmp_path: Path, proofs: Path, breakers: set[int], n: int = 16,
            first_lane_s: float = 0.2, hold_first_in: Path | None = None) -> Path:
    """``n`` units writing their own file, all at once; ``breakers`` also write a
    broken-<i>.txt of their own, which fails the proof. The proof records every tree it
    sees and its verdict in ``proofs``. A slow first unit (``first_lane_s``) holds up
    integration, which is in plan order, until every other unit is ready: then the
    first batch is as large as it can be. ``hold_first_in`` (the repository): the first
    unit's lane instead waits until every other unit's lanes are done, read from the
    ledger (so the run is not sandboxed), which holds on a machine of any speed."""
    units = [unit_writing(i, [f"u{i:02d}.txt"] + ([f"broken-{i}.txt"] if i in breakers
                                                   else []),
                          first_lane_s if i == 0 else 0.2)
             for i in range(n)]
    proof = (f"t=$(git rev-parse HEAD^{{tree}}); "
             f"if ls broken-*.txt >/dev/null 2>&1; then echo \"$t fail\" >> {proofs}; exit 1; "
             f"fi; echo \"$t pass\" >> {proofs}")
    extra: dict[str, Any] = {}
    if hold_first_in is not None:
        units[0]["lanes"]["coder"]["command"] = (
            after(hold_first_in, n - 1, "event=lanes_done") + "echo 0 > u00.txt")
        extra["sandbox"] = "none"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": n, "proof_command": proof, "units": units,
                                "sandbox_writable": [str(proofs.parent)], **extra}))
    return plan


def run(repo: Path, plan: Path, *args: str) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo)
    assert res.returncode in (0, 1), res.stderr
    assert "Traceback" not in res.stderr
    return res.json()


def outcome(repo: Path, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "states": {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]},
        "tree": git(repo, "rev-parse", "main^{tree}"),
        "subjects": git(repo, "log", "--format=%s", "main").splitlines(),
    }


def proof_runs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize("breakers", [{7}, {3, 12}, {0}, {15}])
def test_auto_batches_give_the_outcome_of_one_at_a_time(tmp_path: Path,
                                                        breakers: set[int]) -> None:
    one, auto = tmp_path / "one", tmp_path / "auto"
    make_repo(one / "repo")
    make_repo(auto / "repo")
    one_plan = plan_of(one, one / "proofs", breakers)
    auto_plan = plan_of(auto, auto / "proofs", breakers)
    expected = outcome(one / "repo", run(one / "repo", one_plan, "--batch", "1"))
    got = outcome(auto / "repo", run(auto / "repo", auto_plan, "--batch", "auto"))
    assert got == expected
    failed = {uid for uid, (state, _code) in got["states"].items() if state != "integrated"}
    assert failed == {f"u{i:02d}" for i in breakers}
    assert all(code == "proof_failed" for uid, (_s, code) in got["states"].items()
               if uid in failed)
    # Fewer proofs than one per unit, and no tree proven twice.
    auto_runs = proof_runs(auto / "proofs")
    assert len(auto_runs) < len(proof_runs(one / "proofs"))
    assert len({tree for tree, _ in auto_runs}) == len(auto_runs)
    assert no_worktrees_left(auto / "repo")


def test_the_target_only_ever_moves_to_a_proven_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = plan_of(tmp_path, tmp_path / "proofs", {5})
    run(repo, plan, "--batch", "auto")
    passed = {tree for tree, verdict in proof_runs(tmp_path / "proofs") if verdict == "pass"}
    moves = git(repo, "reflog", "--format=%H", "main").splitlines()[:-1]  # not the initial
    assert moves
    for commit in moves:
        assert git(repo, "rev-parse", f"{commit}^{{tree}}") in passed


def test_batch_commits_say_what_was_proven(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = plan_of(tmp_path, tmp_path / "proofs", set(), n=6, hold_first_in=repo)
    summary = run(repo, plan, "--batch", "auto")
    assert summary["exit_code"] == 0
    bodies = git(repo, "log", "--format=%(trailers:key=Wtmesh-Proof,valueonly)%x00",
                 "main~6..main").split("\0")
    proofs = [b.strip() for b in bodies if b.strip()]
    assert len(proofs) == 6
    # Newest first: one batch of six, proven at its tip.
    assert proofs == ["passed"] + ["covered by the proof of u05 (batch tip)"] * 5
    # Resume and status recognise batch landings by their trailers as any other.
    assert git(repo, "log", "-1", "--format=%(trailers:key=Wtmesh-Unit,valueonly)",
               "main").strip() == "u05"


def test_batch_n_caps_the_batch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = plan_of(tmp_path, tmp_path / "proofs", set(), n=8, hold_first_in=repo)
    summary = run(repo, plan, "--batch", "3")
    assert summary["exit_code"] == 0
    ledger = repo / ".git/wtmesh/runs" / summary["run_id"] / "ledger.jsonl"
    started = [json.loads(line) for line in ledger.read_text().splitlines()
               if '"proof_started"' in line]
    assert [len(r["units"]) for r in started] == [3, 3, 2]


def test_batch_patch_first_series_reproduces_the_same_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = plan_of(tmp_path, tmp_path / "proofs", {4}, n=10)
    summary = run(repo, plan, "--batch", "auto", "--delivery", "patch_first")
    patches = Path(summary["patch_dir"])
    names = (patches / "series").read_text().splitlines()
    assert len(names) == 9
    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", str(repo), str(check))
    git(check, "am", "-q", *[str(patches / n) for n in names])
    reference = make_repo(tmp_path / "reference")
    assert run(reference, plan, "--batch", "1")["exit_code"] == 1
    assert git(check, "rev-parse", "HEAD^{tree}") == git(reference, "rev-parse", "main^{tree}")


def test_bad_batch_values_are_usage_errors(repo: Path, tmp_path: Path) -> None:
    plan = plan_of(tmp_path, tmp_path / "proofs", set(), n=1)
    for value in ("0", "-2", "some", ""):
        res = wtmesh("run", plan, "--batch", value, cwd=repo)
        assert res.returncode == 2, value
        assert res.stderr.startswith("wtmesh: error: ") and "Traceback" not in res.stderr


def test_resume_keeps_the_batch_the_run_started_with(repo: Path, tmp_path: Path) -> None:
    plan = plan_of(tmp_path, tmp_path / "proofs", set(), n=8, first_lane_s=1.5)
    # Killed right after its first batch landed.
    killed = wtmesh("run", plan, "--batch", "3", cwd=repo, env={"WTMESH_FAULT": "at:land"})
    assert killed.returncode == -9
    refused = wtmesh("run", plan, "--resume", "--batch", "5", cwd=repo)
    assert refused.returncode == 2 and "--batch" in refused.stderr
    assert "cannot change" in refused.stderr
    resumed = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert resumed.returncode == 0, resumed.stderr
    ledger = repo / ".git/wtmesh/runs" / resumed.json()["run_id"] / "ledger.jsonl"
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    after = records[next(i for i, r in enumerate(records) if r["event"] == "run_resumed"):]
    sizes = [len(r["units"]) for r in after if r["event"] == "proof_started"]
    assert sizes == [3, 2], sizes  # the five units left, still three at most at a time


def after(repo: Path, count: int, *event: str) -> str:
    """A shell prefix that waits until the run's ledger in ``repo`` holds ``count``
    events matching ``event`` (KEY=VALUE...). The ledger lies in the state directory,
    which the sandbox hides: a test whose lanes or proof wait so runs ``--sandbox none``."""
    return shlex.join([PY, str(LANES / "wait_for_events.py"), str(repo / ".git" / "wtmesh"),
                       str(count), *event]) + " && "


def repair_plan(tmp_path: Path, repo: Path, proofs: Path, proof_s: float = 0.0) -> Path:
    """Eight units, all ready when integration starts (the first one's lane ends once
    the other seven wait to land). u02 breaks the proof; u03 would repair it. One at a
    time u03 is proven without u02, so u02 fails and u03 lands: the case where proving
    only a batch's tip would differ. The proof takes ``proof_s`` seconds."""
    units = [unit_writing(i, [f"u{i:02d}.txt"] + {2: ["broken.txt"], 3: ["fixed.txt"]}.get(i, []),
                          0)
             for i in range(8)]
    units[0]["lanes"]["coder"]["command"] = after(repo, 7, "event=unit_state",
                                                  "phase=waiting") + units[0]["lanes"][
        "coder"]["command"]
    proof = (f"sleep {proof_s}; t=$(git rev-parse HEAD^{{tree}}); "
             f"if [ -e broken.txt ] && [ ! -e fixed.txt ]; then "
             f"echo \"$t fail\" >> {proofs}; exit 1; fi; echo \"$t pass\" >> {proofs}")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": 8, "proof_command": proof, "units": units}))
    return plan


def test_one_at_a_time_proves_every_unit_and_lands_ready_ones_together(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = repair_plan(tmp_path, repo, tmp_path / "proofs")
    res = wtmesh("run", plan, "--json", "--sandbox", "none", cwd=repo,
                 env={"WTMESH_LANDING_WINDOW_S": "600"})
    assert res.returncode == 1, res.stderr
    states = {u["id"]: (u["status"], u["failure_code"]) for u in res.json()["units"]}
    assert states.pop("u02") == ("failed", "proof_failed")
    assert set(states.values()) == {("integrated", None)}
    # Every commit on the target was proven on its own tree, with no batch trailers.
    passed = {tree for tree, verdict in proof_runs(tmp_path / "proofs") if verdict == "pass"}
    commits = git(repo, "rev-list", "main~7..main").split()
    assert len(commits) == 7
    assert {git(repo, "rev-parse", f"{c}^{{tree}}") for c in commits} <= passed
    assert "Wtmesh-Batch" not in git(repo, "log", "--format=%B", "main~7..main")
    # Every unit was waiting when the slow u00's lanes ended: one move of main for all.
    assert len(git(repo, "reflog", "--format=%H", "main").split()) == 1 + 1


@pytest.mark.parametrize(("proof_s", "env"), [
    (0.4, {}),  # slower than the default landing window: nothing is held back for it
    (0.0, {"WTMESH_LANDING_WINDOW_S": "0"}),  # no window at all
])
def test_one_at_a_time_lands_each_unit_alone_when_proofs_are_slow(
        tmp_path: Path, proof_s: float, env: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = repair_plan(tmp_path, repo, tmp_path / "proofs", proof_s)
    res = wtmesh("run", plan, "--json", "--sandbox", "none", cwd=repo, env=env)
    assert res.returncode == 1, res.stderr
    assert [u["status"] for u in res.json()["units"]].count("integrated") == 7
    # Each integrated unit moved main on its own.
    assert len(git(repo, "reflog", "--format=%H", "main").split()) == 1 + 7


def recording_plan(tmp_path: Path, units: list[dict[str, Any]]) -> Path:
    """``units`` all at once, under a proof that records each tree it runs on."""
    proof = f"git rev-parse HEAD^{{tree}} >> {tmp_path / 'proofs'}"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": len(units), "proof_command": proof,
                                "units": units, "sandbox_writable": [str(tmp_path)]}))
    return plan


@pytest.mark.parametrize(("window", "lane_waits_for", "proofs", "moves"), [
    # Each unit that ends finds the next one still in its lanes: one batch.
    ("600", "phase=waiting", 1, 1),
    # No window: each unit is proven as soon as it is ready (here, each lane ends only
    # once the unit before it has landed).
    ("0", "event=landed", 3, 3),
])
def test_auto_batch_gathers_units_whose_lanes_are_still_running(
        tmp_path: Path, window: str, lane_waits_for: str, proofs: int, moves: int) -> None:
    repo = make_repo(tmp_path / "repo")
    # Each lane ends after the unit before it is ready (or landed): without gathering,
    # the first unit is proven alone.
    units = [unit_writing(i, [f"u{i:02d}.txt"], 0) for i in range(3)]
    for i in (1, 2):
        units[i]["lanes"]["coder"]["command"] = after(
            repo, 1, f"unit=u{i - 1:02d}", lane_waits_for) + units[i]["lanes"]["coder"][
            "command"]
    plan = recording_plan(tmp_path, units)
    res = wtmesh("run", plan, "--json", "--batch", "auto", "--sandbox", "none", cwd=repo,
                 env={"WTMESH_LANDING_WINDOW_S": window})
    assert res.returncode == 0, res.stderr
    # The base's own proof, then the units'.
    assert len((tmp_path / "proofs").read_text().split()) == 1 + proofs
    assert len(git(repo, "reflog", "--format=%H", "main").split()) == 1 + moves


def test_auto_batch_never_waits_for_a_unit_that_waits_for_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # u01 needs u00 integrated, u02 shares its file: neither starts before u00 lands, so
    # a batch holding u00 back for them would wait for ever.
    units = [unit_writing(0, ["u00.txt"], 0), unit_writing(1, ["u01.txt"], 0),
             unit_writing(2, ["u00.txt"], 0)]
    units[1]["depends_on"] = ["u00"]
    plan = recording_plan(tmp_path, units)
    res = wtmesh("run", plan, "--json", "--batch", "auto", cwd=repo,
                 env={"WTMESH_LANDING_WINDOW_S": "600"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [u["status"] for u in res.json()["units"]] == ["integrated"] * 3
    # The base, u00 alone, then u01 and u02 (which start together once it has landed)
    # as one.
    assert len((tmp_path / "proofs").read_text().split()) == 1 + 2


def test_a_batch_gathers_while_the_integration_worktree_is_made(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    state = repo / ".git" / "wtmesh"
    wait = [PY, str(LANES / "wait_for_events.py"), str(state)]
    # Filling the integration worktree lasts, as on a large repository, until every unit
    # is waiting to land: each git call in it waits for that.
    waiting_for_all = " ".join(shlex.quote(a) for a in [
        *wait, "3", "event=unit_state", "phase=waiting"])
    env = git_first_on_path(tmp_path, f"""case "$(pwd) $*" in
  */integration*) {waiting_for_all} || exit 1;;
esac
exec "$REAL_GIT" "$@"
""")
    # Units become ready one after another: each lane ends once the unit before it waits
    # to land. With no landing window, only the integrator's wait for its worktree holds
    # the first ones back for the later ones; without it u00 would be proven alone.
    units = [unit_writing(i, [f"u{i:02d}.txt"], 0) for i in range(3)]
    for i in (1, 2):
        units[i]["lanes"]["coder"]["command"] = shlex.join(
            [*wait, "1", "event=unit_state", f"unit=u{i - 1:02d}", "phase=waiting"]
        ) + " && " + units[i]["lanes"]["coder"]["command"]
    plan = recording_plan(tmp_path, units)
    # Unsandboxed: the lanes read the run's ledger, which the sandbox hides from them.
    res = wtmesh("run", plan, "--json", "--batch", "auto", "--sandbox", "none", cwd=repo,
                 env={**env, "WTMESH_LANDING_WINDOW_S": "0"})
    assert res.returncode == 0, res.stderr
    # The base's own proof (made to wait too), then one for the batch.
    assert len((tmp_path / "proofs").read_text().split()) == 1 + 1


def test_after_a_failure_the_rest_go_round_with_the_units_ready_since(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # u00..u03 are ready together (u00's lane ends once the other three wait to land);
    # u01 breaks the proof. u04 becomes ready during the bisection of that batch (its
    # lane ends once the second proof has started, and the proof of u00 alone waits for
    # it): u02 and u03 are then proven with it, once, not once without it and once more
    # for it.
    units = [unit_writing(i, [f"u{i:02d}.txt"] + (["broken.txt"] if i == 1 else []), 0)
             for i in range(5)]
    for i, waits_for in ((0, after(repo, 3, "event=unit_state", "phase=waiting")),
                         (4, after(repo, 2, "event=proof_started"))):
        units[i]["lanes"]["coder"]["command"] = waits_for + units[i]["lanes"]["coder"][
            "command"]
    proofs = tmp_path / "proofs"
    u04_ready = after(repo, 1, "event=unit_state", "unit=u04", "phase=waiting")
    proof = (f"if [ ! -e u01.txt ]; then {u04_ready} :; fi; t=$(git rev-parse HEAD^{{tree}}); "
             f"if [ -e broken.txt ]; then echo \"$t fail\" >> {proofs}; exit 1; fi; "
             f"echo \"$t pass\" >> {proofs}")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": 5, "proof_command": proof, "units": units}))
    # Unsandboxed: the lanes and the proof read the run's ledger, which the sandbox hides.
    summary = run(repo, plan, "--batch", "auto", "--sandbox", "none")
    assert [u["status"] for u in summary["units"]] == [
        "integrated", "failed", "integrated", "integrated", "integrated"]
    ledger = repo / ".git/wtmesh/runs" / summary["run_id"] / "ledger.jsonl"
    started = [json.loads(line)["units"] for line in ledger.read_text().splitlines()
               if '"proof_started"' in line]
    assert started == [["u00", "u01", "u02", "u03"], ["u00", "u01"], ["u00"],
                       ["u02", "u03", "u04"]]


def test_auto_batch_does_not_wait_for_a_ready_unit_it_cannot_take(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # u01 is ready with u00 but has a proof of its own, so it cannot join u00's batch;
    # u02 is still in its lanes. Waiting for u01 would last the whole (long) window.
    units = [unit_writing(i, [f"u{i:02d}.txt"], {2: 1.0}.get(i, 0)) for i in range(3)]
    units[1]["proof_command"] = "test ! -e u00.txt || test -e u01.txt"  # the base passes
    plan = recording_plan(tmp_path, units)
    res = wtmesh("run", plan, "--json", "--batch", "auto", cwd=repo,
                 env={"WTMESH_LANDING_WINDOW_S": "600"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert [u["status"] for u in res.json()["units"]] == ["integrated"] * 3
