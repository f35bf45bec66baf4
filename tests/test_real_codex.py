"""The codex preset with the real ``codex`` CLI (the pinned version, installed into the test
cache) through the real ``wtmesh run``, sandboxed unless a test says otherwise, against a
scripted model server speaking the Responses API (``wire_codex``).

Codex is pointed at the server with a model provider of its own in the preset's ``args``
(AGENT-CLIS.md, "Pointing each CLI at a model server"). HOME lies outside /tmp, as a
user's does (codex treats /tmp and $TMPDIR specially), unless a test is about HOME
under /tmp.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from pathlib import Path
from typing import Any

import preset_run
import pytest
import real_cli
import wire_codex
from conftest import PROOF, git, lane
from model_server import Fail, ModelServer, Text, ToolCall, closed_port
from preset_run import Ran, plan

EDIT = ToolCall("exec_command", {"cmd": "printf 'VALUE = 1\\n' > calc/extra.py"})
PROVE = ToolCall("exec_command", {"cmd": shlex.join(PROOF)})
ACCEPT = {"decision": "accept", "failure_code": None, "notes": "VALUE is defined as asked"}
REJECT = {"decision": "reject", "failure_code": "proof_missing",
          "notes": "nothing tests VALUE"}
KEY = {"LOOP_KEY": "test-key"}


@pytest.fixture(scope="module")
def codex_bin() -> Path:
    return real_cli.bin_dir("codex")


@pytest.fixture
def home(home_outside_tmp: Path) -> Path:
    return home_outside_tmp


def provider_config(how: str, home: Path, url: str) -> list[str]:
    """The lane's args making ``url`` codex's model API, in one of the ways codex reads
    it: the args, ``openai_base_url``, ``~/.codex/config.toml``, a ``-p`` profile."""
    if how == "args":
        return wire_codex.provider_args(url)
    if how == "openai_base_url":
        return ["-c", f'openai_base_url="{url}/v1"']
    if how == "oss":  # and CODEX_OSS_BASE_URL
        return ["--oss", "--local-provider", "ollama"]
    (home / ".codex").mkdir(exist_ok=True)
    name = "config.toml" if how == "config.toml" else "loop.config.toml"
    (home / ".codex" / name).write_text(
        'model_provider = "loop"\n\n[model_providers.loop]\nname = "loop"\n'
        f'base_url = "{url}/v1"\nenv_key = "LOOP_KEY"\nwire_api = "responses"\n')
    return [] if how == "config.toml" else ["-p", "loop"]


def codex_lane(server_url: str, **extra: Any) -> dict[str, Any]:
    return {"preset": "codex", "model": "loop", "args": wire_codex.provider_args(server_url),
            "timeout_s": 300, **extra}


def run(repo: Path, data: dict[str, Any], codex_bin: Path, *args: str,
        env: dict[str, str] | None = None) -> Ran:
    return preset_run.run(repo, data, *args, bin_dir=codex_bin, env=env)


def tool_outputs(server: ModelServer) -> list[str]:
    """What codex told the model its tool calls printed, in order."""
    outputs = []
    for request in server.requests_to("/responses"):
        for item in (request.json or {}).get("input") or []:
            if item.get("type") == "function_call_output" and \
                    str(item.get("output")) not in outputs:
                outputs.append(str(item.get("output")))
    return outputs


# -- a coder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["args", "config.toml", "profile"])
def test_coder_edit_lands(repo: Path, codex_bin: Path, home: Path, how: str) -> None:
    """The edit lands, the model API found where codex itself reads it."""
    with ModelServer(wire_codex.responses, [EDIT, Text("Added calc/extra.py.")]) as server:
        coder = codex_lane(server.url, args=provider_config(how, home, server.url))
        ran = run(repo, plan(coder), codex_bin, env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("integrated", None), \
        (unit, ran.log())
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/extra.py"
    first = server.requests_to("/responses")[0]
    assert "Add a constant VALUE = 1 in calc/extra.py" in wire_codex.prompt_text(first)
    assert "exec_command" in wire_codex.tool_names(first)
    assert wire_codex.schema_of(first) is None  # a coder is not asked for a verdict
    assert f"codex --version: codex-cli {wire_codex.VERSION}" in ran.log()


def test_usage_reaches_the_lane_result(repo: Path, codex_bin: Path, home: Path) -> None:
    """Two model responses: codex's turn.completed sums them, the result file says so."""
    with ModelServer(wire_codex.responses, [EDIT, Text("Added calc/extra.py.")]) as server:
        ran = run(repo, plan(codex_lane(server.url)), codex_bin, env=KEY)
    assert ran.unit["status"] == "integrated"
    result = ran.result("coder-1")
    assert result["usage"] == {"tokens_in": 2 * wire_codex.TOKENS_IN,
                               "tokens_out": 2 * wire_codex.TOKENS_OUT, "cost_usd": None}


