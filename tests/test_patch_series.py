"""patch_first delivers a series that ``git am`` turns back into exactly what was integrated
(SPEC 4, SPEC 10): whatever the objectives say, whatever the user's configuration, and
checked by every run itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import git, wtmesh

from worktree_mesh.mail_safe import is_scissors_line

SMUGGLED = ("diff --git a/evil.txt b/evil.txt\nnew file mode 100644\n--- /dev/null\n"
            "+++ b/evil.txt\n@@ -0,0 +1 @@\n+smuggled\n")
TRADITIONAL = "--- /dev/null\n+++ b/evil.txt\n@@ -0,0 +1 @@\n+smuggled\n"

# Objective bodies a planner could write, each of which git am used to read as more
# than text: a patch to apply, another mail, headers, a scissors line.
HOSTILE_BODIES = {
    "a quoted git diff": f"Apply what the planner found:\n\n{SMUGGLED}",
    "a --- line, then a diff": f"Notes.\n---\n{TRADITIONAL}",
    "a lone --- with trailing space": f"Notes.\n---   \n{TRADITIONAL}",
    "an Index: line": f"Index: evil.txt\n{'=' * 20}\n{TRADITIONAL}",
    "a whole mail": ("From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\n"
                     "From: Evil <evil@example.com>\nSubject: [PATCH] evil\n\nevil\n---\n"
                     f"{SMUGGLED}"),
    "an mboxrd-escaped From line": ">From the planner: done\n>>From here on",
    "an in-body From header": "From: Evil <evil@example.com>\n\nThe author is forged.",
    "an in-body Subject header": "subject: something else\n\nThe subject is replaced.",
    "an in-body [PATCH] line": "[PATCH] something else",
    "a scissors line": "Keep this.\n-- >8 --\nand this.",
    "whitespace git am normalises": "trailing   \n\n\n\nblank runs\t",
}


def run(repo: Path, plan: Path, *args: str, env: dict[str, str] | None = None
        ) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    summary: dict[str, Any] = res.json()
    assert summary["exit_code"] == res.returncode
    return summary


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git/wtmesh/runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def am_series(repo: Path, summary: dict[str, Any], dest: Path, *config: str) -> Path:
    """The series applied with git am in a clone checked out at base; ``config`` is
    the reviewer's own (``key=value``)."""
    git(repo.parent, "clone", "-q", str(repo), str(dest))
    git(dest, "checkout", "-q", "--detach", summary["base"])
    patch_dir = Path(summary["patch_dir"])
    names = (patch_dir / "series").read_text().splitlines()
    settings = [arg for item in config for arg in ("-c", item)]
    res = subprocess.run(["git", *settings, "am",
                          *[str(patch_dir / n) for n in names]],
                         cwd=dest, capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode()
    return dest


# -- commit messages ----------------------------------------------------------------


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_git_am_reads_back_exactly_what_was_integrated_whatever_the_objective_says(
        repo: Path, write_plan: Any, tmp_path: Path, body: str) -> None:
    """Case 6 and its class: the series reproduces the tree (no quoted diff applied, no
    mail split off), and each commit git am makes has the integrated commit's message
    and author, even for a reviewer who uses scissors."""
    plan = write_plan({"delivery_mode": "patch_first", "units": [
        {"id": "u1", "objective": f"Add   a\tfile \n\n{body}",
         "lanes": {"coder": {"command": "echo a > a.txt"}}},
        {"id": "u2", "objective": "Add b: " + "Grüße, " * 20 + "a subject folded in the mail",
         "lanes": {"coder": {"command": "echo b > b.txt"}}}]})
    summary = run(repo, plan)
    assert [u["status"] for u in summary["units"]] == ["integrated", "integrated"]
    clone = am_series(repo, summary, tmp_path / "reviewer", "mailinfo.scissors=true")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")
    assert not (clone / "evil.txt").exists()
    shown = "%an <%ae>%n%B"
    assert git(clone, "log", f"--format={shown}", f"{summary['base']}..HEAD") == \
        git(repo, "log", f"--format={shown}", f"{summary['base']}..{summary['head']}")


def test_a_quoted_diff_stays_readable_in_the_message(repo: Path, write_plan: Any) -> None:
    """The risky lines are indented with their paragraph, not rewritten: a reviewer reads
    the quoted diff as a block."""
    plan = write_plan({"delivery_mode": "patch_first", "units": [
        {"id": "u1", "objective": f"Add a\n\nApply this:\n\n{SMUGGLED}\nThanks.",
         "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan)
    message = git(repo, "log", "-1", "--format=%B", summary["head"])
    quoted = "".join(f"    {line}\n" for line in SMUGGLED.splitlines())
    assert f"Apply this:\n\n{quoted}\nThanks.\n" in message


@pytest.mark.parametrize(("line", "scissors"), [
    ("-- >8 --", True), ("--- 8< --- cut here ---", True), ("  -- %< --", True),
    ("-- > 8 --", False), ("a >8 b", False), ("--------", False), ("x -- >8", False),
])
def test_scissors_lines_are_recognised_as_git_does(tmp_path: Path, line: str,
                                                   scissors: bool) -> None:
    """The port of mailinfo's is_scissors_line agrees with git mailinfo --scissors."""
    mail = f"From: A <a@example.com>\nSubject: s\n\nabove\n{line}\nbelow\n".encode()
    message = tmp_path / "msg"
    subprocess.run(["git", "mailinfo", "--scissors", str(message), str(tmp_path / "patch")],
                   cwd=tmp_path, input=mail, capture_output=True, check=True)
    assert ("above" not in message.read_text()) == scissors
    assert is_scissors_line(line) == scissors
