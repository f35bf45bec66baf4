"""patch_first delivers a series that ``git am`` turns back into exactly what was integrated
(SPEC 4, SPEC 10): whatever the objectives say, whatever the user's configuration, and
checked by every run itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    git,
    git_first_on_path,
    make_repo,
    no_worktrees_left,
    repo_snapshot,
    wtmesh,
)

from worktree_mesh import series_check
from worktree_mesh.git import Git, Sha
from worktree_mesh.mail_safe import is_scissors_line
from worktree_mesh.series_check import REVIEWER_AM

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
    """The series applied as a reviewer would (the command the run prints), in a clone
    checked out at base; ``config`` is the reviewer's own (``key=value``)."""
    git(repo.parent, "clone", "-q", str(repo), str(dest))
    git(dest, "checkout", "-q", "--detach", summary["base"])
    patch_dir = Path(summary["patch_dir"])
    names = (patch_dir / "series").read_text().splitlines()
    settings = [arg for item in config for arg in ("-c", item)]
    res = subprocess.run(["git", *settings, *REVIEWER_AM.split()[1:],
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


# -- user configuration ---------------------------------------------------------------


def _lines(name: str, count: int, blank_every: int = 0) -> str:
    return "".join("\n" if blank_every and i % blank_every == 0 else f"{name} {i}\n"
                   for i in range(1, count + 1))


@pytest.fixture(scope="module")
def delivery_template(hermetic_module: None, tmp_path_factory: pytest.TempPathFactory
                      ) -> Path:
    """A repository with what patches are made of: context with blank lines, CRLF line
    ends, a file to rename, one to delete, one whose mode changes."""
    repo = make_repo(tmp_path_factory.mktemp("delivery") / "repo")
    (repo / "blanks.txt").write_text(_lines("blank", 40, blank_every=3))
    (repo / "crlf.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    (repo / "old-name.txt").write_text(_lines("kept", 20))
    (repo / "gone.txt").write_text("gone\n")
    (repo / "run.sh").write_text("echo run\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files to patch")
    return repo


# Two units (each unit costs a run time; the config table runs this plan many times).
# Lanes edit with patterns that hold under core.autocrlf, which puts CRs in checkouts.
DELIVERY_PLAN = {"delivery_mode": "patch_first", "units": [
    {"id": "u-text", "objective": "Édit blanks: Grüße\n\nFrom the planner: keep it short.",
     "unit_scope": ["blanks.txt", "trail.txt", "logo.bin", "crlf.txt"],
     "lanes": {"coder": {"command": (
         "sed -i 's/^blank 8\\(\\r*\\)$/blank eight\\1/; s/^blank 17\\(\\r*\\)$/seventeen\\1/'"
         " blanks.txt && printf 'x  \\n \\ty\\n\\n' > trail.txt"
         " && printf '\\000\\001\\002\\377' > logo.bin"
         " && printf 'one\\r\\nTWO\\r\\nthree\\r\\nfour\\r\\n' > crlf.txt")}}},
    {"id": "u-files", "objective": "Rename, delete, chmod, edit code",
     "unit_scope": ["old-name.txt", "new-name.txt", "gone.txt", "run.sh", "calc/"],
     "lanes": {"coder": {"command": (
         "mv old-name.txt new-name.txt && echo more >> new-name.txt && rm gone.txt"
         " && chmod +x run.sh && sed -i 's/a + b/b + a/' calc/ops.py")}}},
]}


def delivered(template: Path, dest: Path, config: tuple[str, ...],
              write_plan: Any) -> dict[str, Any]:
    """A patch_first run of DELIVERY_PLAN with ``config`` set in the repository: what it
    delivered, with what differs between any two runs (run id, commit ids) taken out."""
    repo = Path(shutil.copytree(template, dest, symlinks=True))
    order = dest.parent / "order"
    order.write_text("run.sh\n*\n")
    for item in config:
        key, _, value = item.partition("=")
        git(repo, "config", "--add", key, value.replace("{order}", str(order)))
    summary = run(repo, write_plan(DELIVERY_PLAN, f"plan-{dest.name}.json"))
    run_id = summary["run_id"]
    patch_dir = Path(summary["patch_dir"])
    names = (patch_dir / "series").read_text().splitlines()
    return {
        "exit_code": summary["exit_code"],
        "states": {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]},
        "tree": git(repo, "rev-parse", f"{summary['head']}^{{tree}}"),
        "series": names,
        "patches": [(patch_dir / n).read_bytes().split(b"\n", 1)[1]
                    .replace(run_id.encode(), b"RUN") for n in names],
    }


@pytest.fixture(scope="module")
def delivered_without_config(delivery_template: Path, tmp_path_factory: pytest.TempPathFactory
                             ) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference")

    def write_plan(data: dict[str, Any], name: str) -> Path:
        (out / name).write_text(json.dumps(data))
        return out / name

    reference = delivered(delivery_template, out / "repo", (), write_plan)
    assert reference["exit_code"] == 0
    assert set(reference["states"].values()) == {("integrated", None)}
    return reference


# Settings that shaped patch files, made them fail git am, or crashed the run (case 7),
# and their neighbours; {order} is a diff.orderFile listing run.sh first.
DELIVERY_CONFIG = [
    ("diff.context=0",), ("diff.context=10",), ("diff.interHunkContext=10",),
    ("diff.noprefix=true",), ("diff.mnemonicPrefix=true",), ("diff.algorithm=histogram",),
    ("diff.renames=false",), ("diff.suppressBlankEmpty=true",), ("diff.orderFile={order}",),
    ("core.bigFileThreshold=10",), ("format.useAutoBase=true",), ("format.signature=EVIL",),
    ("format.signatureFile=/etc/hostname",),
    ("format.headers=Content-Transfer-Encoding: base64",), ("format.subjectPrefix=EVIL",),
    ("format.numbered=true",), ("format.coverLetter=true",), ("format.thread=shallow",),
    ("format.suffix=.txt",), ("format.signOff=true",),
    ("format.from=Evil <evil@example.com>",), ("format.to=to@example.com",),
    ("format.cc=cc@example.com",), ("format.attach=true",),
    ("format.encodeEmailHeaders=false",), ("i18n.logOutputEncoding=ISO-8859-1",),
    ("i18n.commitEncoding=ISO-8859-1",), ("commit.gpgSign=true", "gpg.program=false"),
    ("core.autocrlf=true",), ("core.whitespace=cr-at-eol,tab-in-indent",),
    ("apply.whitespace=fix",), ("apply.ignoreWhitespace=change",),
]


@pytest.mark.parametrize("config", DELIVERY_CONFIG, ids=" ".join)
def test_no_setting_changes_the_series(delivery_template: Path,
                                       delivered_without_config: dict[str, Any],
                                       tmp_path: Path, write_plan: Any,
                                       config: tuple[str, ...]) -> None:
    """Case 7 (diff.context=0 made the series fail git am, format.useAutoBase crashed the
    run): with the setting in the repository's config the run delivers byte for byte
    the series it delivers without it, every patch of it checked (a unit whose patch
    did not reproduce would have failed)."""
    got = delivered(delivery_template, tmp_path / "repo", config, write_plan)
    assert got == delivered_without_config


@pytest.fixture(scope="module")
def landing_template(hermetic_module: None, tmp_path_factory: pytest.TempPathFactory
                     ) -> tuple[Path, str]:
    """A repository whose target moved on since the plan's base: one file three-way
    merges cleanly, one conflicts only in whitespace, one conflicts outright."""
    repo = make_repo(tmp_path_factory.mktemp("landing") / "repo")
    (repo / "merges.txt").write_text(_lines("line", 20))
    (repo / "spaces.txt").write_text("a\nb  x\nc\n")
    (repo / "conflicts.txt").write_text(_lines("line", 10))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files to conflict")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "merges.txt").write_text(_lines("line", 20).replace("line 3\n", "line 3 (t)\n"))
    (repo / "spaces.txt").write_text("a\nb\tx\nc\n")
    (repo / "conflicts.txt").write_text(_lines("line", 10).replace("line 5\n", "five (t)\n"))
    git(repo, "commit", "-q", "-am", "the target moves on")
    return repo, base


# Lanes edit with patterns that hold under core.autocrlf (CRs in the checkout).
LANDING_UNITS = [
    {"id": "u-merges", "objective": "Three-way", "unit_scope": "merges.txt",
     "lanes": {"coder": {"command": "sed -i 's/^line 5\\(\\r*\\)$/line 5 (u)\\1/' merges.txt"}}},
    {"id": "u-spaces", "objective": "Whitespace conflict", "unit_scope": "spaces.txt",
     "lanes": {"coder": {"command": "sed -i 's/^b  x\\(\\r*\\)$/b y\\1/' spaces.txt"}}},
    {"id": "u-conflicts", "objective": "Conflict", "unit_scope": "conflicts.txt",
     "lanes": {"coder": {"command": "sed -i 's/^line 5\\(\\r*\\)$/five (u)\\1/' conflicts.txt"}}},
    {"id": "u-new", "objective": "Grüße: whitespace errors", "unit_scope": "trail.txt",
     "lanes": {"coder": {"command": "printf 'x  \\n \\ty\\n\\n' > trail.txt"}}},
]


def landed(template: tuple[Path, str], dest: Path, config: tuple[str, ...],
           write_plan: Any) -> dict[str, Any]:
    """A commit_first run from the old base with ``config`` set: what landed."""
    repo = Path(shutil.copytree(template[0], dest, symlinks=True))
    for item in config:
        key, _, value = item.partition("=")
        git(repo, "config", "--add", key, value)
    plan = write_plan({"base": template[1], "units": LANDING_UNITS}, f"plan-{dest.name}.json")
    summary = run(repo, plan)
    return {
        "states": {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]},
        "tree": git(repo, "rev-parse", "main^{tree}"),
        "messages": git(repo, "-c", "i18n.logOutputEncoding=UTF-8", "log", "--format=%B",
                        "HEAD~1..main")
        .replace(summary["run_id"], "RUN"),
        "encoding": git(repo, "log", "--format=%e", "HEAD~1..main"),
    }


@pytest.fixture(scope="module")
def landed_without_config(landing_template: tuple[Path, str],
                          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("landed")

    def write_plan(data: dict[str, Any], name: str) -> Path:
        (out / name).write_text(json.dumps(data))
        return out / name

    reference = landed(landing_template, out / "repo", (), write_plan)
    assert reference["states"] == {
        "u-merges": ("integrated", None), "u-spaces": ("failed", "integration_conflict"),
        "u-conflicts": ("failed", "integration_conflict"), "u-new": ("integrated", None)}
    return reference


LANDING_CONFIG = [
    ("apply.ignoreWhitespace=change",), ("apply.whitespace=fix",), ("apply.whitespace=error",),
    ("core.whitespace=trailing-space,space-before-tab,tab-in-indent",),
    ("merge.default=union",), ("merge.conflictStyle=diff3",),
    ("rerere.enabled=true", "rerere.autoUpdate=true"), ("core.autocrlf=true",),
    ("commit.gpgSign=true", "gpg.program=false"), ("i18n.commitEncoding=ISO-8859-1",),
]


@pytest.mark.parametrize("config", LANDING_CONFIG, ids=" ".join)
def test_no_setting_changes_what_lands(landing_template: tuple[Path, str],
                                       landed_without_config: dict[str, Any],
                                       tmp_path: Path, write_plan: Any,
                                       config: tuple[str, ...]) -> None:
    """Case 7 (apply.ignoreWhitespace=change turned an integration_conflict into a
    landing): the same units land, as the same tree and messages, and the same ones
    conflict."""
    assert landed(landing_template, tmp_path / "repo", config, write_plan) == \
        landed_without_config


# -- every run checks its series ------------------------------------------------------


def two_units(write_plan: Any) -> Path:
    return write_plan({"delivery_mode": "patch_first", "units": [
        {"id": "u1", "objective": "Add a", "lanes": {"coder": {"command": "echo a > a.txt"}}},
        {"id": "u2", "objective": "Add b", "lanes": {"coder": {"command": "echo b > b.txt"}}}]})


def test_a_unit_whose_patch_does_not_reproduce_it_is_not_delivered(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """A format-patch that writes something else than the commit (as a setting nobody
    thought of would) for u1: u1 fails delivery_blocked, once, naming the file, and is
    not in the series; u2 goes onto base without it, and the series delivered is one a
    reviewer's git am turns into exactly the integrated tree."""
    env = git_first_on_path(tmp_path, (
        'case " $* " in *" format-patch "*)\n'
        '  out=$(mktemp); "$REAL_GIT" "$@" > "$out" || exit $?\n'
        "  sed 's/^+a$/+tampered/' \"$out\"; rm -f \"$out\"; exit 0;;\nesac\n"
        'exec "$REAL_GIT" "$@"\n'))
    summary = run(repo, two_units(write_plan), env=env)
    assert summary["exit_code"] == 1
    units = {u["id"]: u for u in summary["units"]}
    assert {uid: (u["status"], u["failure_code"]) for uid, u in units.items()} == {
        "u1": ("failed", "delivery_blocked"), "u2": ("integrated", None)}
    assert units["u1"]["patch"] is None and units["u2"]["patch"] == "0001-u2.patch"
    finished = [r for r in ledger(repo, summary["run_id"]) if r["event"] == "unit_finished"]
    assert [r["unit"] for r in finished] == ["u1", "u2"]  # SPEC 5: exactly one each
    assert "git am" in finished[0]["notes"] and "a.txt" in finished[0]["notes"]
    assert git(repo, "ls-tree", "--name-only", summary["head"]).count("a.txt") == 0
    clone = am_series(repo, summary, tmp_path / "reviewer")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")
    report = (repo / ".git/wtmesh/runs" / summary["run_id"] / "report.md").read_text()
    assert "1 patches in" in report and f"{REVIEWER_AM} " in report
    status = wtmesh("status", "--json", cwd=repo).json()
    assert {u["id"]: u["state"] for u in status["units"]} == {"u1": "failed",
                                                              "u2": "integrated"}
    assert no_worktrees_left(repo)  # the check's scratch worktree is gone too


def test_a_batch_delivers_a_series_that_reproduces_what_was_integrated(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """--batch: each patch is checked before the batch's commits are made again with
    trailers; the series of those commits reproduces the tree all the same, whatever
    the objective says."""
    plan = write_plan({"delivery_mode": "patch_first", "units": [
        {"id": f"u{n}", "objective": f"Add {n}\n\n{HOSTILE_BODIES['a quoted git diff']}",
         "lanes": {"coder": {"command": f"echo {n} > f{n}.txt"}}} for n in (1, 2, 3)]})
    summary = run(repo, plan, "--batch", "3")
    assert [u["status"] for u in summary["units"]] == ["integrated"] * 3
    assert "Wtmesh-Batch: 1/" in git(repo, "log", "--format=%B", summary["head"] + "~2", "-1")
    clone = am_series(repo, summary, tmp_path / "reviewer")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                          summary["head"] + "^{tree}")
    assert not (clone / "evil.txt").exists()


def test_killed_before_a_patch_is_written_resume_rewrites_the_series(
        repo: Path, write_plan: Any) -> None:
    """A patch file changed while the run was down is written again from the commits."""
    plan = two_units(write_plan)
    first = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:patch:2"})
    assert first.returncode == -9, first.stderr
    (run_dir,) = (repo / ".git/wtmesh/runs").iterdir()
    patch = run_dir / "patches" / "0001-u1.patch"
    written = patch.read_bytes()
    patch.write_bytes(written.replace(b"\n+a\n", b"\n+tampered\n"))
    summary = run(repo, plan, "--resume")
    assert summary["exit_code"] == 0
    assert patch.read_bytes() == written
    assert (run_dir / "patches" / "series").read_text() == "0001-u1.patch\n0002-u2.patch\n"
    finished = [r["unit"] for r in ledger(repo, run_dir.name) if r["event"] == "unit_finished"]
    assert finished == ["u1", "u2"]
    assert no_worktrees_left(repo)


@pytest.fixture
def commits(repo: Path) -> tuple[Git, Sha, Sha, Sha]:
    """Two commits after base on a branch of their own."""
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "work")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "add a")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "more\n")
    git(repo, "commit", "-q", "-am", "more readme")
    second = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return Git(repo / ".git"), Sha(base), Sha(first), Sha(second)