# -- a fixer ---------------------------------------------------------------------------------

def fixer_plan(server_url: str) -> dict[str, Any]:
    coder = {"command": lane("act.py", "write:calc/extra.py=VALUE = 1\\n"), "timeout_s": 60}
    return plan(coder, codex_lane(server_url))


@pytest.mark.parametrize(("verdict", "status", "code"), [
    (ACCEPT, "integrated", None), (REJECT, "rejected", "proof_missing")])
def test_fixer_verdict_through_the_output_schema(
        repo: Path, codex_bin: Path, home: Path, verdict: dict[str, Any],
        status: str, code: str | None) -> None:
    """The fixer runs the proof, then answers in the shape --output-schema asked for."""
    head = git(repo, "rev-parse", "main")
    turns = [PROVE, Text(json.dumps(verdict))]
    with ModelServer(wire_codex.responses, turns) as server:
        ran = run(repo, fixer_plan(server.url), codex_bin, env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == (status, code), \
        (unit, ran.log("fixer-1"))
    assert "\nOK\n" in tool_outputs(server)[0], tool_outputs(server)
    request = server.requests_to("/responses")[0]
    schema = wire_codex.schema_of(request)
    assert schema is not None and schema["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["properties"]["decision"]["enum"] == ["accept", "reject"]
    assert "+VALUE = 1" in wire_codex.prompt_text(request)  # the coder's diff, inline
    result = ran.result("fixer-1")
    assert (result["decision"], result["notes"]) == (verdict["decision"], verdict["notes"])
    if status == "rejected":
        assert git(repo, "rev-parse", "main") == head


# -- a denial -------------------------------------------------------------------------------

PUSH = ToolCall("exec_command", {"cmd": "git push origin main"})


@pytest.mark.parametrize(("rule", "refusal"), [
    ('decision="forbidden", justification="pushing is for people"',
     "`/bin/bash -lc 'git push origin main'` rejected: pushing is for people"),
    ('decision="prompt"', "approval required by policy, but AskForApproval is set to Never")])
def test_a_command_codex_rules_refuse_is_a_denial(
        repo: Path, codex_bin: Path, home: Path, rule: str,
        refusal: str) -> None:
    """The user's rules forbid ``git push`` (or want it approved, which ``exec`` never
    can): codex refuses the call and says so only on stderr; the lane is
    requires_clarification, naming the refusal, not no_diff."""
    (home / ".codex" / "rules").mkdir(parents=True)
    (home / ".codex" / "rules" / "default.rules").write_text(
        f'prefix_rule(pattern=["git", "push"], {rule})\n')
    with ModelServer(wire_codex.responses, [PUSH, Text("I could not push.")]) as server:
        ran = run(repo, plan(codex_lane(server.url, retries=2)), codex_bin, env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"], unit["attempts"]) == \
        ("rejected", "requires_clarification", 1), (unit, ran.log())
    assert any(refusal in output for output in tool_outputs(server)), tool_outputs(server)
    result = ran.result("coder-1")
    assert result["notes"].startswith(f"codex was denied: {refusal}"), result["notes"]


# -- what makes codex unusable ---------------------------------------------------------------

def test_missing_key_is_tooling_unavailable_and_not_retried(
        repo: Path, codex_bin: Path, home: Path) -> None:
    with ModelServer(wire_codex.responses, [EDIT]) as server:
        ran = run(repo, plan(codex_lane(server.url, retries=2)), codex_bin)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"], unit["attempts"]) == \
        ("rejected", "tooling_unavailable", 1), unit
    assert "codex: Missing environment variable: `LOOP_KEY`." in ran.log()
    assert not server.requests


def test_auth_error_is_tooling_unavailable_in_one_clear_line(
        repo: Path, codex_bin: Path, home: Path) -> None:
    """A 401 on every request: codex retries it five times, then gives up; the note is
    its last word, not its reconnecting chatter."""
    refused = [Fail(401, "Incorrect API key provided")] * 6
    with ModelServer(wire_codex.responses, refused) as server:
        ran = run(repo, plan(codex_lane(server.url, retries=2)), codex_bin, env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"], unit["attempts"]) == \
        ("rejected", "tooling_unavailable", 1), unit
    result = ran.result("coder-1")
    assert result["notes"] == ("codex: unexpected status 401 Unauthorized: Incorrect API key "
                               f"provided, url: {server.url}/v1/responses")


@pytest.mark.parametrize("how", ["args", "openai_base_url", "config.toml", "profile", "oss"])
def test_unreachable_api_fails_at_once(repo: Path, codex_bin: Path, home: Path, how: str) -> None:
    """Nothing listens where codex's model API is: codex would retry until the lane's
    timeout; the lane ends tooling_unavailable before codex starts, not retried."""
    port = closed_port()
    args = provider_config(how, home, f"http://127.0.0.1:{port}")
    coder = {"preset": "codex", "model": "loop", "args": args, "timeout_s": 60, "retries": 2}
    env = {**KEY, "CODEX_OSS_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    ran = run(repo, plan(coder), codex_bin, env=env)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"], unit["attempts"]) == \
        ("rejected", "tooling_unavailable", 1), (unit, ran.log())
    log = ran.log()
    assert ("result: reject (tooling_unavailable): cannot reach the model API: "
            f"127.0.0.1:{port} (") in log
    assert "wtmesh-preset: running: " not in log  # codex exec never started


# -- codex's own sandbox ---------------------------------------------------------------------

@pytest.mark.parametrize("sandbox", ["none", "auto"])
def test_codex_home_under_tmp_still_runs_commands(repo: Path, codex_bin: Path,
                                                  sandbox: str) -> None:
    """HOME (so CODEX_HOME, ~/.codex) under /tmp, as the hermetic HOME is: codex makes
    no sandbox helper in the temporary directory, and then every command it runs fails
    (`bwrap: execvp codex-linux-sandbox`) and the unit ends no_diff. The lane's
    temporary directory is its own, so the helper is made and the edit lands: in codex's
    own sandbox (--sandbox none), and in wtmesh's."""
    assert Path(os.environ["HOME"]).resolve().is_relative_to("/tmp")
    with ModelServer(wire_codex.responses, [EDIT, Text("Added calc/extra.py.")]) as server:
        ran = run(repo, plan(codex_lane(server.url)), codex_bin, "--sandbox", sandbox, env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("integrated", None), \
        (unit, ran.log(), tool_outputs(server))
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"


LANDLOCK = ("filesystem-restricted execution requires bubblewrap to isolate app-server "
            "sockets")


def landlock_lane(server_url: str) -> dict[str, Any]:
    """A configuration under which codex's sandbox starts no command: the legacy Landlock
    sandbox, which this codex refuses for every command (so does bubblewrap nested in
    wtmesh's sandbox as root). The agent would work blind, every tool call failing
    without an event saying so, and the unit would end no_diff."""
    args = [*wire_codex.provider_args(server_url), "-c", "features.use_legacy_landlock=true"]
    return codex_lane(server_url, args=args, retries=2)


def test_outside_wtmesh_sandbox_a_codex_sandbox_that_cannot_run_is_said_at_once(
        repo: Path, codex_bin: Path, home: Path) -> None:
    with ModelServer(wire_codex.responses, [EDIT, Text("Added calc/extra.py.")]) as server:
        ran = run(repo, plan(landlock_lane(server.url)), codex_bin, "--sandbox", "none", env=KEY)
    unit = ran.unit
    assert (unit["status"], unit["failure_code"], unit["attempts"]) == \
        ("rejected", "tooling_unavailable", 1), (unit, ran.log())
    result = ran.result("coder-1")
    assert result["notes"] == (
        f"codex: its sandbox cannot run a command here ({LANDLOCK}); run the lane in "
        "wtmesh's sandbox, or choose codex's in the lane's args (such as -s "
        "danger-full-access, where something else confines it)")
    assert not server.requests  # no model turn spent


def test_inside_wtmesh_sandbox_it_alone_confines_codex_when_codex_sandbox_cannot_run(
        repo: Path, codex_bin: Path, home: Path) -> None:
    probe = ToolCall("exec_command", {"cmd": "touch ../outside; echo $?"})
    with ModelServer(wire_codex.responses, [probe, EDIT, Text("Added.")]) as server:
        ran = run(repo, plan(landlock_lane(server.url)), codex_bin, env=KEY)
    assert ran.unit["status"] == "integrated", ran.log()
    log = ran.log()
    assert (f"wtmesh-preset: codex's own sandbox cannot run a command here ({LANDLOCK}): "
            "its commands run in wtmesh's sandbox alone (-s danger-full-access)") in log
    assert "Read-only file system" in tool_outputs(server)[0]  # still confined


def test_tmp_is_not_writable_to_codex_commands(repo: Path, codex_bin: Path, home: Path) -> None:
    """Unsandboxed by wtmesh, codex's own workspace-write sandbox confines the commands:
    the host's /tmp is read-only to them; $TMPDIR is the lane's own directory."""
    marker = Path("/tmp") / f"wtmesh-codex-escape-{uuid.uuid4().hex[:8]}"
    probe = ToolCall("exec_command", {"cmd": f"touch {marker}; touch \"$TMPDIR/scratch\" && "
                                             "echo TMPDIR=$TMPDIR writable"})
    try:
        with ModelServer(wire_codex.responses, [probe, EDIT, Text("Done.")]) as server:
            ran = run(repo, plan(codex_lane(server.url)), codex_bin, "--sandbox", "none", env=KEY)
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    assert ran.unit["status"] == "integrated", ran.log()
    said = tool_outputs(server)[0]
    assert f"touch: cannot touch '{marker}': Read-only file system" in said
    work = ran.file("coder-1.preset")
    assert f"TMPDIR={work / 'tmp'} writable" in said


def test_a_sandbox_mode_in_the_lanes_args_is_the_one_codex_gets(
        repo: Path, codex_bin: Path, home: Path) -> None:
    """Codex takes one -s: the preset adds none of its own when the args choose."""
    with ModelServer(wire_codex.responses, [EDIT, Text("Added calc/extra.py.")]) as server:
        args = [*wire_codex.provider_args(server.url), "-s", "danger-full-access"]
        ran = run(repo, plan(codex_lane(server.url, args=args)), codex_bin, env=KEY)
    assert ran.unit["status"] == "integrated", ran.log()
    (running,) = [line for line in ran.log().splitlines()
                  if line.startswith("wtmesh-preset: running: ")]
    assert running.split().count("-s") == 1
