"""A lane for tests: performs the actions given as arguments, in order, in the worktree.

  write:PATH=TEXT     write a file (``\\n`` in TEXT is a newline)
  append:PATH=TEXT    append to a file
  delete:PATH         delete a file
  rename:OLD=NEW      rename a file
  binary:PATH         write a small binary file (bytes 0..255)
  symlink:PATH=TARGET create a symlink
  chmod:PATH=MODE     change a file's mode (octal)
  result:JSON         write JSON (raw text) to $WTMESH_RESULT_JSON
  resultfile:PATH     copy PATH to $WTMESH_RESULT_JSON
  require:PATH        exit 3 unless PATH exists (a unit that must see another's change)
  await:PATH          wait until PATH exists (another lane's signal; the lane's timeout
                      bounds the wait)
  exit:N              exit with N now
  sleep:S             sleep S seconds
  record:FILE         record argv, cwd, stdin and WTMESH_* variables as JSON lines in FILE
  copytree:DIR        copy DIR's files over the worktree (removing files DIR lacks)
  attempt=N:ACTION    perform ACTION only on attempt N
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path


def act(action: str) -> None:
    if action.startswith("attempt="):
        cond, _, rest = action.partition(":")
        if os.environ.get("WTMESH_ATTEMPT") == cond.split("=", 1)[1]:
            act(rest)
        return
    verb, _, arg = action.partition(":")
    if verb in ("write", "append"):
        path, _, text = arg.partition("=")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a" if verb == "append" else "w", encoding="utf-8") as fh:
            fh.write(text.replace("\\n", "\n"))
    elif verb == "delete":
        Path(arg).unlink()
    elif verb == "rename":
        old, _, new = arg.partition("=")
        Path(new).parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
    elif verb == "binary":
        Path(arg).parent.mkdir(parents=True, exist_ok=True)
        Path(arg).write_bytes(bytes(range(256)))
    elif verb == "symlink":
        path, _, target_text = arg.partition("=")
        os.symlink(target_text, path)
    elif verb == "chmod":
        path, _, mode = arg.partition("=")
        os.chmod(path, int(mode, 8))
    elif verb == "result":
        Path(os.environ["WTMESH_RESULT_JSON"]).write_text(arg, encoding="utf-8")
    elif verb == "resultfile":
        shutil.copyfile(arg, os.environ["WTMESH_RESULT_JSON"])
    elif verb == "require":
        if not Path(arg).exists():
            sys.exit(3)
    elif verb == "await":
        while not Path(arg).exists():
            time.sleep(0.02)
    elif verb == "exit":
        sys.exit(int(arg))
    elif verb == "sleep":
        time.sleep(float(arg))
    elif verb == "record":
        try:
            stdin_data = sys.stdin.read() if sys.stdin is not None else None
        except (OSError, ValueError):
            stdin_data = None
        record = {
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "stdin": stdin_data,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("WTMESH_", "GIT_"))},
        }
        with open(arg, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    elif verb == "copytree":
        copy_tree(Path(arg), Path.cwd())
    else:
        raise SystemExit(f"act.py: unknown action {action!r}")


def copy_tree(source: Path, dest: Path) -> None:
    """Make ``dest``'s tracked content equal ``source``: copy every file, delete the rest."""
    wanted = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    for path in list(dest.rglob("*")):
        rel = path.relative_to(dest)
        if rel.parts[0] == ".git" or not path.is_file():
            continue
        if rel not in wanted:
            path.unlink()
    for rel in wanted:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest / rel)


if __name__ == "__main__":
    for item in sys.argv[1:]:
        act(item)