def test_the_check_touches_nothing_of_the_users(repo: Path, tmp_path: Path,
                                                commits: tuple[Git, Sha, Sha, Sha]) -> None:
    handle, base, first, second = commits
    before = repo_snapshot(repo)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "left by a crash").write_text("x")
    assert series_check.undelivered(handle, scratch, base, first) is None
    assert series_check.undelivered(handle, scratch, first, second) is None
    after = repo_snapshot(repo)
    assert {**after, "state_dir": None} == {**before, "state_dir": None}
    assert not scratch.exists()
    assert not list((repo / ".git/wtmesh/admin").iterdir())  # its admin dir is gone


@pytest.mark.parametrize(("which", "old", "new", "says"), [
    (1, b"\n+a\n", b"\n+A\n", "does not give the unit's tree: a.txt"),
    (2, b"\n+more\n", b"\n+MORE\n", "does not give the unit's tree: README.md"),
    (2, b"@@\n ", b"@@\n not the context ", "fails: "),
], ids=["changed line", "added line", "does not apply"])
def test_a_patch_that_does_not_reproduce_is_caught(commits: tuple[Git, Sha, Sha, Sha],
                                                   tmp_path: Path, which: int, old: bytes,
                                                   new: bytes, says: str) -> None:
    handle, base, first, second = commits
    parent, commit = (base, first) if which == 1 else (first, second)
    patch = tmp_path / "unit.patch"
    with open(patch, "wb") as out:
        handle.format_patch(commit, out)
    mail = patch.read_bytes()
    assert old in mail
    patch.write_bytes(mail.replace(old, new, 1))
    got = series_check.undelivered(handle, tmp_path / "scratch", parent, commit, patch)
    assert got is not None and says in got, got
    assert not (tmp_path / "scratch").exists()


def test_the_check_is_a_default_git_am_whatever_the_users_global_config(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's command on a stock git: the user's own am, apply and core settings,
    global or the repository's (here all set to change what am makes, or to make it
    fail), do not decide the check."""
    base = git(repo, "rev-parse", "HEAD")
    (repo / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    (repo / "trail.txt").write_text("x  \n \ty\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "whitespace and CRLF")
    head = git(repo, "rev-parse", "HEAD")
    user_config = tmp_path / "gitconfig"
    user_config.write_text("[apply]\n\twhitespace = fix\n[am]\n\tkeepcr = false\n"
                           "\tthreeWay = true\n[commit]\n\tgpgSign = true\n[gpg]\n"
                           "\tprogram = false\n[core]\n\tautocrlf = true\n\tsafecrlf = true\n"
                           "[mailinfo]\n\tscissors = true\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user_config))
    git(repo, "config", "apply.whitespace", "error")
    git(repo, "config", "am.keepcr", "false")
    assert series_check.undelivered(Git(repo / ".git"), tmp_path / "scratch", Sha(base),
                                    Sha(head)) is None
