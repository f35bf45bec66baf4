"""The worktree pool: a reused worktree is indistinguishable from a fresh one."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import git, no_worktrees_left, wtmesh

# Runs first in every unit: what the unit finds in its worktree, before it changes anything.
LOOK = ('printf \'{"unit": "%s", "worktree": "%s", "head": "%s", "status": "%s"}\\n\' '
        '"$WTMESH_UNIT_ID" "$PWD" "$(git rev-parse HEAD)" '
        '"$(git status --porcelain --ignored | tr \'\\n\' \' \')" >> {seen}')
# Leaves ignored files behind (a build directory, a .env), a staged file, and its change.
MESS = ("mkdir -p build; echo o > build/out.o; echo s > .env; echo {id} > {id}.txt; "
        "git add {id}.txt")


def test_reused_worktree_holds_nothing_of_the_previous_unit(repo: Path,
                                                             tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    plan = tmp_path / "plan.json"
    look = LOOK.replace("{seen}", str(seen))
    plan.write_text(json.dumps({
        "max_active": 1, "proof_command": "true",
        "lanes": {"coder": {"command": f"{look}; {MESS}"}},
        "units": [
            # Fails its scope check, leaving an untracked file in the worktree too.
            {"id": "stray", "objective": "o", "unit_scope": "stray-ok.txt",
             "lanes": {"coder": {"command": f"{look}; {MESS}; echo x > stray.txt"}}},
            *({"id": f"u{n}", "objective": "o", "unit_scope": f"u{n}.txt"}
              for n in range(3))]}))
    # Unsandboxed: the lanes stage files, and a sandboxed lane's git cannot write the
    # repository's object store.
    res = wtmesh("run", plan, "--json", "--sandbox", "none", cwd=repo)
    assert res.returncode == 1, res.stderr
    units = res.json()["units"]
    assert [u["status"] for u in units] == ["failed", "integrated", "integrated",
                                            "integrated"]
    commits = [u["commit"] for u in units[1:]]
    looks = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [look["unit"] for look in looks] == ["stray", "u0", "u1", "u2"]
    assert len({look["worktree"] for look in looks}) == 1, "the worktree was not reused"
    for look in looks:
        assert look["status"].strip() == "", look  # nothing tracked, untracked or ignored
    # Each unit started, detached, from the integrated head of its moment.
    base = git(repo, "rev-parse", "main~3")
    assert looks[0]["head"] == base
    assert all(look["head"] in (base, *commits) for look in looks)
    assert not (repo / "stray.txt").exists()
    assert no_worktrees_left(repo)
