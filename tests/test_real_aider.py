"""The aider preset on the real aider (the version ``versions.py`` pins), through the real
``wtmesh run``, sandboxed (the default), against a scripted model server on 127.0.0.1.

Aider is pointed at the server as AGENT-CLIS.md says: ``--model openai/<name> --edit-format
whole``, the OpenAI base URL at the server. The model is one litellm has a price for, so
that aider prints a ``Cost:`` line as it would for a user. One coder run is shared by the
tests that read different things from it (aider takes seconds to start); every other test
runs aider once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import preset_run
import pytest
import real_cli
from conftest import FIXTURE_REPOS, git, lane, make_repo
from model_server import Fail, ModelServer, Text, closed_port
from preset_run import Ran
from wire_aider import chat_completions, whole_file

from worktree_mesh.presets.aider import PRESET, usage_of
from worktree_mesh.presets.base import Lane

MODEL = "openai/gpt-4o-mini"
SERVED = MODEL.removeprefix("openai/")  # the model aider asks the server for
AIDER_ARGS = ["--edit-format", "whole", "--no-show-model-warnings"]
# Where aider looks for a key when no model is named (aider/onboarding.py), and its model.
KEY_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY",
                 "DEEPSEEK_API_KEY", "GEMINI_API_KEY", "VERTEXAI_PROJECT", "AIDER_MODEL")
OPS = (FIXTURE_REPOS / "calc" / "calc" / "ops.py").read_text()
NEW_OPS = OPS + "\n\ndef negate(a: float) -> float:\n    return -a\n"
UNIT = {"id": "u1", "objective": "Add negate(a) to calc/ops.py", "unit_scope": ["calc/ops.py"]}
BEFORE = "I will add negate to calc/ops.py."
AFTER = "Added negate(a), which returns -a; the existing functions are unchanged."
EDIT = Text(whole_file("calc/ops.py", NEW_OPS, before=BEFORE, after=AFTER))


def aider_lane(**extra: Any) -> dict[str, Any]:
    return {"preset": "aider", "model": MODEL, "args": AIDER_ARGS, "timeout_s": 600, **extra}


def plan(coder: dict[str, Any], fixer: dict[str, Any] | None = None) -> dict[str, Any]:
    return preset_run.plan(coder, fixer, unit=UNIT)


def api_env(base: str, key: str | None = "sk-test") -> dict[str, str]:
    # litellm reads OPENAI_BASE_URL before OPENAI_API_BASE: both point at the server.
    return {"OPENAI_API_BASE": base, "OPENAI_BASE_URL": base,
            **({"OPENAI_API_KEY": key} if key else {})}


@pytest.fixture(scope="module")
def aider_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PATH with the pinned aider first: its executable alone, not its virtualenv's
    ``python`` and ``pip`` beside it."""
    bin_dir = real_cli.bin_dir("aider")
    only = tmp_path_factory.mktemp("aider-bin")
    (only / "aider").symlink_to(bin_dir / "aider")
    return f"{only}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in KEY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def run(repo: Path, data: dict[str, Any], env: dict[str, str]) -> Ran:
    return preset_run.run(repo, data, env=env, timeout=1800)


