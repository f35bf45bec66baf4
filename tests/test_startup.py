"""What every command pays before it starts: rich is imported only to draw on a terminal
or a table, jsonschema only to check a plan."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_loads_without_rich_or_jsonschema() -> None:
    probe = ("import sys, worktree_mesh.cli; "
             "print(' '.join(m for m in ('rich', 'jsonschema') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == ""
