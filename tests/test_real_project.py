"""Acceptance on code no one here wrote: port a real upstream release with wtmesh.

Two consecutive sdists of more-itertools (a small pure-Python project that ships its
unittest suite in its sdist) come from the package index. The repository starts as the
older release; the real diff between the two is split into units by file group, each
unit's coder lane copies its files from the newer release, the project's own test suite
is the proof, and a deliberately broken unit sits in the middle of the plan. The
integrated tree must equal the newer release exactly, file for file, and the broken unit
must fail its proof without landing.

"The release's tree" here is every file of the sdist as published, PKG-INFO, dotfiles
(.github/, .gitignore, .gitattributes) and executable bits included. The repository
commits all of them (``git add -f``), so no file of the release can hide behind the
release's own .gitignore, and the expected tree is written from the newer release's files
the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, git, lane, no_worktrees_left, wtmesh

PROJECT = "more-itertools"
OLD, NEW = "10.1.0", "10.2.0"
# PyPI never changes a file once published: anything else is not the release under test.
SHA256 = {
    OLD: "626c369fa0eb37bac0291bce8259b332fd59ac792fa5497b59837309cd5b114a",
    NEW: "8fccb480c43d3e99a00087634c06dd02b0d50fbf088b380de5a41a015ec239e1",
}
# Computed at import time: conftest's autouse fixture points HOME at a temporary
# directory while a test runs, which would make every run download afresh.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wtmesh-tests"

# The project's own test suite, as its tox.ini and Makefile run it.
PROOF = [PY, "-m", "unittest", "-q"]

# A plausible regression a coder could slip in: take() returns one item too many. Without
# it, u-broken's port of recipes.py passes the suite (u-recipes lands that same file), so
# its proof fails for this change alone.
REGRESSION = (
    "\n\ndef take(n, iterable):\n"
    '    """Return first *n* items of the iterable as a list."""\n'
    "    return list(islice(iterable, n + 1))\n"
)

OBJECTIVES = {
    "u-ci": "Port the CI and hosting configuration",
    "u-docs": "Port the documentation",
    "u-more": "Port more.py with its stubs and tests",
    "u-broken": "Port recipes.py with a faster take()\n\nDeliberately wrong: take() is off by one.",
    "u-recipes": "Port recipes.py with its stubs and tests",
    "u-release": "Port the packaging and bump the version",
}
# The plan's order; u-broken sits in the middle and shares u-recipes' file, so u-recipes
# waits for it, starts from what was integrated, and must still land.
PLAN_ORDER = list(OBJECTIVES)
GOOD = [uid for uid in PLAN_ORDER if uid != "u-broken"]


def group_of(path: str) -> str:
    """The unit a changed file belongs to: a source module goes with its stubs and its
    tests (new tests need new code), dotfiles and docs by directory, the rest is release
    engineering (version, metadata, packaging)."""
    top = path.split("/")[0]
    if top.startswith("."):
        return "u-ci"
    if top == "docs":
        return "u-docs"
    module = re.fullmatch(r"more_itertools/(\w+)\.pyi?|tests/test_(\w+)\.py", path)
    if module and (module[1] or module[2]) != "__init__":
        return f"u-{module[1] or module[2]}"
    return "u-release"


# --- the two releases -------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sdist(version: str) -> Path:
    """The release's sdist, from the cache or else from the package index via pip."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cached = CACHE_DIR / f"{PROJECT}-{version}.tar.gz"
    if cached.is_file() and sha256(cached) == SHA256[version]:
        return cached
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", "--dest", tmp, f"{PROJECT}=={version}"]
        try:
            res = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL,
                                 timeout=300, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"cannot download {PROJECT} sdists from the package index: "
                        "pip download timed out")
        downloaded = sorted(Path(tmp).glob("*.tar.gz"))
        if res.returncode != 0 or len(downloaded) != 1:
            lines = res.stderr.decode("utf-8", "replace").splitlines()
            errors = [line for line in lines if line.startswith("ERROR")] or lines or [
                f"pip exited {res.returncode}"]
            pytest.skip(f"cannot download {PROJECT} sdists from the package index: "
                        f"{errors[-1].strip()}")
        got = sha256(downloaded[0])
        assert got == SHA256[version], (
            f"{downloaded[0].name} has sha256 {got}, not the published {SHA256[version]}")
        os.replace(downloaded[0], cached)
    return cached


def unpack(archive: Path, dest: Path) -> Path:
    """The sdist's files, without its top-level ``NAME-VERSION/`` directory."""
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: nothing outside dest
            tar.extractall(dest, filter="data")
        else:  # a pinned, hash-checked archive
            tar.extractall(dest)
    (root,) = dest.iterdir()
    return root


