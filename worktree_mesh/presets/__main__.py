"""``python -m worktree_mesh.presets NAME --role coder|fixer|critic|synthesizer [...]``:
a preset lane."""

from __future__ import annotations

from .runner import main

raise SystemExit(main())
