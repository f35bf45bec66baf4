"""Shared fixtures: hermetic git, repositories built from plain trees, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_REPOS = ROOT / "fixtures" / "repos"
LANES = Path(__file__).resolve().parent / "lanes"
PY = sys.executable


class _ApiStandIn:
    """A port on 127.0.0.1 that accepts connections and closes them: where every
    preset's model API points in the tests, so that a preset's check that its API can be
    reached never goes to the internet (the real-CLI tests point them at a scripted
    server instead)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            connection, _ = self._socket.accept()
            connection.close()


API_STAND_IN = _ApiStandIn()
# Each CLI's base-URL variable (AGENT-CLIS.md, "Pointing each CLI at a model server").
API_BASE_VARIABLES = ("ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "OPENAI_BASE_URL",
                      "OPENAI_API_BASE")
# opencode has no such variable: its free hosted provider's base URL, in its own config.
OPENCODE_STAND_IN = json.dumps({"provider": {"opencode": {"options": {
    "baseURL": f"{API_STAND_IN.url}/v1"}}}})


def make_hermetic(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """No user or system git config, a fixed identity and dates: every test sees the same
    git whatever machine it runs on. No model API on the internet either."""
    home.mkdir(parents=True, exist_ok=True)
    for variable in API_BASE_VARIABLES:
        monkeypatch.setenv(variable, API_STAND_IN.url)
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", OPENCODE_STAND_IN)
    # codex reads no base-URL variable: its default provider's URL is in its config.
    (home / ".codex").mkdir(exist_ok=True)
    (home / ".codex" / "config.toml").write_text(f'openai_base_url = "{API_STAND_IN.url}/v1"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test Author")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
        monkeypatch.setenv(f"GIT_{role}_DATE", "2026-01-01T00:00:00Z")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "EMAIL", "WTMESH_FAULT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_hermetic(monkeypatch, tmp_path / "home")


@pytest.fixture(scope="module")
def hermetic_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same, for module-scoped fixtures (which run before the autouse one)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        make_hermetic(monkeypatch, tmp_path_factory.mktemp("home"))
        yield


@pytest.fixture
def home_outside_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME outside /tmp (beside the CLI cache), as a user's is, removed afterwards:
    codex treats /tmp specially (it makes no sandbox helper under it)."""
    import uuid

    import real_cli

    path = real_cli.cache_root().parent / "homes" / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    res = subprocess.run(["git", *args], cwd=repo, input=input, capture_output=True, check=False)
    if res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {res.stderr.decode()}")
    return res.stdout.decode("utf-8", "surrogateescape").strip()


def make_repo(dest: Path, fixture: str = "calc") -> Path:
    """A repository from ``fixtures/repos/<fixture>``: copied, ``git init``, committed."""
    shutil.copytree(FIXTURE_REPOS / fixture, dest)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "initial")
    return dest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def wtmesh(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 300) -> Result:
    """The real CLI, in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run([PY, "-m", "worktree_mesh", *map(str, args)], cwd=cwd,
                         capture_output=True, env=full_env, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL)
    return Result(res.returncode, res.stdout.decode("utf-8", "replace"),
                  res.stderr.decode("utf-8", "replace"))


@pytest.fixture
def write_plan(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any], name: str = "plan.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data, indent=2))
        return path
    return write


def hears_ctrl_c() -> None:
    """A ``preexec_fn`` for a wtmesh a test will interrupt: SIGINT back to its default.
    A suite started in the background of a shell without job control (``./scripts/test
    &`` in a script) has SIGINT ignored, every child inherits that, and a Python started
    with SIGINT ignored never raises KeyboardInterrupt: the interrupt would go unheard."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lane(name: str, *args: str) -> list[str]:
    """argv for a lane script in tests/lanes/."""
    return [PY, str(LANES / name), *args]


PROOF = [PY, "-m", "unittest", "discover", "-q", "-s", "tests", "-t", "."]


def state_dir(repo: Path) -> Path:
    return repo / ".git" / "wtmesh"


def alive(pid: int) -> bool:
    """Running, that is: not gone and not a zombie waiting for a reaper (in a container
    without an init that reaps, killed orphans stay zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def no_worktrees_left(repo: Path) -> bool:
    """Only the user's worktree is registered, and no run left a directory behind for
    worktrees (where each run recorded them), their admin dirs or temporary indexes."""
    listing = git(repo, "worktree", "list", "--porcelain")
    state = state_dir(repo)
    leftovers = [*state.glob("worktrees/*"), *state.glob("admin/*"), *state.glob("runs/*/tmp")]
    leftovers += [home for record in state.glob("runs/*/worktrees.path")
                  if (home := Path(record.read_text().strip())).exists()]
    return listing.count("worktree ") == 1 and not leftovers


def run_worktrees(repo: Path, run_id: str) -> Path:
    """Where a run's worktrees are, as its run directory records."""
    record = state_dir(repo) / "runs" / run_id / "worktrees.path"
    return Path(record.read_text().strip())


@pytest.fixture
def capture_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "captured"
    path.mkdir()
    yield path


# The ten mesh columns of a wave CSV, as SPEC 7 lists them.
MESH_HEADER = ("id,objective,unit_scope,constraints,invariants,proof_command,delivery_mode,"
               "attempt,variant,budget_tier")


def one_error_line(res: Result, code: int = 2) -> str:
    """The one line a refused command prints: its exit code, no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("wtmesh: error: ")
    return lines[0]


def repo_snapshot(repo: Path) -> dict[str, Any]:
    """Everything a command could change in the repository, wtmesh's state included."""
    return {
        "refs": git(repo, "for-each-ref", "--format=%(objectname) %(refname)"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "staged": git(repo, "diff", "--cached", "--binary"),
        "unstaged": git(repo, "diff", "--binary"),
        "state_dir": state_dir(repo).exists(),
    }


def git_first_on_path(tmp_path: Path, body: str) -> dict[str, str]:
    """The environment for a ``git`` first on PATH: a shell script running ``body``, in
    which ``$REAL_GIT`` is the real git. For tests that watch wtmesh's git calls."""
    real_git = shutil.which("git")
    assert real_git is not None
    wrapper = tmp_path / "git-wrapper" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nREAL_GIT={real_git}\n{body}")
    wrapper.chmod(0o755)
    return {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
