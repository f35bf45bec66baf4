"""`wtmesh init`: a starter plan for the repository it stands in.

It detects the proof command the way a new contributor would look for the test command
(pytest, npm test, cargo test, go test, make test), picks the agent preset (``--preset``,
else the first agent CLI found on PATH), and writes ``plan.json`` at the top of the working
tree — a plan ``wtmesh validate`` accepts, with one example unit to edit.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import plan as plan_mod
from .errors import EnvironmentRefused, UsageError
from .git import Git, NotARepository, discover
from .presets import PRESETS, versions
from .state import write_atomic

PLAN_NAME = "plan.json"
NPM_PLACEHOLDER = "no test specified"  # what `npm init` puts in scripts.test
_MAKE_TEST = re.compile(r"^test\s*:(?!=)", re.MULTILINE)
_PYTHON_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini",
                   "conftest.py", "requirements.txt", "requirements-dev.txt")


@dataclass(frozen=True)
class Proof:
    command: str
    why: str  # what it was detected from, for the user
    tool: str  # python | node | cargo | go | make


@dataclass(frozen=True)
class Starter:
    path: Path
    plan: dict[str, Any]
    proof: Proof | None
    preset: str
    preset_found: bool
    also: tuple[Proof, ...] = field(default_factory=tuple)  # other candidates found
    cli: versions.Installed | None = None  # the preset's CLI, when found


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def python_proof(root: Path) -> Proof | None:
    markers = [name for name in _PYTHON_MARKERS if (root / name).is_file()]
    if not markers:
        return None
    for name in markers:
        if name in ("pytest.ini", "conftest.py") or "pytest" in _read(root / name):
            return Proof("python -m pytest -q", f"pytest in {name}", "python")
    if (root / "tests").is_dir() or (root / "test").is_dir():
        return Proof("python -m unittest discover -q", f"{markers[0]} without pytest",
                     "python")
    return None


def node_proof(root: Path) -> Proof | None:
    try:
        package = json.loads(_read(root / "package.json") or "null")
    except ValueError:
        return None
    scripts = package.get("scripts") if isinstance(package, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(test, str) or not test.strip() or NPM_PLACEHOLDER in test:
        return None
    for lockfile, runner in (("pnpm-lock.yaml", "pnpm"), ("yarn.lock", "yarn")):
        if (root / lockfile).is_file():
            return Proof(f"{runner} test", f"scripts.test in package.json, {lockfile}", "node")
    return Proof("npm test", "scripts.test in package.json", "node")


def cargo_proof(root: Path) -> Proof | None:
    return Proof("cargo test", "Cargo.toml", "cargo") if (root / "Cargo.toml").is_file() else None


def go_proof(root: Path) -> Proof | None:
    return Proof("go test ./...", "go.mod", "go") if (root / "go.mod").is_file() else None


def make_proof(root: Path) -> Proof | None:
    for name in ("GNUmakefile", "makefile", "Makefile"):
        if _MAKE_TEST.search(_read(root / name)):
            return Proof("make test", f"a test target in {name}", "make")
    return None


DETECTORS: tuple[Callable[[Path], Proof | None], ...] = (
    python_proof, node_proof, cargo_proof, go_proof, make_proof)


def detect_proofs(root: Path) -> list[Proof]:
    """Every proof command the repository suggests, most specific first."""
    return [proof for detect in DETECTORS if (proof := detect(root)) is not None]


def choose_preset(preset: str | None) -> tuple[str, bool]:
    """The preset asked for, else the first agent CLI on PATH; (name, found on PATH)."""
    if preset is not None:
        return preset, shutil.which(preset) is not None
    for name in PRESETS:
        if shutil.which(name):
            return name, True
    return PRESETS[0], False


def starter_plan(proof: Proof | None, preset: str, setup: dict[str, Any]) -> dict[str, Any]:
    plan: dict[str, Any] = {"version": 1}
    if proof is not None:
        plan["proof_command"] = proof.command
    plan["max_active"] = plan_mod.DEFAULT_MAX_ACTIVE
    # An agent rarely knows its scope in advance: units of scope ** run side by side and a
    # conflict is rerun (SPEC 14), rather than one after another.
    plan["overlap"] = "optimistic"
    plan["lanes"] = {"coder": {"preset": preset, "timeout_s": 1800, "retries": 1}}
    if setup:
        plan["setup"] = setup
    plan["units"] = [{
        "id": "u-001",
        "objective": "Replace this with the first change you want, in a sentence or two.",
        "unit_scope": ["**"],
        "constraints": "",
        "invariants": "",
    }]
    return plan


def build(root: Path, git: Git, preset: str | None) -> Starter:
    proofs = detect_proofs(root)
    name, found = choose_preset(preset)
    proof = proofs[0] if proofs else None
    setup: dict[str, Any] = {}
    # Proofs and lanes run in fresh worktrees, which lack the installed node_modules;
    # copy_ignored takes only what git ignores, so it is asked first.
    if proof is not None and proof.tool == "node" and (root / "node_modules").is_dir() \
            and git.run("check-ignore", "-q", "node_modules", cwd=root,
                        check=False).returncode == 0:
        setup["copy_ignored"] = ["node_modules"]
    plan = starter_plan(proof, name, setup)
    problems = plan_mod.problems(plan)
    assert not problems, problems  # a bug in this module, not in the user's repository
    return Starter(root / PLAN_NAME, plan, proof, name, found, tuple(proofs[1:]),
                   versions.installed(name) if found else None)


def init(repo: Path | None, preset: str | None, force: bool) -> Starter:
    try:
        info = discover((repo or Path.cwd()).resolve())
    except NotARepository as exc:
        raise EnvironmentRefused(str(exc)) from None
    if info.toplevel is None:
        raise EnvironmentRefused(f"{info.git_dir} is a bare repository: "
                                 "run wtmesh init in a working tree")
    target = info.toplevel / PLAN_NAME
    if target.is_dir():
        raise UsageError(f"{target} is a directory; move it away first")
    if (target.exists() or target.is_symlink()) and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    starter = build(info.toplevel, Git(info.common_dir), preset)
    write_atomic(target, (json.dumps(starter.plan, indent=2) + "\n").encode())
    return starter


def describe(starter: Starter) -> list[str]:
    lines = [f"wrote {starter.path}"]
    if starter.proof is not None:
        lines.append(f"  proof: {starter.proof.command}  ({starter.proof.why})")
    else:
        lines.append("  proof: none found (pytest, npm test, cargo test, go test, make test); "
                     "set proof_command so every change is tested before it lands")
    for other in starter.also:
        lines.append(f"         also possible: {other.command}  ({other.why})")
    where = (f"found on PATH: {starter.cli.describe()}" if starter.cli is not None
             else f"not on PATH: install it before `wtmesh run`: "
                  f"{versions.TESTED[starter.preset].install_command}")
    lines.append(f"  coder: preset {starter.preset}  ({where})")
    if "setup" in starter.plan:
        lines.append("  setup: node_modules copied into each worktree")
    lines.append(f"next: edit the unit in {PLAN_NAME} (objective, unit_scope), then "
                 f"`wtmesh validate {PLAN_NAME}` and `wtmesh run {PLAN_NAME}`")
    return lines


def register(group: click.Group) -> None:
    """Add `init` to the main group."""

    @group.command("init")
    @click.option("--preset", type=click.Choice(PRESETS),
                  help="Agent CLI for the coder lane (default: the first found on PATH).")
    @click.option("--repo", type=click.Path(path_type=Path, file_okay=False),
                  help="Repository to write the plan for (default: the current one).")
    @click.option("--force", is_flag=True, help="Overwrite an existing plan.json.")
    def init_command(preset: str | None, repo: Path | None, force: bool) -> None:
        """Write a starter plan.json for this repository: the proof command detected
        (pytest, npm test, cargo test, go test, make test) and an agent preset."""
        for line in describe(init(repo, preset, force)):
            click.echo(line)
