"""A unit's diff (SPEC 3.5): every kind of change, user diff settings neutralised, scope."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import git, lane, wtmesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unidiff.patch import PatchSet

from worktree_mesh import diffs
from worktree_mesh.git import Git, discover


def run_one(repo: Path, write_plan: Any, command: Any, scope: Any = "**",
            mode: str = "commit_first") -> dict[str, Any]:
    plan = write_plan({"delivery_mode": mode, "units": [
        {"id": "u1", "objective": "o", "unit_scope": scope,
         "lanes": {"coder": {"command": command}}}]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    unit: dict[str, Any] = res.json()["units"][0]
    unit["_summary"] = res.json()
    return unit


def test_every_kind_of_change_lands(repo: Path, write_plan: Any) -> None:
    command = lane("act.py", "rename:calc/parse.py=calc/parsing.py", "delete:README.md",
                   "binary:data/blob.bin", "write:calc/new.py=x = 1\\n",
                   "chmod:calc/ops.py=755", "symlink:docs-link=calc/ops.py")
    unit = run_one(repo, write_plan, command)
    assert unit["status"] == "integrated", unit
    assert set(unit["files"]) == {"calc/parse.py", "calc/parsing.py", "README.md",
                                  "data/blob.bin", "calc/new.py", "calc/ops.py", "docs-link"}
    assert not (repo / "calc/parse.py").exists() and (repo / "calc/parsing.py").exists()
    assert not (repo / "README.md").exists()
    assert (repo / "data/blob.bin").read_bytes() == bytes(range(256))
    assert os.access(repo / "calc/ops.py", os.X_OK)
    assert os.readlink(repo / "docs-link") == "calc/ops.py"
    assert git(repo, "status", "--porcelain") == ""


def test_user_diff_settings_cannot_break_the_diff(repo: Path, write_plan: Any,
                                                  tmp_path: Path) -> None:
    """External diff, textconv, no prefixes, mnemonic prefixes, renames off, tiny
    context: none of it may reach the diff wtmesh applies."""
    ext = tmp_path / "ext-diff"
    ext.write_text("#!/bin/sh\necho EXTERNAL\n")
    ext.chmod(0o755)
    for key, value in [("diff.external", str(ext)), ("diff.noprefix", "true"),
                       ("diff.mnemonicPrefix", "true"), ("diff.renames", "false"),
                       ("diff.context", "0"), ("diff.txt.textconv", "tr a-z A-Z"),
                       ("core.quotePath", "false"), ("color.ui", "always")]:
        git(repo, "config", key, value)
    (repo / ".gitattributes").write_text("*.txt diff=txt\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "attrs")
    for mode in ("commit_first", "patch_first"):
        unit = run_one(repo, write_plan,
                       lane("act.py", f"write:notes-{mode}.txt=lower case\\n",
                            "append:calc/ops.py=# more\\n"), mode=mode)
        assert unit["status"] == "integrated", unit
        diff = (repo / ".git/wtmesh/runs" / unit["_summary"]["run_id"] / "units/u1/unit.diff"
                ).read_text()
        assert "EXTERNAL" not in diff and "LOWER CASE" not in diff
        assert f"+++ b/notes-{mode}.txt" in diff
        assert "index 0000000000000000000000000000000000000000.." in diff  # full index
    assert (repo / "notes-commit_first.txt").read_text() == "lower case\n"
    # The patch series, written under the same settings, still applies with git am.
    summary = unit["_summary"]
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "checkout", "-q", "--detach", summary["base"])
    git(clone, "am", "-q", str(Path(summary["patch_dir"]) / "0001-u1.patch"))
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")


def test_non_utf8_and_odd_file_names(repo: Path, write_plan: Any) -> None:
    script = ("import pathlib; "
              "pathlib.Path(b'caf\\xe9 \"q\".md'.decode('utf-8', 'surrogateescape'))"
              ".write_bytes(b'x\\n'); pathlib.Path('tab\\tname.txt').write_text('t\\n')")
    import sys
    unit = run_one(repo, write_plan, [sys.executable, "-c", script])
    assert unit["status"] == "integrated", unit
    names = os.listdir(os.fsencode(repo))
    assert b'caf\xe9 "q".md' in names and b"tab\tname.txt" in names


def test_rename_out_of_scope_is_a_violation_on_either_side(repo: Path,
                                                            write_plan: Any) -> None:
    into = run_one(repo, write_plan, lane("act.py", "rename:calc/parse.py=other/parse.py"),
                   scope="calc/")
    assert (into["status"], into["failure_code"]) == ("failed", "scope_violation")
    # Moving a file into the scope from outside it touches the outside path too.
    out_of = run_one(repo, write_plan, lane("act.py", "rename:README.md=calc/README.md"),
                     scope="calc/")
    assert (out_of["status"], out_of["failure_code"]) == ("failed", "scope_violation")
    assert (repo / "README.md").exists() and (repo / "calc/parse.py").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside", "calc/../../x", ".git/config"])
def test_symlink_leaving_the_repo_is_a_violation(repo: Path, write_plan: Any,
                                                 target: str) -> None:
    unit = run_one(repo, write_plan, lane("act.py", f"symlink:link={target}"))
    assert (unit["status"], unit["failure_code"]) == ("failed", "scope_violation")
    assert not os.path.lexists(repo / "link")


def test_symlink_inside_the_repo_is_fine(repo: Path, write_plan: Any) -> None:
    unit = run_one(repo, write_plan, lane("act.py", "symlink:calc/alias.py=ops.py"),
                   scope="calc/")
    assert unit["status"] == "integrated"


def test_ignored_files_are_not_part_of_the_change(repo: Path, write_plan: Any) -> None:
    unit = run_one(repo, write_plan, lane("act.py", "write:build/out.o=bin",
                                          "write:calc/__pycache__/x.pyc=c", "write:ok.txt=1"))
    assert unit["files"] == ["ok.txt"]


def test_edits_that_cancel_out_are_no_diff(repo: Path, write_plan: Any) -> None:
    unit = run_one(repo, write_plan, "cp calc/parse.py keep && echo junk > calc/parse.py && "
                   "mv keep calc/parse.py")
    assert (unit["status"], unit["failure_code"]) == ("no_diff", None)
    assert git(repo, "log", "--format=%s") == "initial"


def test_a_large_diff_lands_intact(repo: Path, write_plan: Any) -> None:
    import sys
    script = ("import pathlib\nfor i in range(300):\n"
              "    pathlib.Path(f'gen/m{i}.py').parent.mkdir(exist_ok=True)\n"
              "    pathlib.Path(f'gen/m{i}.py').write_text(''.join(f'v{j} = {j}\\n' "
              "for j in range(200)))\n")
    unit = run_one(repo, write_plan, [sys.executable, "-c", script], scope="gen/")
    assert unit["status"] == "integrated"
    assert len(unit["files"]) == 300
    assert (repo / "gen/m299.py").read_text().count("\n") == 200


def test_one_diff_tree_gives_the_same_patch_and_changes_as_two(repo: Path,
                                                               tmp_path: Path) -> None:
    """The unit's diff and its file list come from one ``diff-tree --raw -p -z``; they are
    exactly what the separate patch and raw calls give, odd names and all."""
    before = git(repo, "rev-parse", "HEAD")
    git(repo, "mv", "calc/parse.py", "calc/parsing.py")
    (repo / "data.bin").write_bytes(bytes(range(256)))
    (repo / "caf\u00e9 one.md").write_text("x\n")
    (repo / os.fsdecode(b"raw-\xe9.txt")).write_text("latin-1 name\n")
    (repo / "calc/ops.py").chmod(0o755)
    os.symlink("calc/ops.py", repo / "link")
    (repo / "README.md").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "many kinds")
    g = Git(discover(repo).common_dir)
    out = tmp_path / "out"
    changes, offset = g.diff_to(before, "HEAD", out)
    assert out.read_bytes()[offset:] == g.diff(before, "HEAD")
    assert changes == g.changes(before, "HEAD")
    assert len(changes) == 7
    assert g.diff_to("HEAD", "HEAD", out) == ([], 0)
    assert out.read_bytes() == b""


# Lines chosen to look like a diff's own: headers, hunk headers, markers, blanks, CRs.
DIFF_LIKE_LINES = st.sampled_from(["", " ", "+", "-", "--- a/x", "+++ b/x", "@@ -1 +1 @@",
                                   "\\ No newline at end of file", "diff --git a/x b/x",
                                   "a", "b", "c\r", "+a", "-b"])
FILE_LINES = st.lists(DIFF_LIKE_LINES, max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(FILE_LINES, st.booleans(), FILE_LINES, st.booleans()),
                min_size=1, max_size=3))
def test_lines_counted_as_a_stream_are_unidiffs_counts(tmp_path: Path, files: list[
        tuple[list[str], bool, list[str], bool]]) -> None:
    """``LineCount`` reads a diff a line at a time and keeps nothing: on git's diffs of
    files whose lines look like a diff's own, it counts what unidiff's ``PatchSet``
    counts."""
    case = tmp_path / "case"
    shutil.rmtree(case, ignore_errors=True)
    for side in ("old", "new"):
        (case / side).mkdir(parents=True)
    for number, (old, old_eol, new, new_eol) in enumerate(files):
        for side, lines, eol in (("old", old, old_eol), ("new", new, new_eol)):
            text = "\n".join(lines) + ("\n" if eol and lines else "")
            (case / side / f"f{number}.txt").write_bytes(text.encode())
    raw = subprocess.run(["git", "diff", "--no-index", "--no-color", "old", "new"], cwd=case,
                         capture_output=True, check=False).stdout
    count = diffs.LineCount()
    for line in raw.splitlines(keepends=True):
        count.feed(line)
    patch = PatchSet(raw.decode("utf-8", "surrogateescape"))
    assert (count.added, count.removed) == (sum(f.added for f in patch),
                                            sum(f.removed for f in patch))
