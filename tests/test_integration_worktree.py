"""The integration worktree between proofs: each diff is applied in place onto what the
last landing left there, so what one proof leaves behind must not reach the next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import git, no_worktrees_left, wtmesh


def run(repo: Path, plan: Path, expect: int = 0) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert "Traceback" not in res.stderr
    assert res.returncode == expect, res.stderr
    summary: dict[str, Any] = res.json()
    return summary


def states(summary: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}


def units(count: int) -> list[dict[str, Any]]:
    return [{"id": f"u{i}", "objective": "o", "unit_scope": f"f{i}.txt",
             "lanes": {"coder": {"command": f"echo {i} > f{i}.txt"}}} for i in range(count)]


def test_untracked_files_of_a_proof_are_gone_before_the_next(repo: Path,
                                                             write_plan: Any) -> None:
    plan = write_plan({"proof_command": "test ! -e stamp.txt && touch stamp.txt",
                       "units": units(3)})
    summary = run(repo, plan)
    assert set(states(summary).values()) == {("integrated", None)}


def test_ignored_files_of_a_proof_stay_for_the_next(repo: Path, write_plan: Any,
                                                    tmp_path: Path) -> None:
    """A cache (here under build/, which the fixture ignores) is kept, as a developer's
    checkout keeps it."""
    seen = tmp_path / "runs-seen"
    plan = write_plan({"proof_command": f"mkdir -p build && echo run >> build/runs && "
                                        f"wc -l < build/runs >> {seen}",
                       "units": units(3), "sandbox_writable": [str(tmp_path)]})
    run(repo, plan)
    # The base's own proof, then each unit's.
    assert seen.read_text().split() == ["1", "2", "3", "4"]


def test_a_file_unignored_by_the_change_is_gone_before_its_proof(repo: Path,
                                                                  write_plan: Any) -> None:
    """The base's proof leaves build/out, ignored then; the unit stops ignoring build/,
    which makes build/out an untracked file its proof must not see."""
    plan = write_plan({"proof_command": "test ! -e build/out && mkdir -p build && touch build/out",
                       "units": [
                           {"id": "u1", "objective": "o", "unit_scope": ".gitignore",
                            "lanes": {"coder": {"command": "sed -i '/^build\\/$/d' .gitignore"}}},
                       ]})
    summary = run(repo, plan)
    assert states(summary) == {"u1": ("integrated", None)}


def test_a_proof_that_touches_a_file_it_then_leaves_unchanged(repo: Path,
                                                              write_plan: Any) -> None:
    """``touch`` makes the worktree's recorded file times stale; the next unit's change
    to that file still lands, exactly."""
    plan = write_plan({"proof_command": "touch README.md calc/ops.py", "units": [
        {"id": "u0", "objective": "o", "unit_scope": "f0.txt",
         "lanes": {"coder": {"command": "echo 0 > f0.txt"}}},
        {"id": "u1", "objective": "o", "unit_scope": "README.md",
         "lanes": {"coder": {"command": "echo more >> README.md"}}},
        {"id": "u2", "objective": "o", "unit_scope": "calc/",
         "lanes": {"coder": {"command": "echo '# end' >> calc/ops.py"}}},
    ]})
    summary = run(repo, plan)
    assert set(states(summary).values()) == {("integrated", None)}
    assert (repo / "README.md").read_text().endswith("more\n")
    assert (repo / "calc/ops.py").read_text().endswith("# end\n")


def test_units_after_a_three_way_merge_land_on_its_result(repo: Path,
                                                          write_plan: Any) -> None:
    """The first unit starts from an older base and needs a three-way merge; the proof of
    each later unit runs on a worktree holding exactly its candidate."""
    (repo / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    git(repo, "add", "lines.txt")
    git(repo, "commit", "-q", "-m", "lines")
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / "lines.txt").read_text().replace("line 3\n", "line 3 (target)\n")
    (repo / "lines.txt").write_text(text)
    git(repo, "commit", "-q", "-am", "target moves")
    proof = 'test -z "$(git status --porcelain)" && grep -q "line 3 (target)" lines.txt'
    plan = write_plan({"base": base, "proof_command": proof, "units": [
        {"id": "merge", "objective": "o", "unit_scope": "lines.txt",
         "lanes": {"coder": {"command": "sed -i 's/^line 5$/line 5 (unit)/' lines.txt"}}},
        *units(2)]})
    summary = run(repo, plan)
    assert set(states(summary).values()) == {("integrated", None)}
    for unit in summary["units"]:
        tree = git(repo, "ls-tree", "-r", "--name-only", unit["commit"]).splitlines()
        assert "lines.txt" in tree
    assert "line 5 (unit)\n" in (repo / "lines.txt").read_text()
    assert (repo / "f1.txt").read_text() == "1\n"


def test_a_users_apply_settings_do_not_change_what_lands(repo: Path,
                                                        write_plan: Any) -> None:
    """apply.whitespace=fix would strip the unit's trailing spaces, =error refuse them."""
    for setting in ("fix", "error"):
        git(repo, "config", "apply.whitespace", setting)
        plan = write_plan({"units": [
            {"id": f"ws-{setting}", "objective": "o", "unit_scope": f"{setting}.txt",
             "lanes": {"coder": {"command": f"printf 'trailing   \\n' > {setting}.txt"}}}]})
        summary = run(repo, plan)
        assert states(summary) == {f"ws-{setting}": ("integrated", None)}
        assert (repo / f"{setting}.txt").read_bytes() == b"trailing   \n"


def test_a_failed_proof_leaves_nothing_for_the_next_unit(repo: Path, write_plan: Any) -> None:
    """The failing unit's files are in the worktree when its proof fails; the next unit is
    applied onto the landed head, without them."""
    plan = write_plan({"proof_command": "test ! -e bad.txt", "units": [
        {"id": "bad", "objective": "o", "unit_scope": "bad.txt",
         "lanes": {"coder": {"command": "echo bad > bad.txt"}}},
        *units(2)]})
    summary = run(repo, plan, expect=1)
    assert states(summary) == {"bad": ("failed", "proof_failed"), "u0": ("integrated", None),
                               "u1": ("integrated", None)}
    assert not (repo / "bad.txt").exists()
    ledger = repo / ".git/wtmesh/runs" / summary["run_id"] / "ledger.jsonl"
    proofs = [json.loads(line) for line in ledger.read_text().splitlines()
              if '"proof_finished"' in line]
    assert [p["status"] for p in proofs] == ["fail", "pass", "pass"]


@pytest.mark.parametrize("breaker", ["rm -rf .git; exit 1", "rm -rf -- *",
                                     "rm -f \"$(git rev-parse --git-dir)/index\"; exit 1"])
def test_a_proof_that_breaks_the_worktree_fails_and_the_next_unit_lands(
        repo: Path, write_plan: Any, breaker: str) -> None:
    """A proof may damage the integration worktree itself; that unit fails its proof,
    and the next unit gets a worktree that works."""
    # Each proof passes on the base: the breaker only breaks where the unit's b.txt is.
    plan = write_plan({"proof_command": "test -f README.md && test ! -e b.txt", "units": [
        {"id": "breaks", "objective": "o", "unit_scope": "b.txt",
         "proof_command": f"if [ -e b.txt ]; then {breaker}; fi",
         "lanes": {"coder": {"command": "echo b > b.txt"}}},
        *units(2)]})
    summary = run(repo, plan, expect=1)
    assert states(summary) == {"breaks": ("failed", "proof_failed"),
                               "u0": ("integrated", None), "u1": ("integrated", None)}
    assert not (repo / "b.txt").exists()
    assert no_worktrees_left(repo)
