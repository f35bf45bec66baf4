"""The preset runner: one lane attempt of an agent CLI, ending in a written result file.

Runs inside the lane process wtmesh started (``python -m worktree_mesh.presets NAME``),
so the lane's process group, timeout, closed stdin and log files already hold: the CLI is
started in this same process group (a lane timeout kills it with us) and its output is
copied line by line into the lane's logs while the runner keeps it for parsing.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .. import conflict, proc
from . import PRESETS, ROLES
from .base import Completed, Lane, Preset, Transcript, first_line
from .critique import candidates_problem, prompt, verdict_schema
from .outcome import Outcome, decide, reject

VERSION_TIMEOUT_S = 60.0
API_CONNECT_TIMEOUT_S = 10.0
STDERR_TAIL = 8192
_GIT = ("git", "-c", "core.hooksPath=/dev/null")


class Misuse(Exception):
    """Not run as a wtmesh lane (no lane environment)."""


def log(line: str) -> None:
    sys.stdout.write(f"wtmesh-preset: {line}\n")
    sys.stdout.flush()


def load(name: str) -> Preset:
    module = importlib.import_module(f"{__package__}.{name}")
    preset: Preset = module.PRESET
    return preset


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worktree_mesh.presets",
                                     description="Run an agent CLI as a wtmesh lane.")
    parser.add_argument("preset", choices=PRESETS)
    parser.add_argument("--role", choices=ROLES,
                        help="coder, fixer, critic or synthesizer (default: $WTMESH_LANE)")
    parser.add_argument("--model")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--max-budget-usd", type=float)
    parser.add_argument("--arg", action="append", default=[],
                        help="an extra argument for the CLI (repeatable)")
    return parser.parse_args(list(argv))


def lane_from_env(ns: argparse.Namespace) -> Lane:
    env = os.environ
    result = env.get("WTMESH_RESULT_JSON")
    unit_json = env.get("WTMESH_UNIT_JSON")
    if not result or not unit_json:
        raise Misuse("WTMESH_RESULT_JSON and WTMESH_UNIT_JSON are not set: "
                     "run this as a wtmesh lane")
    role = ns.role or env.get("WTMESH_LANE", "")
    if role not in ROLES:
        raise Misuse(f"no --role given and $WTMESH_LANE is not one of {', '.join(ROLES)}")
    result_path = Path(result)
    stem = result_path.name.removesuffix(".json").removesuffix(".result")
    diff_file = env.get("WTMESH_DIFF")
    diff = (Path(diff_file).read_bytes().decode("utf-8", "replace")
            if role == "fixer" and diff_file and Path(diff_file).is_file() else None)
    unit = json.loads(Path(unit_json).read_text("utf-8"))
    if env.get("WTMESH_UNIT_ID"):
        unit = {**unit, "id": env["WTMESH_UNIT_ID"]}
    return Lane(
        preset=ns.preset, role=role, unit=unit,
        worktree=Path(env.get("WTMESH_WORKTREE") or os.getcwd()),
        result_path=result_path, work_dir=result_path.parent / f"{stem}.preset",
        diff=diff, model=ns.model, max_turns=ns.max_turns, max_budget_usd=ns.max_budget_usd,
        args=tuple(ns.arg), candidates=candidates_from_env(role),
        critic=env.get("WTMESH_CRITIC") or None,
        conflict=(conflict.describe(Path(env["WTMESH_CONFLICT"])) or None
                  if env.get("WTMESH_CONFLICT") else None))


def candidates_from_env(role: str) -> dict[str, Any] | None:
    """The candidates file a critic or a synthesizer works from (SPEC 12)."""
    if role not in ("critic", "synthesizer"):
        return None
    path = os.environ.get("WTMESH_CANDIDATES_JSON")
    if not path:
        raise Misuse(f"a {role} needs $WTMESH_CANDIDATES_JSON (the candidates file): run it "
                     "as a lane of a consensus unit")
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise Misuse(f"cannot read $WTMESH_CANDIDATES_JSON {path}: "
                     f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise Misuse(f"$WTMESH_CANDIDATES_JSON {path} is not JSON: {exc}") from None
    problem = candidates_problem(data)
    if problem:
        raise Misuse(f"$WTMESH_CANDIDATES_JSON {path}: {problem}")
    found: dict[str, Any] = data
    return found


def write_result(lane: Lane, outcome: Outcome) -> None:
    tmp = lane.result_path.with_name(lane.result_path.name + ".tmp")
    tmp.write_text(json.dumps(outcome.record(lane.unit_id), indent=2) + "\n", "utf-8")
    os.replace(tmp, lane.result_path)
    log(f"result: {outcome.decision}"
        + (f" ({outcome.failure_code})" if outcome.failure_code else "")
        + (f": {first_line(outcome.notes)}" if outcome.notes else ""))


def probe_version(binary: str) -> str:
    """``BIN --version``, recorded in the lane log; raises OSError when it fails."""
    try:
        done = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=VERSION_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"`{binary} --version` did not answer in {VERSION_TIMEOUT_S:g}s") from None
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise OSError(f"`{binary} --version` exited {done.returncode}: {first_line(text)}")
    return first_line(text, "(no version printed)")


def api_unreachable(url: str | None) -> str | None:
    """Why nothing answers at ``url``'s host and port (a TCP connection, through a proxy
    the environment names, if any, is not tried: then None), or None when something does.
    Offline, or with a base URL pointing nowhere, the CLIs retry with backoff until the
    lane's timeout (codex and gemini for ever): a lane must end at once instead, and not
    be retried."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host or urllib.request.getproxies().get(parts.scheme or "https"):
        return None
    port = parts.port or (80 if parts.scheme == "http" else 443)
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=API_CONNECT_TIMEOUT_S):
            return None
    except socket.gaierror as exc:
        return f"{where} (the name does not resolve: {exc.strerror or exc})"
    except TimeoutError:
        return f"{where} (no answer in {API_CONNECT_TIMEOUT_S:g} s)"
    except OSError as exc:
        return f"{where} ({exc.strerror or exc})"