class ProxyRecorder:
    """An HTTPS proxy that records what it is asked to connect to and refuses it: with
    ``HTTPS_PROXY`` pointing here, every request aider makes to the internet shows."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.asked: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            connection, _ = self._socket.accept()
            with connection:
                connection.settimeout(10)
                try:
                    self.asked.append(connection.recv(4096).split(b"\r\n")[0].decode())
                    connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass


@dataclass
class Landed:
    ran: Ran
    home: Path
    requests: list[Any]
    proxied: list[str]


@pytest.fixture(scope="module")
def landed(hermetic_module: None, aider_path: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    """One coder run of the real aider that edits calc/ops.py, with every request to the
    internet sent to a recording proxy (the model server on 127.0.0.1 is not proxied)."""
    repo = make_repo(tmp_path_factory.mktemp("landed") / "repo")
    proxy = ProxyRecorder()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable in KEY_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        with ModelServer(chat_completions(SERVED), [EDIT]) as server:
            ran = run(repo, plan(aider_lane()), {
                "PATH": aider_path, **api_env(server.url + "/v1"),
                "HTTPS_PROXY": proxy.url, "https_proxy": proxy.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        yield Landed(ran, Path(os.environ["HOME"]), list(server.requests), list(proxy.asked))


def test_coder_edit_lands(landed: Landed) -> None:
    unit = landed.ran.unit
    assert (unit["status"], unit["failure_code"]) == ("integrated", None), unit
    assert git(landed.ran.repo, "show", "main:calc/ops.py") + "\n" == NEW_OPS
    assert git(landed.ran.repo, "show", "--name-only", "--format=", "main") == "calc/ops.py"
    (request,) = landed.requests
    assert request.path == "/v1/chat/completions"
    assert request.json["model"] == SERVED
    assert UNIT["objective"] in json.dumps(request.json["messages"])


def test_notes_are_the_models_answer_not_aiders_banners(landed: Landed) -> None:
    notes = landed.ran.result()["notes"]
    assert notes.startswith(BEFORE), notes
    assert notes.endswith(AFTER), notes
    for banner in ("Analytics", "Aider v", "Model:", "Git repo:", "Tokens:",
                   "model_prices_and_context_window", "Applied edit"):
        assert banner not in notes, notes


def test_usage_is_read_from_aiders_tokens_and_cost_lines(landed: Landed) -> None:
    # The server said 2345 tokens in, 67 out; aider prints "2.3k sent, 67 received" and
    # the price of gpt-4o-mini for them, "$0.00039".
    assert landed.ran.result()["usage"] == {"tokens_in": 2300, "tokens_out": 67,
                                            "cost_usd": 0.00039}


def test_aider_asks_the_internet_for_nothing(landed: Landed) -> None:
    """Not litellm's price list, not aider's copy of it, nothing else: a lane's cost is
    priced from the list installed with aider, and an offline lane waits for nothing."""
    assert landed.ran.unit["status"] == "integrated"
    assert landed.proxied == []


def test_sandboxed_aider_writes_only_its_own_home_directory(landed: Landed) -> None:
    """The lane ran sandboxed, where only the worktree, the unit's files and the preset's
    writable directories can be written: ~/.aider is all aider needs (it keeps its
    analytics id and caches there), and nothing else is made for it in HOME."""
    started = landed.ran.events()[0]
    assert started["event"] == "run_started" and started["sandbox"]["active"] is True
    wtmesh_own = landed.home / ".local" / "share" / "wtmesh"  # where the worktrees were
    every_tests = landed.home / ".codex"  # conftest: codex's stand-in config, in every home
    made = sorted(str(p.relative_to(landed.home)) for p in landed.home.rglob("*")
                  if p not in wtmesh_own.parents and not p.is_relative_to(wtmesh_own)
                  and not p.is_relative_to(every_tests))
    assert made and all(p.startswith(".aider") for p in made), made
    assert (landed.home / ".aider" / "analytics.json").is_file()


def test_fixer_accepts(repo: Path, aider_path: str) -> None:
    verdict = {"decision": "accept", "failure_code": None,
               "notes": "negate(a) returns -a as the objective asks and nothing else changed"}
    reply = Text(f"The change does what the unit asks.\n\nWTMESH_VERDICT {json.dumps(verdict)}")
    coder = {"command": lane("act.py", "write:calc/ops.py=" + NEW_OPS.replace("\n", "\\n"))}
    with ModelServer(chat_completions(SERVED), [reply]) as server:
        ran = run(repo, plan(coder, aider_lane()),
                  {"PATH": aider_path, **api_env(server.url + "/v1")})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("integrated", None), unit
    assert ran.result("fixer-1")["notes"] == verdict["notes"]
    (request,) = server.requests
    assert "+def negate(a: float) -> float:" in json.dumps(request.json["messages"])


def test_fixer_rejects(repo: Path, aider_path: str) -> None:
    head = git(repo, "rev-parse", "main")
    verdict = {"decision": "reject", "failure_code": "proof_missing",
               "notes": "negate is added but no test calls it; add one to tests/test_ops.py"}
    reply = Text(f"Not yet.\n\nWTMESH_VERDICT {json.dumps(verdict)}")
    coder = {"command": lane("act.py", "write:calc/ops.py=" + NEW_OPS.replace("\n", "\\n"))}
    with ModelServer(chat_completions(SERVED), [reply]) as server:
        ran = run(repo, plan(coder, aider_lane()),
                  {"PATH": aider_path, **api_env(server.url + "/v1")})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "proof_missing"), unit
    assert ran.result("fixer-1")["notes"] == verdict["notes"]
    assert git(repo, "rev-parse", "main") == head


def test_no_key_is_tooling_unavailable_and_not_retried(repo: Path, aider_path: str) -> None:
    with ModelServer(chat_completions(SERVED), [EDIT]) as server:
        ran = run(repo, plan(aider_lane(retries=2)),
                  {"PATH": aider_path, **api_env(server.url + "/v1", key=None)})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "tooling_unavailable"), unit
    assert unit["attempts"] == 1
    assert "api_key" in ran.result("coder-1")["notes"].lower()


def test_auth_error_is_tooling_unavailable_and_not_retried(repo: Path, aider_path: str) -> None:
    with ModelServer(chat_completions(SERVED), [Fail(401, "Incorrect API key provided")]) as server:
        ran = run(repo, plan(aider_lane(retries=2)),
                  {"PATH": aider_path, **api_env(server.url + "/v1")})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "tooling_unavailable"), unit
    assert unit["attempts"] == 1
    assert len(server.requests) == 1  # aider did not retry it either
    assert "Incorrect API key provided" in ran.result("coder-1")["notes"]


def test_unreachable_api_fails_at_once_and_is_not_retried(repo: Path, aider_path: str) -> None:
    """Nothing listens at the OpenAI base URL: aider would retry with backoff for a
    minute; the preset sees it first and never starts aider."""
    port = closed_port()
    ran = run(repo, plan(aider_lane(retries=2)),
              {"PATH": aider_path, **api_env(f"http://127.0.0.1:{port}/v1")})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "tooling_unavailable"), unit
    assert unit["attempts"] == 1
    log = ran.log("coder-1")
    assert f"cannot reach the model API: 127.0.0.1:{port}" in log
    assert "wtmesh-preset: running: aider" not in log


def test_no_model_and_no_key_stops_aiders_browser_login(repo: Path, aider_path: str) -> None:
    """With no model and no key aider offers an OpenRouter login and waits five minutes
    for a browser: the preset stops it there, and says what is missing."""
    lane_spec = {k: v for k, v in aider_lane(retries=2).items() if k != "model"}
    with ModelServer(chat_completions(SERVED), [EDIT]) as server:
        ran = run(repo, plan(lane_spec),
                  {"PATH": aider_path, **api_env(server.url + "/v1", key=None)})
    unit = ran.unit
    assert (unit["status"], unit["failure_code"]) == ("rejected", "tooling_unavailable"), unit
    assert unit["attempts"] == 1
    notes = ran.result("coder-1")["notes"]
    assert "OpenRouter" in notes and "model" in notes, notes
    assert "wtmesh-preset: running: aider" in ran.log("coder-1")
    assert server.requests == []


# -- what the preset reads without running aider ------------------------------------------

@pytest.mark.parametrize(("model", "args", "env", "url"), [
    ("openai/gpt-4o-mini", [], {"OPENAI_API_BASE": "http://127.0.0.1:9/v1"},
     "http://127.0.0.1:9/v1"),
    # litellm reads OPENAI_BASE_URL first, and --openai-api-base only sets OPENAI_API_BASE.
    ("openai/x", ["--openai-api-base", "http://a/v1"], {"OPENAI_BASE_URL": "http://b/v1"},
     "http://b/v1"),
    ("openai/x", ["--openai-api-base=http://a/v1"], {}, "http://a/v1"),
    ("gpt-4o", [], {}, "https://api.openai.com/v1"),
    ("sonnet", [], {"ANTHROPIC_BASE_URL": "http://c"}, "http://c"),
    ("openai/x", ["--model", "deepseek"], {}, "https://api.deepseek.com"),
    (None, [], {"AIDER_MODEL": "gemini/gemini-2.5-pro"},
     "https://generativelanguage.googleapis.com"),
    ("openrouter/anthropic/claude-sonnet-4", [], {}, "https://openrouter.ai/api/v1"),
    (None, [], {}, None),  # aider picks the model itself, from the keys it finds
    ("ollama_chat/llama3", [], {}, None),  # a provider the preset does not know
    ("openai/x", ["--env-file", "keys.env"], {}, None),
])
def test_api_url_is_the_models_provider(tmp_path: Path, model: str | None, args: list[str],
                                        env: dict[str, str], url: str | None) -> None:
    assert aider_api_url(tmp_path, model, args, env) == url


@pytest.mark.parametrize(("where", "name", "text", "told"), [
    ("worktree", ".aider.conf.yml", "model: sonnet\n", False),
    ("home", ".aider.conf.yml", "openai-api-base: http://127.0.0.1:11434/v1\n", False),
    ("home", ".env", "export OPENAI_API_BASE=http://127.0.0.1:11434/v1\n", False),
    ("worktree", ".aider.conf.yml", "dark-mode: true\n", True),
    ("home", ".env", "OPENAI_API_KEY=sk-x\n", True),
])
def test_api_url_is_not_told_when_aiders_files_may_say_otherwise(
        tmp_path: Path, where: str, name: str, text: str, told: bool) -> None:
    (tmp_path / where).mkdir(exist_ok=True)
    (tmp_path / where / name).write_text(text)
    url = aider_api_url(tmp_path, "openai/x", [], {"OPENAI_API_BASE": "http://127.0.0.1:9"})
    assert url == ("http://127.0.0.1:9" if told else None)


def aider_api_url(tmp_path: Path, model: str | None, args: list[str],
                  env: dict[str, str]) -> str | None:
    (tmp_path / "worktree").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    lane_ = Lane(preset="aider", role="coder", unit=UNIT, worktree=tmp_path / "worktree",
                 result_path=tmp_path / "r.json", work_dir=tmp_path / "r.preset", diff=None,
                 model=model, args=tuple(args))
    return PRESET.api_url(lane_, {"HOME": str(tmp_path / "home"), **env})


@pytest.mark.parametrize(("lines", "usage"), [
    (["Tokens: 12k sent, 1.5k received. Cost: $0.05 message, $0.05 session.",
      "Tokens: 2.3k sent, 1.0k cache write, 9.9k cache hit, 67 received.",
      "Cost: $0.01 message, $0.06 session."],
     {"tokens_in": 14300, "tokens_out": 1567, "cost_usd": 0.06}),
    (["Tokens: 950 sent, 12 received."], {"tokens_in": 950, "tokens_out": 12,
                                          "cost_usd": None}),
    (["Added calc/ops.py to the chat."], None),
])
def test_usage_sums_every_model_call_and_takes_the_session_cost(
        lines: list[str], usage: dict[str, Any] | None) -> None:
    found = usage_of("\n".join(f"> {line}  " for line in lines))
    assert (found.record() if found else None) == usage
