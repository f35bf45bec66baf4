"""OpenAI Codex: ``codex exec`` (AGENT-CLIS.md, "OpenAI Codex").

- Edits: ``-s workspace-write`` (a critic's: ``-s read-only``, nothing writable) makes the
  worktree (``-C``) the only writable root besides
  the lane's own temporary directory (``TMPDIR``, beside the result file); ``/tmp`` is
  excluded (codex leaves it writable by default). The linked worktree's git directory lies
  outside, so ``git commit`` fails inside the sandbox: commits are forbidden by
  construction (the prompt says so too).
- Codex's sandbox is bubblewrap. Before starting the agent the preset asks codex to run
  ``true`` in it: where that fails (bubblewrap cannot nest in wtmesh's sandbox when run as
  root, user namespaces refused, a configuration codex's sandbox rejects) every command
  the agent ran would fail, without an event saying so, and the unit would end ``no_diff``.
  Then, inside wtmesh's sandbox, codex runs with ``-s danger-full-access`` and wtmesh's
  sandbox alone confines its commands; outside it, the lane ends ``tooling_unavailable``.
- Non-interactive: ``exec`` never asks for approval; the prompt comes on stdin (``-``).
- Bounds: codex has no turn or cost flag; the lane's timeout bounds it.
- Output: ``--json`` JSONL events; ``-o`` keeps the final message; a fixer's verdict and a
  critic's critique use ``--output-schema``; ``turn.completed`` carries the tokens (no cost).
- Failures: ``turn.failed`` and ``error`` events (codex may exit 0 after a capacity error,
  so the events decide, not only the exit code); a ``command_execution`` item with status
  ``declined`` is a denial. So is a command codex's rules (``$CODEX_HOME/rules/*.rules``)
  forbid, or want approval for, which ``exec`` can never give: codex tells the model and
  logs it on stderr (``... failed: CreateProcess { message: "Rejected(...)" }``), with no
  event on stdout.
- Model API: the provider the configuration names (the lane's ``-c`` args over
  ``$CODEX_HOME/config.toml``); codex's own is ``https://api.openai.com/v1`` unless
  ``openai_base_url`` is set (codex ignores ``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import (
    Completed,
    Invocation,
    Lane,
    Transcript,
    Usage,
    first_line,
    json_lines,
    unavailable_reason,
)
from .critique import verdict_schema
from .prompt import parse_verdict_text

OPENAI_API = "https://api.openai.com/v1"
# codex's built-in local providers (``--oss``) and where they listen by default.
LOCAL_APIS = {"ollama": "http://localhost:11434/v1", "lmstudio": "http://localhost:1234/v1"}
SANDBOX_CHECK_TIMEOUT_S = 60.0
# The built-in permission profiles of ``-s workspace-write`` and ``-s read-only``, for
# ``codex sandbox``.
WORKSPACE_PROFILE = ":workspace"
WORKSPACE_WRITE = ("-s", "workspace-write", "-c", "sandbox_workspace_write.exclude_slash_tmp=true")
READ_ONLY_PROFILE = ":read-only"
READ_ONLY = ("-s", "read-only")
# Codex's word for a model provider whose key variable is unset: a missing key.
_MISSING_KEY = re.compile(r"missing environment variable", re.IGNORECASE)
_RECONNECTING = re.compile(r"^\s*reconnecting\b", re.IGNORECASE)
# Codex's stderr line for a tool call its rules or approval policy refused (0.171.0).
_REJECTED = re.compile(r'\bfailed: CreateProcess \{ message: "Rejected\(\\"(.*)\\"\)" \}')


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(event.get("message") or error or "")


# -- which model API codex will call -------------------------------------------------------


def _option_values(args: Sequence[str], *names: str) -> list[str]:
    """The values given to ``names`` in ``args`` (``-c X``, ``-c=X``, ``--config=X``)."""
    values = []
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                values.append(args[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg[len(name) + 1:])
    return values


def _toml_value(raw: str) -> Any:
    """A ``-c`` value as codex reads it: TOML, else the raw text as a string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.strip().split(".")
    table = config
    for part in parents:
        child = table.get(part)
        if not isinstance(child, dict):
            child = table[part] = {}
        table = child
    table[last] = value


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def codex_home(env: Mapping[str, str]) -> Path | None:
    if env.get("CODEX_HOME"):
        return Path(env["CODEX_HOME"])
    home = env.get("HOME")
    return Path(home) / ".codex" if home else None


class UnreadableConfig(Exception):
    pass


def _toml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UnreadableConfig(f"{path}: {exc}") from None


