"""Lane presets for agent CLIs (SPEC section 9).

A preset lane is an ordinary lane: wtmesh runs ``python -P -m worktree_mesh.presets NAME
--role coder|fixer|critic|synthesizer [options]`` in the worktree, in its own process
group, under the lane's timeout, stdin closed, output to the lane logs. That runner
(``runner.py``) renders the unit into a prompt, runs the agent's CLI headless (one small
module per CLI), reads its machine-readable output and writes ``WTMESH_RESULT_JSON``
itself.

This module is only the catalogue — which presets exist and which options each one can
honour — so that ``plan.py`` can validate plans without importing the runners.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

PRESETS = ("codex", "claude", "aider", "gemini", "opencode")
# A critic and a synthesizer are consensus lanes (SPEC 12); their lane names are the roles.
ROLES = ("coder", "fixer", "critic", "synthesizer")

# What each CLI can be bounded by besides the lane's wall-clock timeout (AGENT-CLIS.md):
# claude has --max-turns and --max-budget-usd; gemini (model.maxSessionTurns) and opencode
# (agent steps) have a turn cap set through configuration; codex and aider have neither.
OPTIONS: Mapping[str, frozenset[str]] = {
    "codex": frozenset({"model", "args"}),
    "claude": frozenset({"model", "max_turns", "max_budget_usd", "args"}),
    "aider": frozenset({"model", "args"}),
    "gemini": frozenset({"model", "max_turns", "args"}),
    "opencode": frozenset({"model", "max_turns", "args"}),
}
PRESET_OPTIONS = ("model", "max_turns", "max_budget_usd", "args")
_MISSING_CAP = {"max_turns": "has no turn cap", "max_budget_usd": "has no budget cap"}


def option_problem(preset: str, option: str) -> str | None:
    """Why ``option`` cannot be given to ``preset`` (None when it can)."""
    if preset not in OPTIONS or option not in PRESET_OPTIONS or option in OPTIONS[preset]:
        return None
    why = _MISSING_CAP.get(option, "does not take it")
    return (f"preset {preset!r} {why}; it is bounded by the lane's timeout_s only "
            f"(remove {option})")


def command(preset: str, role: str, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The lane argv that runs ``preset`` in ``role`` with the plan's options.

    ``-P`` keeps the worktree (the lane's cwd) off ``sys.path``: a unit that edits a copy of
    wtmesh itself must not change the runner that judges it."""
    argv = [sys.executable, "-P", "-m", "worktree_mesh.presets", preset, "--role", role]
    if options.get("model") is not None:
        argv.append(f"--model={options['model']}")
    if options.get("max_turns") is not None:
        argv.append(f"--max-turns={int(options['max_turns'])}")
    if options.get("max_budget_usd") is not None:
        argv.append(f"--max-budget-usd={float(options['max_budget_usd']):g}")
    # ``--arg=VALUE`` keeps a value that starts with "-" from being read as an option.
    argv.extend(f"--arg={arg}" for arg in options.get("args") or ())
    return tuple(argv)
