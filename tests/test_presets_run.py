"""Presets through the real ``wtmesh run``: a fake CLI first on PATH edits a file in the
unit's worktree, the preset writes the result, and the unit integrates (or fails as SPEC 9
maps it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import preset_run
import pytest
from conftest import git, wtmesh
from fake_clis.harness import FAKES, FLAG_ERROR, NAMES, install
from model_server import closed_port
from preset_run import Ran, on_path

from worktree_mesh.presets.versions import TESTED

EDIT = "calc/extra.py=VALUE = 1\\n"


LANE = {"timeout_s": 60}


def plan_for(coder: dict[str, Any], fixer: dict[str, Any] | None = None) -> dict[str, Any]:
    return preset_run.plan(coder, fixer, lane=LANE)


def fake_env(tmp_path: Path, path: str | None = None, **fake: str) -> dict[str, str]:
    """The fake CLIs first on PATH (or ``path``), each making EDIT unless ``fake`` says
    otherwise (``FAKE_<NAME>`` variables)."""
    return {"PATH": path or on_path(install(tmp_path / "fakebin")),
            "FAKE_EDIT": EDIT, "FAKE_SCENARIO": "success", "FAKE_RECORD": "",
            **{f"FAKE_{k.upper()}": v for k, v in fake.items()}}


def run(repo: Path, plan: dict[str, Any], tmp_path: Path, *, path: str | None = None,
        env: dict[str, str] | None = None, **fake: str) -> Ran:
    return preset_run.run(repo, plan, env={**fake_env(tmp_path, path, **fake), **(env or {})},
                          timeout=300)


@pytest.mark.parametrize("name", NAMES)
def test_preset_coder_edit_integrates(repo: Path, tmp_path: Path, name: str) -> None:
    ran = run(repo, plan_for({"preset": name}), tmp_path)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("integrated", None), unit
    assert ran.summary["exit_code"] == 0
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    # Only the agent's edit lands: no .aider* file, no prompt, no transcript.
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/extra.py"
    assert unit["files"] == ["calc/extra.py"]
    assert f"wtmesh-preset: {name} --version: " in ran.log("coder-1")


def test_aider_leaves_no_file_behind_even_with_a_whole_repo_scope(
        repo: Path, tmp_path: Path) -> None:
    plan = plan_for({"preset": "aider"})
    plan["units"][0]["unit_scope"] = "**"
    ran = run(repo, plan, tmp_path)
    assert ran.unit["status"] == "integrated"
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/extra.py"


@pytest.mark.parametrize(("coder", "fixer"), [("codex", "claude"), ("claude", "gemini"),
                                              ("opencode", "aider"), ("gemini", "codex")])
def test_preset_fixer_accepts(repo: Path, tmp_path: Path, coder: str, fixer: str) -> None:
    ran = run(repo, plan_for({"preset": coder}, {"preset": fixer}), tmp_path)
    assert ran.unit["status"] == "integrated"
    assert "wtmesh-preset: result: accept" in ran.log("fixer-1")


@pytest.mark.parametrize("fixer", ["claude", "opencode"])
def test_preset_fixer_reject_is_final(repo: Path, tmp_path: Path, fixer: str) -> None:
    head = git(repo, "rev-parse", "main")
    verdict = json.dumps({"decision": "reject", "failure_code": "proof_missing",
                          "notes": "nothing tests VALUE"})
    ran = run(repo, plan_for({"preset": "codex"}, {"preset": fixer}), tmp_path, verdict=verdict)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "proof_missing")
    assert ran.summary["exit_code"] == 1
    assert git(repo, "rev-parse", "main") == head


@pytest.mark.parametrize(("preset", "variable"), [("claude", "ANTHROPIC_BASE_URL"),
                                                 ("gemini", "GOOGLE_GEMINI_BASE_URL")])
def test_an_unreachable_model_api_fails_at_once_and_is_not_retried(
        repo: Path, tmp_path: Path, preset: str, variable: str) -> None:
    """Nothing listens where the API should be: the CLI is never started (it would retry
    until the lane's timeout), the unit fails tooling_unavailable in one line, once."""
    record = tmp_path / "calls.jsonl"
    ran = run(repo, plan_for({"preset": preset, "retries": 2}), tmp_path,
              record=str(record), env={variable: f"http://127.0.0.1:{closed_port()}"})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "tooling_unavailable")
    assert unit["attempts"] == 1
    assert "result: reject (tooling_unavailable): cannot reach the model API: 127.0.0.1:" \
        in ran.log("coder-1")
    calls = [json.loads(line)["argv"] for line in record.read_text().splitlines()] \
        if record.exists() else []
    assert all("--version" in argv for argv in calls), calls  # only its version was asked