def files_of(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every file below root (not .git) as git sees it: kind+mode and content."""
    out: dict[str, tuple[str, bytes]] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if path.is_symlink():
            out[rel] = ("120000", os.readlink(path).encode())
        elif path.is_file():
            mode = "100755" if os.access(path, os.X_OK) else "100644"
            out[rel] = (mode, path.read_bytes())
    return out


def differing(a: dict[str, tuple[str, bytes]], b: dict[str, tuple[str, bytes]]) -> list[str]:
    return sorted((set(a) ^ set(b)) | {p for p in set(a) & set(b) if a[p] != b[p]})


def write_tree_of(repo: Path, directory: Path, index: Path) -> str:
    """A git tree of every file in ``directory``, written into ``repo``'s object store
    through a throwaway index (refs, index and worktree of ``repo`` untouched)."""
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    base = ["git", f"--git-dir={repo / '.git'}", f"--work-tree={directory}"]
    for args in (["add", "-A", "-f"], ["write-tree"]):
        res = subprocess.run(base + args, cwd=directory, env=env, capture_output=True,
                             check=False)
        assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode().strip()


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(old, new) release trees, unpacked once for the module."""
    archives = [sdist(OLD), sdist(NEW)]
    where = tmp_path_factory.mktemp("releases")
    old, new = (unpack(archive, where / version)
                for archive, version in zip(archives, (OLD, NEW), strict=True))
    return old, new


# --- the test ---------------------------------------------------------------------------

def make_plan(mode: str, new: Path, units: dict[str, list[str]]) -> dict[str, Any]:
    plan_units = []
    for uid in PLAN_ORDER:
        if uid == "u-broken":
            files = ["more_itertools/recipes.py"]
            command = lane("copy_release.py", str(new),
                           f"--append=more_itertools/recipes.py={REGRESSION}", *files)
        else:
            files = units[uid]
            command = lane("copy_release.py", str(new), *files)
        plan_units.append({"id": uid, "objective": OBJECTIVES[uid], "unit_scope": files,
                           "lanes": {"coder": {"command": command, "timeout_s": 120}}})
    return {"delivery_mode": mode, "proof_command": PROOF, "proof_timeout_s": 300,
            "max_active": 2, "units": plan_units}


@pytest.mark.network
@pytest.mark.parametrize("mode", ["commit_first", "patch_first"])
def test_port_a_real_release_unit_by_unit(releases: tuple[Path, Path], tmp_path: Path,
                                          mode: str) -> None:
    old, new = releases
    old_files, new_files = files_of(old), files_of(new)

    # The real diff, split by file group: each changed file in exactly one unit.
    changed = differing(old_files, new_files)
    units: dict[str, list[str]] = {}
    for path in changed:
        units.setdefault(group_of(path), []).append(path)
    assert sorted(units) == sorted(GOOD), units
    assert any(p.startswith("more_itertools/") for p in changed)
    assert any(p.startswith("tests/") for p in changed)
    assert any(p not in old_files for p in changed)  # added files (requirements/, Makefile)

    # The user's repository: the older release, every file of it committed.
    repo = tmp_path / PROJECT
    shutil.copytree(old, repo, symlinks=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "-m", f"{PROJECT} {OLD}")
    base = git(repo, "rev-parse", "HEAD")
    assert sorted(git(repo, "ls-files").splitlines()) == sorted(old_files)

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(mode, new, units), indent=2))
    res = wtmesh("run", plan, "--json", cwd=repo, timeout=600)
    assert res.returncode == 1, res.stderr
    summary = res.json()

    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {uid: ("integrated", None) for uid in GOOD} | {
        "u-broken": ("failed", "proof_failed")}, res.stderr
    by_id = {u["id"]: u for u in summary["units"]}
    assert by_id["u-broken"]["commit"] is None and by_id["u-broken"]["patch"] is None
    for uid in GOOD:
        assert sorted(by_id[uid]["files"]) == units[uid], uid

    # The newer release, as a git tree, in the same object store: what must have landed.
    expected_tree = write_tree_of(repo, new, tmp_path / "release-index")
    head_tree = git(repo, "rev-parse", f"{summary['head']}^{{tree}}")
    assert head_tree == expected_tree, "integrated tree differs from the release in:\n" + \
        git(repo, "diff-tree", "-r", "--name-status", expected_tree, head_tree)

    if mode == "commit_first":
        # One commit per good unit, in plan order, each holding exactly that unit's files;
        # nothing of u-broken anywhere in the history.
        commits = git(repo, "rev-list", "--reverse", f"{base}..main").splitlines()
        assert [git(repo, "log", "-1", "--format=%s", c) for c in commits] == [
            f"{uid}: {OBJECTIVES[uid].splitlines()[0]}" for uid in GOOD]
        for uid, commit in zip(GOOD, commits, strict=True):
            assert by_id[uid]["commit"] == commit
            touched = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", commit)
            assert sorted(touched.splitlines()) == units[uid], uid
        assert git(repo, "rev-parse", "main") == summary["head"]
        regression_line = REGRESSION.splitlines()[-1]
        assert regression_line not in (new / "more_itertools/recipes.py").read_text()
        assert git(repo, "log", "--format=%H", "-S", regression_line, "main") == ""
        # The user's worktree is clean, on the new head, and is the release, file for file.
        assert git(repo, "status", "--porcelain", "--ignored") == ""
        assert git(repo, "rev-parse", "HEAD") == summary["head"]
        assert differing(files_of(repo), new_files) == []
        # And the newer release's own suite passes there.
        proof = subprocess.run(PROOF, cwd=repo, capture_output=True, check=False)
        assert proof.returncode == 0, proof.stderr.decode()[-2000:]
    else:
        # Target and user worktree untouched; git am of the series on base is the release.
        assert git(repo, "rev-parse", "main") == base
        assert git(repo, "status", "--porcelain", "--ignored") == ""
        assert differing(files_of(repo), old_files) == []
        patch_dir = Path(summary["patch_dir"])
        names = (patch_dir / "series").read_text().splitlines()
        assert names == [f"{i:04d}-{uid}.patch" for i, uid in enumerate(GOOD, 1)]
        assert [by_id[uid]["patch"] for uid in GOOD] == names
        clone = tmp_path / "am"
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        git(clone, "checkout", "-q", "--detach", base)
        git(clone, "am", "-q", *[str(patch_dir / name) for name in names])
        am_differs = differing(files_of(clone), new_files)
        assert git(clone, "rev-parse", "HEAD^{tree}") == expected_tree, \
            f"git am of the series differs from the release in: {am_differs}"
        assert am_differs == []

    assert no_worktrees_left(repo)
