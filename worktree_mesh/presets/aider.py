"""Aider: ``aider --message-file`` (AGENT-CLIS.md, "Aider").

- Commits: both ``--no-auto-commits`` and ``--no-dirty-commits`` (the second alone stops
  aider committing the coder's uncommitted diff before a fixer edits it), and
  ``--no-gitignore`` so it does not add ``.aider*`` to ``.gitignore``. The chat and input
  histories go to the lane's preset directory; the tags cache it still writes at the
  worktree root (``.aider.tags.cache.v*``) and any other untracked ``.aider*`` entry is
  removed by the runner before wtmesh takes the diff.
- Non-interactive: ``--yes-always`` answers every question aider itself asks, so there is
  no permission layer to be denied; an agent that ends by asking a question is still read
  as ``requires_clarification``. Stdin is closed.
- Edits: the unit's scope, as files: literal paths as given, globs expanded over tracked
  files (at most 30; beyond that, or for the whole repository, aider picks files itself
  from its repository map).
- Bounds: aider has no turn or cost cap (``--timeout`` bounds each API call only); the
  lane's timeout bounds it. Its "hit a token limit" message reads as a cap.
- Output: text only (``--no-pretty --no-stream``). Exit codes on API failures are
  [unverified]: the text decides, any non-zero exit counts as an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .. import proc
from ..scope import Scope
from .base import Completed, Invocation, Lane, Transcript, first_line, unavailable_reason
from .prompt import find_marked_verdict

MAX_FILES = 30
QUIET = ("--no-pretty", "--no-stream", "--no-fancy-input", "--analytics-disable",
         "--no-check-update", "--no-show-release-notes", "--no-detect-urls",
         "--no-suggest-shell-commands", "--no-restore-chat-history")
NO_GIT_WRITES = ("--no-auto-commits", "--no-dirty-commits", "--no-gitignore")
_GLOB = re.compile(r"[*?\[]")
_STATUS = re.compile(
    r"^(Tokens:|Cost:|Applied edit to|Commit |Aider v|Model:|Main model:|Weak model:|"
    r"Editor model:|Git repo:|Repo-map:|Added .* to the chat|Use /help|Cur working dir:|"
    r"Git working dir:|https://aider\.chat|Warning:|Did not apply edit)")
_ERROR_LINE = re.compile(r"\b[\w.]*(Error|Exception)\b\s*:")
_TRANSIENT = re.compile(r"RateLimit|APIConnection|ServiceUnavailable|InternalServer|APIError"
                        r"|Timeout|Overloaded", re.IGNORECASE)
_TOKEN_LIMIT = re.compile(r"hit a token limit|exceeds? the context window", re.IGNORECASE)


def scope_files(lane: Lane) -> list[str]:
    raw = lane.unit.get("unit_scope") or ["**"]
    patterns = [raw] if isinstance(raw, str) else [str(p) for p in raw]
    literal = [p for p in patterns if not _GLOB.search(p) and not p.endswith("/")]
    wide = [p for p in patterns if p not in literal]
    files = list(literal)
    if wide and "**" not in wide:
        listing = proc.run(["git", "ls-files", "-z"], cwd=lane.worktree, check=False)
        scope = Scope.parse(wide)
        tracked = [p for p in listing.stdout.decode("utf-8", "surrogateescape").split("\0")
                   if p and scope.matches(p) and p not in files]
        if len(files) + len(tracked) <= MAX_FILES:
            files += tracked
    # A file name that looks like an option would be read as one.
    return [f"./{f}" if f.startswith("-") else f for f in files]


def final_message(text: str) -> str:
    """The reply without aider's own status lines (banner, applied edits, tokens, cost)."""
    lines = [line for line in text.strip().splitlines() if not _STATUS.match(line.strip())]
    return "\n".join(lines[-40:]).strip()


class Aider:
    name = "aider"
    binary = "aider"
    litter = (".aider*",)
    native_schema = False

    def invocation(self, lane: Lane) -> Invocation:
        argv = ["aider", "--message-file", str(lane.prompt_path), "--yes-always",
                *NO_GIT_WRITES, *QUIET,
                "--chat-history-file", str(lane.work_dir / "chat.history.md"),
                "--input-history-file", str(lane.work_dir / "input.history")]
        if lane.model:
            argv += ["--model", lane.model]
        argv += [*lane.args, *scope_files(lane)]
        return Invocation(tuple(argv))

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return None  # the provider is chosen by configuration wtmesh does not read yet

    def read(self, lane: Lane, done: Completed) -> Transcript:
        output = done.stdout
        t = Transcript(message=final_message(output))
        both = f"{output}\n{done.stderr_tail}"
        errors = [line.strip() for line in both.splitlines() if _ERROR_LINE.search(line)]
        limit = _TOKEN_LIMIT.search(both)
        if limit:
            t.cap = f"hit the model's token limit ({first_line(both[limit.start():])})"
        t.unavailable = unavailable_reason("\n".join(errors))
        transient = [line for line in errors if _TRANSIENT.search(line)]
        if transient:
            t.error = transient[-1][:300]
        elif done.returncode != 0:
            t.error = first_line("\n".join(errors[-1:]) or done.stderr_tail,
                                 f"aider exited {done.returncode}")
        if lane.role == "fixer":
            t.verdict = find_marked_verdict(output)
        return t


PRESET = Aider()