def codex_config(args: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration codex will run with, as far as the model provider goes:
    ``$CODEX_HOME/config.toml``, the profile ``-p NAME`` layers on it
    (``$CODEX_HOME/NAME.config.toml``; codex 0.171 refuses the older ``[profiles]``
    tables itself), then the ``-c key=value`` overrides, in that order."""
    home = codex_home(env)
    config: dict[str, Any] = {}
    if home is not None and "--ignore-user-config" not in args:
        config = _toml_file(home / "config.toml")
    for profile in _option_values(args, "-p", "--profile")[-1:]:
        if home is not None:
            config = _merge(config, _toml_file(home / f"{profile}.config.toml"))
    for override in _option_values(args, "-c", "--config"):
        key, sep, raw = override.partition("=")
        if sep:
            _set_dotted(config, key, _toml_value(raw.strip()))
    return config


def provider_url(config: Mapping[str, Any], args: Sequence[str],
                 env: Mapping[str, str]) -> str | None:
    """The base URL of the model provider ``config`` selects (None: it cannot be told)."""
    if "--oss" in args:
        local = _option_values(args, "--local-provider")
        provider = local[-1] if local else config.get("oss_provider")
    else:
        provider = config.get("model_provider", "openai")
    if not isinstance(provider, str):
        return None
    providers = config.get("model_providers")
    declared = providers.get(provider) if isinstance(providers, Mapping) else None
    if isinstance(declared, Mapping) and isinstance(declared.get("base_url"), str):
        return str(declared["base_url"])
    if provider == "openai":
        base = config.get("openai_base_url")
        return base if isinstance(base, str) and base else OPENAI_API
    if provider in LOCAL_APIS:
        return env.get("CODEX_OSS_BASE_URL") or LOCAL_APIS[provider]
    return None


# -- can codex's own sandbox run a command here ----------------------------------------------


def sandbox_problem(binary: str, lane: Lane, env: Mapping[str, str]) -> str | None:
    """Why codex's sandbox cannot run a command in the worktree, configured as this lane
    configures codex, in one line of codex's; None when it can, or when this codex cannot
    be asked (then the agent runs as usual)."""
    config = [arg for name in ("-c", "--config", "--enable", "--disable")
              for value in _option_values(lane.args, name) for arg in (name, value)]
    profile = WORKSPACE_PROFILE if lane.edits else READ_ONLY_PROFILE
    argv = [binary, "sandbox", *config, "-P", profile, "-C", str(lane.worktree), "--", "true"]
    try:
        done = subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=SANDBOX_CHECK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    said = done.stderr.decode("utf-8", "replace")
    if done.returncode == 0 or (done.returncode == 2 and "Usage:" in said):
        return None  # it works, or this version has no such check
    return _sandbox_reason(said, done.returncode)


_NOISE = ("warning:", "note:", "stack backtrace", "thread '")


def _sandbox_reason(said: str, returncode: int) -> str:
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    bwrap = [line for line in lines if line.startswith("bwrap:")]
    telling = [line for line in lines if not line.lower().startswith(_NOISE)
               and not line[:1].isdigit()]
    return (bwrap or telling or [f"exit {returncode}"])[0][:300]


def _chooses_sandbox(args: Sequence[str]) -> bool:
    """The lane's args set codex's sandbox mode themselves (codex takes one ``-s``)."""
    return any(arg in ("-s", "--sandbox", "--dangerously-bypass-approvals-and-sandbox",
                       "--yolo") or arg.startswith(("-s=", "--sandbox=")) for arg in args)


def confined_by_wtmesh(env: Mapping[str, str]) -> bool:
    """Running in wtmesh's sandbox: it says so, and the file system around is read-only."""
    try:
        root_read_only = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    except OSError:
        return False
    return env.get("WTMESH_SANDBOX") == "bwrap" and root_read_only


@dataclass(frozen=True)
class SandboxChoice:
    args: tuple[str, ...]  # codex's sandbox mode
    note: str | None = None  # why it is not the usual one, for the lane log
    refused: str | None = None  # no sandbox the agent's commands could run in


def choose_sandbox(binary: str, lane: Lane, env: Mapping[str, str]) -> SandboxChoice:
    """workspace-write (a critic: read-only) where codex's sandbox can run a command; else,
    inside wtmesh's sandbox, none of codex's own (wtmesh's confines the commands); else
    nothing works."""
    if _chooses_sandbox(lane.args):
        return SandboxChoice(())
    found = shutil.which(binary, path=env.get("PATH"))
    problem = sandbox_problem(found, lane, env) if found else None
    if problem is None:
        return SandboxChoice(WORKSPACE_WRITE if lane.edits else READ_ONLY)
    if confined_by_wtmesh(env):
        return SandboxChoice(("-s", "danger-full-access"), note=(
            f"codex's own sandbox cannot run a command here ({problem}): its commands run "
            "in wtmesh's sandbox alone (-s danger-full-access)"))
    return SandboxChoice((), refused=(
        f"its sandbox cannot run a command here ({problem}); run the lane in wtmesh's "
        "sandbox, or choose codex's in the lane's args (such as -s danger-full-access, "
        "where something else confines it)"))


class Codex:
    name = "codex"
    binary = "codex"
    litter: tuple[str, ...] = ()
    native_schema = True

    def invocation(self, lane: Lane) -> Invocation:
        # The lane's own temporary directory: writable to the agent's commands (tests,
        # compilers need one), while /tmp, shared with every other process, is not.
        tmp = lane.work_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {"TMPDIR": str(tmp)}
        sandbox = choose_sandbox(self.binary, lane, {**os.environ, **env})
        if sandbox.refused:
            return Invocation((), refused=sandbox.refused)
        argv = ["codex", "exec", "-C", str(lane.worktree), *sandbox.args,
                "--ephemeral", "--json", "-o", str(lane.work_dir / "last-message.txt")]
        if verdict_schema(lane) is not None:
            argv += ["--output-schema", str(lane.schema_path)]
        if lane.model:
            argv += ["-m", lane.model]
        argv += [*lane.args, "-"]
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path,
                          notes=(sandbox.note,) if sandbox.note else ())

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        try:
            return provider_url(codex_config(lane.args, env), lane.args, env)
        except UnreadableConfig:
            return None  # codex will say what is wrong with its configuration itself

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        errors: list[str] = []
        failed_turn: str | None = None
        completed = False
        spent: list[dict[str, Any]] = []
        for event in json_lines(done.stdout):
            kind = event.get("type")
            item = event.get("item")
            item = item if isinstance(item, dict) else {}
            if kind == "item.completed" and item.get("type") == "agent_message":
                t.message = str(item.get("text", ""))
            elif kind == "item.completed" and item.get("type") == "command_execution" \
                    and item.get("status") == "declined":
                t.denials.append(f"command `{item.get('command', '?')}`")
            elif kind == "turn.completed":
                completed = True
                if isinstance(event.get("usage"), dict):
                    spent.append(event["usage"])
            elif kind == "turn.failed":
                failed_turn = _error_text(event) or kind
            elif kind == "error":
                errors.append(_error_text(event) or kind)
        t.denials.extend(_rejections(done.stderr_tail))
        t.usage = _usage(spent)
        last = lane.work_dir / "last-message.txt"
        if last.is_file() and last.read_text("utf-8", "replace").strip():
            t.message = last.read_text("utf-8", "replace")
        failed = done.returncode != 0 or failed_turn is not None or (bool(errors) and
                                                                      not completed)
        if failed:
            why = failed_turn or _last_word(errors) or first_line(
                done.stderr_tail, f"codex exited {done.returncode}")
            t.unavailable = (unavailable_reason(why) or _missing_key(why)
                             or unavailable_reason(done.stderr_tail))
            t.error = why
        if lane.role == "fixer":
            t.verdict = parse_verdict_text(t.message)
        return t


def _rejections(stderr: str) -> list[str]:
    """The commands codex refused to run, from its log lines on stderr."""
    return [m.group(1).replace('\\"', '"').replace("\\'", "'")
            for m in map(_REJECTED.search, stderr.splitlines()) if m]


def _last_word(errors: list[str]) -> str | None:
    """Codex's final error, not the "Reconnecting... n/5" lines of its retries before it."""
    settled = [e for e in errors if not _RECONNECTING.match(e)]
    return (settled or errors)[-1] if errors else None


def _missing_key(why: str) -> str | None:
    return why.strip()[:300] if _MISSING_KEY.search(why) else None


def _usage(spent: list[dict[str, Any]]) -> Usage | None:
    """Tokens over the run's turns (``exec`` has one): ``input_tokens`` counts the cached
    ones too; codex reports no cost."""
    if not spent:
        return None

    def total(key: str) -> int | None:
        counts = [u[key] for u in spent if isinstance(u.get(key), int)]
        return sum(counts) if counts else None

    return Usage(tokens_in=total("input_tokens"), tokens_out=total("output_tokens"))


PRESET = Codex()