def test_turn_cap_is_not_retried(repo: Path, tmp_path: Path) -> None:
    ran = run(repo, plan_for({"preset": "claude", "max_turns": 3, "retries": 2}), tmp_path,
              scenario="cap_turns")
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "timeout_retry_exhausted")
    assert unit["attempts"] == 1


def test_cli_error_is_retried_then_lane_failed(repo: Path, tmp_path: Path) -> None:
    ran = run(repo, plan_for({"preset": "gemini", "retries": 1}), tmp_path, scenario="error")
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "lane_failed")
    assert unit["attempts"] == 2


def test_lane_timeout_stops_the_cli(repo: Path, tmp_path: Path) -> None:
    ran = run(repo, plan_for({"preset": "codex", "timeout_s": 2, "retries": 0}), tmp_path,
              scenario="sleep")
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("failed", "timeout_retry_exhausted")


def test_validate_rejects_a_cap_the_cli_lacks(repo: Path, write_plan: Any) -> None:
    plan = write_plan(plan_for({"preset": "codex", "max_turns": 10}))
    res = wtmesh("validate", plan, cwd=repo)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"wtmesh: error: {plan}: $.lanes.coder.max_turns: preset 'codex' has no turn cap; "
        "it is bounded by the lane's timeout_s only (remove max_turns)")


@pytest.mark.parametrize("name", NAMES)
def test_each_fake_refuses_a_call_without_the_flags_that_matter(tmp_path: Path, name: str) -> None:
    """The safety net itself: a preset that dropped its flags would hit this."""
    done = subprocess.run([sys.executable, str(FAKES / name), "exec" if name == "codex"
                           else "run" if name == "opencode" else "-p", "hello"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(FAKES)},
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    assert done.returncode == FLAG_ERROR
    assert done.stderr.decode().startswith(f"FAKE-{name.upper()}: ")


def test_preset_args_take_placeholders(repo: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    plan = {**plan_for({"preset": "codex", "model": "gpt-5-codex",
                        "args": ["-c", "note={id} in {run_id}"]}),
            "sandbox_writable": [str(tmp_path)]}
    ran = run(repo, plan, tmp_path, record=str(record))
    assert ran.unit["status"] == "integrated"
    (call,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert call["argv"][-5:] == ["-m", "gpt-5-codex", "-c",
                                 f"note=u1 in {ran.summary['run_id']}", "-"]
    assert call["env"]["WTMESH_LANE"] == "coder" and call["env"]["WTMESH_UNIT_ID"] == "u1"
    assert "Add a constant" in call["prompt"] and "- `calc/`" in call["prompt"]


@pytest.mark.parametrize("version", [TESTED["claude"].version, "2.0.7"])
def test_the_first_line_names_each_cli_version_and_warns_of_an_untested_one(
        repo: Path, write_plan: Any, tmp_path: Path, version: str) -> None:
    """The run's first line names the version of each preset's CLI and whether the presets
    were tested with it; an untested one gets a warning, and the run goes on."""
    plan = write_plan(plan_for({"preset": "claude"}, {"preset": "claude"}))
    res = wtmesh("run", plan, cwd=repo, env=fake_env(tmp_path, version=version))
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    tested = version == TESTED["claude"].version
    said = (f"claude {version} (tested)" if tested else
            f"claude {version} (untested: the presets were tested with "
            f"{TESTED['claude'].version})")
    assert first.endswith(f"; {said}"), first
    warnings = [line for line in (res.stdout + res.stderr).splitlines()
                if line.startswith("wtmesh: warning: ")]
    assert warnings == ([] if tested else [
        f"wtmesh: warning: {said}; it may not behave as the claude preset expects"])
    assert "1 integrated" in res.stdout
