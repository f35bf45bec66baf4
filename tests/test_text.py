"""Names and text wtmesh did not choose, written out: a file name that is not UTF-8 (git
allows any bytes but NUL and '/') or a lane's notes with lone surrogates never stop a
run from writing its report, summary, lines or status, all valid UTF-8."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, git

from worktree_mesh.git import decode_path
from worktree_mesh.text import printable, quote_path

# Python's stdout is strict in a UTF-8 locale other than C.UTF-8 (where it escapes).
STRICT = {"PYTHONIOENCODING": "utf-8:strict"}


@pytest.mark.parametrize("name", [
    b"plain.txt", b"caf\xe9.txt", b"tab\there", b'say "hi"', b"back\\slash", b"bell\x07",
    b"del\x7f", b"nl\nname", b"mixed \xff\xfe.bin"])
def test_a_name_is_quoted_as_git_quotes_it(tmp_path: Path, name: bytes) -> None:
    """With no UTF-8 letters in it, git's default quoting (core.quotePath) is ours."""
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", str(repo))
    Path(repo, decode_path(name)).write_bytes(b"x")
    shown = subprocess.run(["git", "ls-files", "--others"], cwd=repo, capture_output=True,
                           check=True).stdout.decode("ascii").rstrip("\n")
    assert quote_path(decode_path(name)) == shown


def test_utf8_letters_stay_readable_and_only_bad_bytes_are_escaped() -> None:
    assert quote_path("café.txt") == "café.txt"
    assert quote_path(decode_path("café-".encode() + b"\xe9")) == '"café-\\351"'
    assert printable("caf\udce9 \ud800 ok") == "caf\\xe9 \\ud800 ok"


def strict_text(data: bytes) -> str:
    return data.decode("utf-8")  # raises on anything that is not UTF-8


def no_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return printable(value) == value
    if isinstance(value, dict):
        return all(no_surrogates(k) and no_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return all(no_surrogates(v) for v in value)
    return True


def run_bytes(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-m", "worktree_mesh", *args], cwd=repo, capture_output=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, **STRICT}, timeout=300,
                          check=False)


def written_out(repo: Path, summary: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The run's report (strict UTF-8) and its ledger, with summary.json as printed."""
    run_dir = repo / ".git/wtmesh/runs" / summary["run_id"]
    assert json.loads(strict_text((run_dir / "summary.json").read_bytes())) == summary
    ledger = [json.loads(strict_text(line))
              for line in (run_dir / "ledger.jsonl").read_bytes().splitlines()]
    return strict_text((run_dir / "report.md").read_bytes()), ledger


def test_a_non_utf8_name_outside_the_scope_fails_the_unit_and_everything_is_written(
        repo: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{
        "id": "u1", "objective": "o", "unit_scope": ["calc/"],
        "lanes": {"coder": {"command": [PY, "-c", "open(b'caf\\xe9.txt', 'wb').write(b'x')"]}},
    }]}))
    res = run_bytes(repo, "run", str(plan), "--json")
    assert res.returncode == 1, res.stderr
    summary = json.loads(strict_text(res.stdout))
    (unit,) = summary["units"]
    assert (unit["status"], unit["failure_code"]) == ("failed", "scope_violation")
    assert unit["files"] == ['"caf\\351.txt"']
    report, ledger = written_out(repo, summary)
    assert 'outside unit_scope: "caf\\351.txt"' in report
    assert no_surrogates(ledger)
    # Plain lines and the table, on a stdout that refuses what is not UTF-8.
    plain = run_bytes(repo, "run", str(plan))
    assert plain.returncode == 1, plain.stderr
    assert 'scope_violation: outside unit_scope: "caf\\351.txt"' in strict_text(plain.stdout)
    status = run_bytes(repo, "status")
    assert status.returncode == 0, status.stderr
    assert '"caf\\351.txt"' in strict_text(status.stdout)
    status_json = run_bytes(repo, "status", summary["run_id"], "--json")
    assert status_json.returncode == 0, status_json.stderr
    assert json.loads(strict_text(status_json.stdout))["units"][0]["evidence"] == \
        'outside unit_scope: "caf\\351.txt"'
    assert git(repo, "status", "--porcelain") == ""


def test_a_lanes_notes_with_lone_surrogates_are_written_escaped(repo: Path,
                                                                tmp_path: Path) -> None:
    """A hostile lane's result file spells lone surrogates as JSON escapes, which Python
    reads into a str that UTF-8 cannot encode: the report, the summary, status and the
    learnings file show them escaped instead."""
    result = '{"id": "u1", "decision": "reject", "notes": "caf\\udce9 and \\ud800"}'
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{
        "id": "u1", "objective": "o",
        "lanes": {"coder": {"command": f"echo '{result}' > \"$WTMESH_RESULT_JSON\""}}}]}))
    learned = tmp_path / "learnings.jsonl"
    res = run_bytes(repo, "run", str(plan), "--json", "--learnings", str(learned))
    assert res.returncode == 1, res.stderr
    summary = json.loads(strict_text(res.stdout))
    assert summary["units"][0]["status"] == "rejected"
    report, _ledger = written_out(repo, summary)
    assert "caf\\xe9 and \\ud800" in report
    (learning,) = [json.loads(strict_text(line)) for line in learned.read_bytes().splitlines()]
    assert no_surrogates(learning)
    status = run_bytes(repo, "status")
    assert status.returncode == 0, status.stderr
    assert "caf\\xe9 and \\ud800" in strict_text(status.stdout)
    plain = run_bytes(repo, "run", str(plan))
    assert plain.returncode == 1 and b"Traceback" not in plain.stderr, plain.stderr
    assert "caf\\xe9 and \\ud800" in strict_text(plain.stdout)
