"""Test harness for presets: fake CLIs first on PATH, and a lane environment without wtmesh.

``install(bin_dir, "codex")`` writes an executable ``bin_dir/codex`` that runs the fake of
the same name with this interpreter. ``PresetLane`` prepares what wtmesh gives a lane (a
worktree, the unit JSON, the result path, the coder's diff for a fixer, the candidates file
for a critic or a synthesizer) and runs the preset runner in it, as ``_lane_run`` would.
With ``bin_dir`` given (a real CLI's), no fake is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent
NAMES = ("codex", "claude", "aider", "gemini", "opencode")
FLAG_ERROR = 97
# Two candidates of a consensus unit: the same function, one with a test.
CANDIDATE_DIFFS = {
    "a": ("diff --git a/calc/ops.py b/calc/ops.py\n--- a/calc/ops.py\n+++ b/calc/ops.py\n"
          "@@ -1,0 +1,2 @@\n+def negate(a):\n+    return -a\n"),
    "b": ("diff --git a/calc/ops.py b/calc/ops.py\n--- a/calc/ops.py\n+++ b/calc/ops.py\n"
          "@@ -1,0 +1,3 @@\n+def negate(a: float) -> float:\n+    \"\"\"-a.\"\"\"\n"
          "+    return 0 - a\n"),
}


def install(bin_dir: Path, *names: str) -> Path:
    """The fakes on a PATH directory. Their code is copied there too: a sandboxed lane
    sees its PATH, but not this checkout where it lies under a private /tmp (a CI clone
    made with mktemp -d)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    code = bin_dir / ".fakes"
    shutil.copytree(FAKES, code, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in names or NAMES:
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import runpy, sys\n"
            f"sys.path.insert(0, {str(code)!r})\n"
            f"runpy.run_path({str(code / name)!r}, run_name='__main__')\n")
        script.chmod(0o755)
    return bin_dir


def git_only(bin_dir: Path) -> Path:
    """A PATH directory holding git and nothing else: no agent CLI can be found."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    git = shutil.which("git")
    assert git is not None
    (bin_dir / "git").symlink_to(git)
    return bin_dir


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    records: list[dict[str, Any]]

    @property
    def call(self) -> dict[str, Any]:
        """The agent call (the record of the one non-``--version`` run)."""
        assert len(self.records) == 1, (self.records, self.stdout, self.stderr)
        return self.records[0]


@dataclass
class PresetLane:
    tmp: Path
    worktree: Path
    unit: dict[str, Any] = field(default_factory=dict)
    bin_dir: Path | None = None

    def __post_init__(self) -> None:
        self.unit = {"id": "u-001", "objective": "Treat trailing commas as invalid",
                     "unit_scope": ["calc/", "tests/"], "constraints": "Do not change public API",
                     "invariants": "Reject invalid input at boundary",
                     "proof_command": "python -m unittest -q", "proof_timeout_s": 60,
                     "depends_on": [], **self.unit}
        self.unit_dir = self.tmp / "unit"
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        if self.bin_dir is None:
            self.bin_dir = install(self.tmp / "fakebin")

    def candidates(self, diffs: dict[str, str] | None = None,
                   previous: list[dict[str, Any]] | None = None, **fields: Any) -> Path:
        """A candidates file as wtmesh writes one for a consensus lane (SPEC 12): each
        candidate's diff in a file of its own, in the lane's directory."""
        diffs = diffs if diffs is not None else dict(CANDIDATE_DIFFS)
        listed = []
        for name, diff in diffs.items():
            diff_file = self.unit_dir / f"critic.{name}.diff"
            diff_file.write_text(diff)
            changed = sum(1 for line in diff.splitlines()
                          if line[:1] in "+-" and line[:3] not in ("+++", "---"))
            listed.append({"name": name, "diff": str(diff_file),
                           "stats": {"files": 1, "insertions": changed, "deletions": 0},
                           "changed_lines": changed,
                           "proof": {"status": "pass", "duration_s": 1.5},
                           "notes": f"the {name} variant's lanes: added negate"})
        data = {"unit": self.unit["id"], "objective": self.unit["objective"], "round": 1,
                "rounds": 3, "quorum": 2, "candidates": listed, "previous": previous or [],
                **fields}
        path = self.unit_dir / "candidates.json"
        path.write_text(json.dumps(data))
        return path

    def run(self, preset: str, *options: str, role: str = "coder", scenario: str = "success",
            edit: str = "", verdict: dict[str, Any] | None = None, diff: str | None = None,
            path: str | None = None, extra_env: dict[str, str] | None = None,
            candidates: Path | None = None, timeout: float = 120) -> Ran:
        unit_json = self.unit_dir / "unit.json"
        unit_json.write_text(json.dumps(self.unit))
        result = self.unit_dir / f"{role}-1.result.json"
        result.unlink(missing_ok=True)
        record = self.unit_dir / "record.jsonl"
        record.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update({
            "WTMESH_RUN_ID": "r1", "WTMESH_UNIT_ID": self.unit["id"], "WTMESH_LANE": role,
            "WTMESH_ATTEMPT": "1", "WTMESH_UNIT_JSON": str(unit_json),
            "WTMESH_RESULT_JSON": str(result), "WTMESH_WORKTREE": str(self.worktree),
            "WTMESH_REPO": str(self.worktree), "WTMESH_PLAN_DIR": str(self.tmp),
            "PATH": path or f"{self.bin_dir}{os.pathsep}{env['PATH']}",
            "FAKE_SCENARIO": scenario, "FAKE_EDIT": edit, "FAKE_RECORD": str(record),
        })
        if verdict is not None:
            env["FAKE_VERDICT"] = json.dumps(verdict)
        if role in ("critic", "synthesizer"):
            env["WTMESH_CANDIDATES_JSON"] = str(candidates or self.candidates())
            env["WTMESH_ROUND"] = "1"
            if role == "critic":
                env["WTMESH_CRITIC"] = "skeptic"
        if role == "fixer":
            diff_file = self.unit_dir / "coder.diff"
            diff_file.write_text(diff if diff is not None else "")
            env["WTMESH_DIFF"] = str(diff_file)
        env.update(extra_env or {})
        done = subprocess.run(
            [sys.executable, "-P", "-m", "worktree_mesh.presets", preset, "--role", role,
             *options],
            cwd=self.worktree, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout, check=False)
        records = ([json.loads(line) for line in record.read_text().splitlines()]
                   if record.exists() else [])
        return Ran(done.returncode, done.stdout.decode(), done.stderr.decode(),
                   json.loads(result.read_text()) if result.exists() else None, records)