def _pump(src: IO[bytes], sinks: Sequence[IO[bytes]], tail: bytearray | None,
          watch: Callable[[bytes], None] | None = None) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):  # type: ignore[attr-defined]
        for sink in sinks:
            sink.write(chunk)
            sink.flush()
        if tail is not None:
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]
        if watch is not None:
            watch(chunk)


class _LineWatch:
    """Gives each whole line of the CLI's stdout to the preset's ``stop_reason``; the
    first reason it gives kills the CLI (its output is still read to the end)."""

    def __init__(self, stop_reason: Callable[[str], str | None],
                 child: subprocess.Popen[bytes]) -> None:
        self._stop_reason = stop_reason
        self._child = child
        self._partial = b""
        self.reason: str | None = None

    def __call__(self, chunk: bytes) -> None:
        if self.reason is not None:
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self._partial = self._partial[-STDERR_TAIL:]  # a line that never ends
        for line in lines:
            self.reason = self._stop_reason(line.decode("utf-8", "replace"))
            if self.reason is not None:
                self._child.kill()
                return


def run_cli(argv: Sequence[str], *, cwd: Path, env: dict[str, str], stdin: Path | None,
            stdout_path: Path,
            stop_reason: Callable[[str], str | None] | None = None) -> Completed:
    """Run the CLI, copying its output into the lane logs as it comes (and stopping it
    when ``stop_reason`` gives a reason for a line of its stdout).

    Not ``proc.run_logged``: that starts a new process group, and the CLI must stay in
    the lane's group so that the lane's timeout stops it."""
    tail = bytearray()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as feed, \
            open(stdout_path, "wb") as kept:
        child = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=feed,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stderr is not None
        watch = _LineWatch(stop_reason, child) if stop_reason else None
        err = threading.Thread(target=_pump, args=(child.stderr, [sys.stderr.buffer], tail),
                               daemon=True)
        err.start()
        _pump(child.stdout, [kept, sys.stdout.buffer], None, watch)
        returncode = child.wait()
        err.join()
    return Completed(returncode, stdout_path, tail.decode("utf-8", "replace"),
                     watch.reason if watch else None)


def _git(worktree: Path, *args: str) -> proc.Completed:
    return proc.run([*_GIT, *args], cwd=worktree, check=False)


