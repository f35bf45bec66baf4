"""Shared parts of the fake agent CLIs (tests only).

Each fake mimics one real CLI's flags and output and asserts the flags that matter for
wtmesh (edits allowed, commits forbidden, non-interactive). A missing or forbidden flag
ends it at once with exit 97 and a ``FAKE-<CLI>: `` line on stderr, so a regression in a
preset fails a test loudly instead of passing by accident.

Controlled by the environment:
  FAKE_SCENARIO   what to do (success, error, cap, denial, question, auth, commit, ...)
  FAKE_EDIT       ``path=text;path=text``: files to write in the worktree
  FAKE_RECORD     a JSONL file: one record per call (argv, cwd, stdin, selected env)
  FAKE_VERDICT    the fixer's verdict or the critic's critique, JSON (default: accept)
  FAKE_VERDICT_FORM  how a CLI without a schema feature gives it in its final message:
                  ``line`` (a WTMESH_VERDICT line, the default), ``after`` (the marker,
                  then the JSON indented on the lines after), ``block`` (a fenced json
                  block), ``none`` (no verdict at all)

The role is the lane's (``WTMESH_LANE``): a critic's fake insists on read-only flags.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

FLAG_ERROR = 97
DEFAULT_VERDICT = {"decision": "accept", "failure_code": None, "notes": "looks right"}


class Fake:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.argv = sys.argv[1:]
        if self.argv == ["--version"]:
            if self.scenario == "badversion":
                sys.stderr.write(f"{name}: broken install\n")
                sys.exit(1)
            # FAKE_VERSION: the number to claim, in this CLI's own way of printing it.
            claimed = os.environ.get("FAKE_VERSION")
            print(re.sub(r"\d+\.\d+\.\d+", claimed, version) if claimed else version)
            sys.exit(0)

    @property
    def scenario(self) -> str:
        return os.environ.get("FAKE_SCENARIO", "success")

    @property
    def critic(self) -> bool:
        return os.environ.get("WTMESH_LANE") == "critic"

    def die(self, why: str) -> NoReturn:
        sys.stderr.write(f"FAKE-{self.name.upper()}: {why}\n")
        sys.exit(FLAG_ERROR)

    def has(self, flag: str) -> bool:
        return flag in self.argv

    def value(self, flag: str) -> str | None:
        """The value after ``flag`` (or in ``flag=value``)."""
        for i, arg in enumerate(self.argv):
            if arg == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return None

    def require(self, flag: str, value: str | None = None) -> None:
        if not self.has(flag) and self.value(flag) is None:
            self.die(f"missing required flag {flag}")
        if value is not None and self.value(flag) != value:
            self.die(f"{flag} must be {value!r}, got {self.value(flag)!r}")

    def forbid(self, *flags: str) -> None:
        for flag in flags:
            if self.has(flag) or self.value(flag) is not None:
                self.die(f"forbidden flag {flag}")

    def read_stdin(self) -> str:
        if sys.stdin is None or sys.stdin.closed:
            return ""
        return sys.stdin.read()

    def record(self, prompt: str, **extra: object) -> None:
        path = os.environ.get("FAKE_RECORD")
        if not path:
            return
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("WTMESH_", "GEMINI_", "OPENCODE_", "CLAUDE_", "DISABLE_"))}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"cli": self.name, "argv": self.argv, "cwd": os.getcwd(),
                                 "prompt": prompt, "env": env, **extra}) + "\n")

    def edit(self, root: Path) -> list[str]:
        written = []
        for item in filter(None, os.environ.get("FAKE_EDIT", "").split(";")):
            path, _, text = item.partition("=")
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text.replace("\\n", "\n"))
            written.append(path)
        return written

    def commit(self, root: Path) -> None:
        """What a careless agent does: commit its work."""
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "agent commit"], cwd=root, check=True)

    def verdict(self) -> dict[str, object]:
        raw = os.environ.get("FAKE_VERDICT")
        return json.loads(raw) if raw else dict(DEFAULT_VERDICT)

    def verdict_text(self) -> str:
        """The verdict as the final message of a CLI without a schema feature gives it."""
        form = os.environ.get("FAKE_VERDICT_FORM", "line")
        if form == "none":
            return ""
        if form == "after":
            return "WTMESH_VERDICT\n" + json.dumps(self.verdict(), indent=2)
        if form == "block":
            return "My critique:\n\n```json\n" + json.dumps(self.verdict(), indent=2) + "\n```"
        return "WTMESH_VERDICT " + json.dumps(self.verdict())
