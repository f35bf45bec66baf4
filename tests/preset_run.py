"""One preset run through the real ``wtmesh run --json``, as the preset tests make it: a
one-unit plan beside the repository, an agent CLI's directory first on PATH, and what the
run left (the unit, its lanes' logs and result files, the ledger)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import PROOF, state_dir, wtmesh

UNIT: dict[str, Any] = {"id": "u1", "objective": "Add a constant VALUE = 1 in calc/extra.py",
                        "unit_scope": ["calc/"]}


def plan(coder: Mapping[str, Any], fixer: Mapping[str, Any] | None = None, *,
         unit: Mapping[str, Any] = UNIT, lane: Mapping[str, Any] | None = None
         ) -> dict[str, Any]:
    """A plan of ``unit`` with a coder lane and, unless None, a fixer lane; ``lane`` is
    what both lanes have unless they say otherwise."""
    lanes = {"coder": {**(lane or {}), **coder}}
    if fixer is not None:
        lanes["fixer"] = {**(lane or {}), **fixer}
    return {"proof_command": PROOF, "lanes": lanes, "units": [dict(unit)]}


@dataclass
class Ran:
    """What one run printed and left, for its only unit."""

    repo: Path
    summary: dict[str, Any]
    stderr: str

    @property
    def unit(self) -> dict[str, Any]:
        (unit,) = self.summary["units"]
        return dict(unit)

    @property
    def run_dir(self) -> Path:
        return state_dir(self.repo) / "runs" / str(self.summary["run_id"])

    def file(self, name: str) -> Path:
        """A file (or directory) of the unit's: ``coder-1.result.json``, ``coder-1.preset``."""
        return self.run_dir / "units" / "u1" / name

    def log(self, lane: str = "coder-1", stream: str = "stdout") -> str:
        return self.file(f"{lane}.{stream}.log").read_text()

    def result(self, lane: str = "coder-1") -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.file(f"{lane}.result.json").read_text())
        return record

    def events(self) -> list[dict[str, Any]]:
        lines = (self.run_dir / "ledger.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def on_path(bin_dir: Path | str) -> str:
    """PATH with ``bin_dir`` first."""
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def run(repo: Path, data: Mapping[str, Any], *args: str, bin_dir: Path | str | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 900) -> Ran:
    """``wtmesh run <plan> --json [args]`` in ``repo``, the plan written beside it, with
    ``bin_dir`` first on PATH and ``env`` over the test's environment. The run ends as a
    run does (exit 0 or 1), without a traceback."""
    plan_path = repo.parent / "plan.json"
    plan_path.write_text(json.dumps(data, indent=2))
    full_env = {**({"PATH": on_path(bin_dir)} if bin_dir is not None else {}), **(env or {})}
    res = wtmesh("run", plan_path, "--json", *args, cwd=repo, env=full_env, timeout=timeout)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode in (0, 1), (res.returncode, res.stdout, res.stderr)
    return Ran(repo, res.json(), res.stderr)