def head(worktree: Path) -> str:
    return _git(worktree, "rev-parse", "-q", "--verify", "HEAD").text.strip()


def undo_commits(lane: Lane, before: str) -> str | None:
    """An agent that committed anyway: move HEAD back, keeping every change in the index
    and the files (wtmesh snapshots the worktree's files, not HEAD)."""
    after = head(lane.worktree)
    if not before or after == before:
        return None
    _git(lane.worktree, "reset", "-q", "--soft", before)
    return f"the agent committed ({after[:12]}); the commit was undone, its changes kept"


def remove_litter(worktree: Path, patterns: Sequence[str]) -> list[str]:
    """Remove untracked files the CLI left at the worktree root (aider's ``.aider*``), so
    they never reach the diff; a tracked file of the same name is the project's, kept."""
    removed = []
    for entry in sorted(worktree.iterdir()):
        if not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            continue
        if _git(worktree, "ls-files", "--error-unmatch", "--", entry.name).returncode == 0:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


def has_changes(worktree: Path) -> bool:
    status = _git(worktree, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    return bool(status.stdout.strip(b"\0"))


def attempt(lane: Lane, preset: Preset) -> Outcome:
    binary = shutil.which(preset.binary, path=os.environ.get("PATH"))
    if binary is None:
        return reject("tooling_unavailable",
                      f"`{preset.binary}` is not on PATH: install the {preset.name} CLI")
    try:
        log(f"{preset.binary} --version: {probe_version(binary)}")
    except OSError as exc:
        return reject("tooling_unavailable", str(exc))
    lane.work_dir.mkdir(parents=True, exist_ok=True)
    schema = verdict_schema(lane)
    native = schema is not None and getattr(preset, "native_schema", False)
    lane.prompt_path.write_text(prompt(lane, native_schema=native), "utf-8")
    if schema is not None:
        lane.schema_path.write_text(json.dumps(schema, indent=2) + "\n", "utf-8")
    call = preset.invocation(lane)
    if call.refused:
        return reject("tooling_unavailable", f"{preset.name}: {call.refused}")
    for note in call.notes:
        log(note)
    env = {**os.environ, **call.env}
    unreachable = api_unreachable(preset.api_url(lane, env))
    if unreachable:
        return reject("tooling_unavailable", f"cannot reach the model API: {unreachable}")
    log("running: " + " ".join(call.argv) + (f" < {call.stdin}" if call.stdin else ""))
    before = head(lane.worktree)
    try:
        done = run_cli([binary, *call.argv[1:]], cwd=lane.worktree, env=env,
                       stdin=call.stdin, stdout_path=lane.work_dir / "cli.stdout",
                       stop_reason=getattr(preset, "stop_reason", None))
    except OSError as exc:
        return reject("tooling_unavailable", f"cannot start {binary}: {exc.strerror or exc}")
    removed = remove_litter(lane.worktree, preset.litter)
    if removed:
        log("removed " + ", ".join(removed))
    undone = undo_commits(lane, before)
    if undone:
        log(undone)
    if done.stopped:
        return reject("tooling_unavailable", f"{preset.name}: {done.stopped}")
    if done.returncode in (126, 127):
        return reject("tooling_unavailable", f"{binary} could not run (exit {done.returncode})")
    try:
        transcript: Transcript = preset.read(lane, done)
    except Exception as exc:  # noqa: BLE001 - output of a shape the preset does not know
        return reject("invalid_output_schema",
                      f"{preset.name}: its output could not be read ({type(exc).__name__}: "
                      f"{first_line(str(exc), 'no detail')})")
    changed = has_changes(lane.worktree)
    if changed and not lane.edits:
        log("the critic changed the worktree: wtmesh discards its critique")
    outcome = decide(lane, transcript, changed=changed)
    if undone:
        outcome = dataclasses.replace(outcome, notes=f"{outcome.notes} ({undone})")
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        lane = lane_from_env(ns)
    except (Misuse, OSError, ValueError) as exc:
        sys.stderr.write(f"wtmesh-preset: error: {exc}\n")
        return 2
    outcome = attempt(lane, load(ns.preset))
    write_result(lane, outcome)
    # A critique that rejects every candidate is a lane that did its work.
    return 0 if outcome.decision != "reject" or outcome.critique is not None else 1
