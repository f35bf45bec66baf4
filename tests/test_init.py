"""`wtmesh init` (SPEC 9): a starter plan with the proof command detected and the preset
chosen, tried as a new user would — and accepted by the real `wtmesh validate`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git, wtmesh
from fake_clis.harness import git_only, install

from worktree_mesh.presets.versions import TESTED
from worktree_mesh.starter import detect_proofs


def new_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


PYTHON_REPO = {
    "pyproject.toml": '[project]\nname = "shop"\nversion = "0.1.0"\n\n'
                      '[project.optional-dependencies]\ntest = ["pytest>=8"]\n',
    "shop/__init__.py": "def total(prices):\n    return sum(prices)\n",
    "tests/test_shop.py": "from shop import total\n\n\ndef test_total():\n"
                          "    assert total([1, 2]) == 3\n",
}
NODE_REPO = {
    "package.json": json.dumps({"name": "shop", "version": "1.0.0",
                                "scripts": {"test": "node --test"}}, indent=2),
    ".gitignore": "node_modules/\n",
    "index.js": "module.exports = (a, b) => a + b;\n",
    "test/index.test.js": "const test = require('node:test');\n",
}


def init(repo: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    res = wtmesh("init", *args, cwd=repo, env=env)
    return res


def written(repo: Path) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((repo / "plan.json").read_text())
    return plan


def test_python_repository(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    res = init(repo, "--preset", "claude")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"wrote {repo / 'plan.json'}"
    assert "proof: python -m pytest -q  (pytest in pyproject.toml)" in res.stdout
    plan = written(repo)
    assert plan["proof_command"] == "python -m pytest -q"
    assert plan["lanes"]["coder"]["preset"] == "claude"
    assert plan["overlap"] == "optimistic"
    validated = wtmesh("validate", "plan.json", cwd=repo)
    assert validated.returncode == 0, validated.stderr
    # The user's tree is untouched but for the new plan.
    assert git(repo, "status", "--porcelain") == "?? plan.json"


def test_node_repository(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", NODE_REPO)
    (repo / "node_modules" / "left-pad").mkdir(parents=True)
    res = init(repo, "--preset", "codex")
    assert res.returncode == 0, res.stderr
    plan = written(repo)
    assert plan["proof_command"] == "npm test"
    assert plan["lanes"]["coder"] == {"preset": "codex", "timeout_s": 1800, "retries": 1}
    # Fresh worktrees lack node_modules: the proof needs them copied in.
    assert plan["setup"] == {"copy_ignored": ["node_modules"]}
    assert wtmesh("validate", "plan.json", cwd=repo).returncode == 0


def test_written_from_a_subdirectory_lands_at_the_top(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    res = init(repo / "shop", "--preset", "aider")
    assert res.returncode == 0, res.stderr
    assert (repo / "plan.json").is_file() and not (repo / "shop" / "plan.json").exists()


def test_repo_option(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    res = wtmesh("init", "--repo", repo, "--preset", "gemini", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert written(repo)["lanes"]["coder"]["preset"] == "gemini"


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    (repo / "plan.json").write_text("{\"mine\": true}\n")
    res = init(repo, "--preset", "claude")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"wtmesh: error: {repo / 'plan.json'} already exists; pass --force to overwrite it"]
    assert res.stdout == ""
    assert (repo / "plan.json").read_text() == "{\"mine\": true}\n"
    forced = init(repo, "--preset", "claude", "--force")
    assert forced.returncode == 0, forced.stderr
    assert written(repo)["lanes"]["coder"]["preset"] == "claude"


def test_outside_a_repository_is_refused(tmp_path: Path) -> None:
    res = init(tmp_path)
    assert res.returncode == 3
    assert res.stderr.startswith("wtmesh: error: ") and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "plan.json").exists()


def test_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    res = init(repo, "--preset", "chatgpt")
    assert res.returncode == 2 and not (repo / "plan.json").exists()


def test_preset_defaults_to_an_agent_cli_on_path(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    bin_dir = install(git_only(tmp_path / "bin"), "gemini", "opencode")
    res = init(repo, env={"PATH": str(bin_dir), "FAKE_VERSION": "0.40.0"})
    assert res.returncode == 0, res.stderr
    assert ("coder: preset gemini  (found on PATH: gemini 0.40.0 (untested: the presets were "
            f"tested with {TESTED['gemini'].version}))") in res.stdout
    assert written(repo)["lanes"]["coder"]["preset"] == "gemini"


def test_init_says_when_the_cli_is_the_version_the_presets_were_tested_with(
        tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    bin_dir = install(git_only(tmp_path / "bin"), "claude")
    res = init(repo, env={"PATH": str(bin_dir), "FAKE_VERSION": TESTED["claude"].version})
    assert res.returncode == 0, res.stderr
    assert (f"coder: preset claude  (found on PATH: claude {TESTED['claude'].version} "
            "(tested))") in res.stdout


def test_no_agent_cli_on_path_still_writes_a_valid_plan(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", {"README.md": "hello\n"})
    res = init(repo, env={"PATH": str(git_only(tmp_path / "bin"))})
    assert res.returncode == 0, res.stderr
    assert ("coder: preset codex  (not on PATH: install it before `wtmesh run`: "
            f"npm install -g @openai/codex@{TESTED['codex'].version})") in res.stdout
    assert "proof: none found" in res.stdout
    assert "proof_command" not in written(repo)
    assert wtmesh("validate", "plan.json", cwd=repo).returncode == 0


def test_an_initialised_plan_runs(tmp_path: Path) -> None:
    """init, edit the unit, run: the fake codex edits, pytest proves, the change lands."""
    repo = new_repo(tmp_path / "shop", PYTHON_REPO)
    assert init(repo, "--preset", "codex").returncode == 0
    plan = written(repo)
    plan["units"][0].update(objective="Add a discount helper", unit_scope=["shop/"])
    (repo / "plan.json").write_text(json.dumps(plan))
    path = os.pathsep.join([str(install(tmp_path / "fakebin", "codex")),
                            str(Path(sys.executable).parent), os.environ["PATH"]])
    res = wtmesh("run", "plan.json", "--json", cwd=repo, env={
        "PATH": path, "FAKE_SCENARIO": "success", "FAKE_RECORD": "",
        "FAKE_EDIT": "shop/discount.py=def discount(p):\\n    return p * 0.9\\n"})
    assert res.returncode == 0, res.stderr
    assert res.json()["units"][0]["status"] == "integrated"
    assert "def discount" in git(repo, "show", "main:shop/discount.py")


# -- detection, one ecosystem at a time ------------------------------------------------------

def detected(root: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [proof.command for proof in detect_proofs(root)]


@pytest.mark.parametrize(("files", "expected"), [
    (PYTHON_REPO, ["python -m pytest -q"]),
    ({"pytest.ini": "[pytest]\n"}, ["python -m pytest -q"]),
    ({"setup.cfg": "[tool:pytest]\naddopts = -q\n"}, ["python -m pytest -q"]),
    ({"setup.py": "from setuptools import setup\nsetup()\n", "tests/test_a.py": ""},
     ["python -m unittest discover -q"]),
    ({"pyproject.toml": "[project]\nname = 'x'\n"}, []),
    (NODE_REPO, ["npm test"]),
    ({**NODE_REPO, "yarn.lock": ""}, ["yarn test"]),
    ({**NODE_REPO, "pnpm-lock.yaml": ""}, ["pnpm test"]),
    ({"package.json": json.dumps({"scripts": {
        "test": "echo \"Error: no test specified\" && exit 1"}})}, []),
    ({"package.json": "{not json"}, []),
    ({"Cargo.toml": "[package]\nname = \"x\"\n"}, ["cargo test"]),
    ({"go.mod": "module example.com/x\n\ngo 1.22\n"}, ["go test ./..."]),
    ({"Makefile": "all:\n\tcc x.c\n\ntest: all\n\t./run-tests\n"}, ["make test"]),
    ({"GNUmakefile": "test:\n\t./t\n"}, ["make test"]),
    ({"Makefile": "test := yes\nall:\n\ttrue\n"}, []),
    ({"Makefile": "test:\n\tgo test ./...\n", "go.mod": "module x\n"},
     ["go test ./...", "make test"]),
    ({"README.md": "hi\n"}, []),
])
def test_proof_detection(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    assert detected(tmp_path, files) == expected
