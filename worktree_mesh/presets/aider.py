"""Aider: ``aider --message-file`` (AGENT-CLIS.md, "Aider").

- Commits: both ``--no-auto-commits`` and ``--no-dirty-commits`` (the second alone stops
  aider committing the coder's uncommitted diff before a fixer edits it), and
  ``--no-gitignore`` so it does not add ``.aider*`` to ``.gitignore``. The chat and input
  histories go to the lane's preset directory; the tags cache it still writes at the
  worktree root (``.aider.tags.cache.v*``) and any other untracked ``.aider*`` entry is
  removed by the runner before wtmesh takes the diff.
- Non-interactive: ``--yes-always`` answers every question aider itself asks, so there is
  no permission layer to be denied; an agent that ends by asking a question is still read
  as ``requires_clarification``. Stdin is closed. One question must not be answered yes:
  with no model it can use (none named, no key in the environment), aider offers a
  browser login to OpenRouter and, told yes, waits five minutes for a browser that a lane
  never has. The preset stops aider at that offer (``stop_reason``): aider itself decides
  it has no model — from the lane, its config files, ``.env`` files, keys — so the preset
  need not guess the same and can never refuse a setup aider would have run.
- Edits: the unit's scope, as files: literal paths as given, globs expanded over tracked
  files (at most 30; beyond that, or for the whole repository, aider picks files itself
  from its repository map). A critic gets no files and ``--chat-mode ask``, after the lane's
  args (an ``--edit-format`` there would let it edit): aider answers and edits nothing.
- Bounds: aider has no turn or cost cap (``--timeout`` bounds each API call only); the
  lane's timeout bounds it. Its "hit a token limit" message reads as a cap.
- Offline: analytics off for this run only (``--no-analytics``; ``--analytics-disable``
  would rewrite the user's aider settings, and say so on stdout), no version check, and
  no price list from the internet: litellm uses the one installed with it
  (``LITELLM_LOCAL_MODEL_COST_MAP``), and aider, which has no switch for its own copy,
  finds a fresh cache (``price_list_cache``). Costs are then those of the installed
  version, the same on every run.
- Output: text only (``--no-pretty --no-stream``), starting with aider's banners. The
  agent's answer, its verdict and the ``Tokens:``/``Cost:`` lines are read from the chat
  history file aider writes, where the model's reply is plain text and aider's own lines
  are quoted (``> ``), and nothing is wrapped (stdout is, at 80 columns unless told
  otherwise: ``COLUMNS``). Exit codes on API failures are [unverified]: the text decides,
  any non-zero exit counts as an error.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import proc
from ..scope import Scope
from .base import (
    Completed,
    Invocation,
    Lane,
    Transcript,
    Usage,
    first_line,
    unavailable_reason,
)
from .critique import find_critique
from .prompt import find_marked_verdict

MAX_FILES = 30
QUIET = ("--no-pretty", "--no-stream", "--no-fancy-input", "--no-analytics",
         "--no-check-update", "--no-show-release-notes", "--no-detect-urls",
         "--no-suggest-shell-commands", "--no-restore-chat-history")
NO_GIT_WRITES = ("--no-auto-commits", "--no-dirty-commits", "--no-gitignore")
ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # Long lines stay whole in the lane log (rich wraps at 80 columns off a terminal).
    "COLUMNS": "500",
}
_GLOB = re.compile(r"[*?\[]")
_ERROR_LINE = re.compile(r"\b[\w.]*(Error|Exception)\b\s*:")
_TRANSIENT = re.compile(r"RateLimit|APIConnection|ServiceUnavailable|InternalServer|APIError"
                        r"|Timeout|Overloaded", re.IGNORECASE)
_TOKEN_LIMIT = re.compile(r"hit a token limit|exceeds? the context window", re.IGNORECASE)
# Printed by aider/onboarding.py just before it asks to start the OpenRouter login.
_LOGIN_OFFER = re.compile(r"OpenRouter provides free and paid access|connect Aider with "
                          r"OpenRouter")
LOGIN_STOPPED = ("no model it can use (no `model` for the lane and no API key aider "
                 "recognises): it would wait for a browser login to OpenRouter. Set the "
                 "lane's `model` and that provider's key (e.g. OPENAI_API_KEY)")

# -- the price list ---------------------------------------------------------------------

# Where aider keeps its copy of litellm's price list, and how long it trusts it
# (aider/models.py, ModelInfoManager): an empty or older copy is fetched again.
PRICE_CACHE = Path(".aider/caches/model_prices_and_context_window.json")
PRICE_CACHE_TTL_S = 24 * 3600
# A price list naming no model (litellm's own list starts with this entry): aider finds
# nothing in it and asks litellm, which answers from the list installed with it.
NO_PRICES = {"sample_spec": {"note": "written by wtmesh: use litellm's installed prices"}}


def price_list_cache(home: Path) -> None:
    """Make sure aider finds a fresh copy of the price list under ``home`` and does not
    fetch one (its only request to the internet, five seconds each time it fails). A
    fresh list aider fetched itself is kept."""
    path = home / PRICE_CACHE
    try:
        fresh = time.time() - path.stat().st_mtime < PRICE_CACHE_TTL_S
        if fresh and json.loads(path.read_text("utf-8")):
            return
    except (OSError, ValueError):
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # lanes run side by side
        tmp.write_text(json.dumps(NO_PRICES) + "\n", "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # not writable here: aider fetches it, as it always did


# -- which model API aider will call ----------------------------------------------------

# litellm's providers by model-name prefix: the variables it reads for the base URL, in
# its order, and its default (litellm/main.py).
PROVIDER_BASES: Mapping[str, tuple[tuple[str, ...], str]] = {
    "openai": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), "https://api.openai.com/v1"),
    "anthropic": (("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"), "https://api.anthropic.com"),
    "gemini": (("GEMINI_API_BASE",), "https://generativelanguage.googleapis.com"),
    "deepseek": (("DEEPSEEK_API_BASE",), "https://api.deepseek.com"),
    "openrouter": (("OPENROUTER_API_BASE",), "https://openrouter.ai/api/v1"),
}
# Bare model names whose provider litellm knows without a prefix.
_BARE = ((re.compile(r"(gpt-|chatgpt-|o[134](-|$))"), "openai"),
         (re.compile(r"claude-"), "anthropic"))
# aider's aliases (aider/models.py, MODEL_ALIASES) for models of the providers above.
ALIASES = {"sonnet": "anthropic", "haiku": "anthropic", "opus": "anthropic",
           "4": "openai", "4o": "openai", "4-turbo": "openai", "35turbo": "openai",
           "35-turbo": "openai", "3": "openai", "deepseek": "deepseek", "r1": "deepseek",
           "flash": "gemini", "flash-lite": "gemini", "gemini": "gemini",
           "gemini-exp": "gemini", "gemini-2.5-pro": "gemini",
           "gemini-3-pro-preview": "gemini", "quasar": "openrouter", "optimus": "openrouter"}
# aider's own files (in HOME and at the git root), and what in them could name another
# model or base URL than the lane and the environment do: then what aider will call
# cannot be told.
CONFIG_FILES = {
    ".aider.conf.yml": re.compile(
        r"^\s*(model|openai-api-base|env-file|set-env|api-key|config)\s*:", re.MULTILINE),
    ".env": re.compile(r"^\s*(export\s+)?(AIDER_\w+|\w+_API_BASE|\w+_BASE_URL)\s*=",
                       re.MULTILINE),
}


def option_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--flag V`` or ``--flag=V``), as argparse reads."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def provider_of(model: str) -> str | None:
    prefix, slash, _ = model.partition("/")
    if slash:
        return prefix if prefix in PROVIDER_BASES else None
    if model in ALIASES:
        return ALIASES[model]
    return next((name for pattern, name in _BARE if pattern.match(model)), None)


def config_may_differ(places: Sequence[Path]) -> bool:
    """One of aider's files in ``places`` could set the model or its base URL (an
    unreadable one could too)."""
    for place in places:
        for name, says in CONFIG_FILES.items():
            path = place / name
            if not path.exists():
                continue
            try:
                if says.search(path.read_text("utf-8", "replace")):
                    return True
            except OSError:
                return True
    return False


def model_api_url(lane: Lane, env: Mapping[str, str]) -> str | None:
    """The base URL aider's model calls will go to, when the lane and the environment
    say it; None when aider picks the model itself, reads it from files, or uses a
    provider not listed here."""
    args = list(lane.args)
    if option_value(args, "--config") or option_value(args, "--env-file"):
        return None
    home = env.get("HOME")
    if config_may_differ([lane.worktree, *([Path(home)] if home else [])]):
        return None
    model = option_value(args, "--model") or lane.model or env.get("AIDER_MODEL")
    provider = provider_of(model) if model else None
    if provider is None:
        return None
    variables, default = PROVIDER_BASES[provider]
    if provider == "openai":
        # --openai-api-base sets OPENAI_API_BASE, which OPENAI_BASE_URL still outranks.
        given = option_value(args, "--openai-api-base") or env.get("AIDER_OPENAI_API_BASE")
        env = {**env, **({"OPENAI_API_BASE": given} if given else {})}
    return next((env[v] for v in variables if env.get(v)), default)


# -- reading what aider wrote -----------------------------------------------------------

_SESSION_START = "# aider chat started at"
_USER_LINE = "####"
_TOKENS = re.compile(r"Tokens: ([\d.]+k?) sent(?:, [\d.]+k? cache write)?"
                     r"(?:, [\d.]+k? cache hit)?, ([\d.]+k?) received\.")
_COST = re.compile(r"Cost: \$([\d.]+) message, \$([\d.]+) session\.")
_FENCE = re.compile(r"^(`{3,}|~{3,})")


def last_session(history: str) -> str:
    """The part of a chat history file this run wrote."""
    start = history.rfind("\n" + _SESSION_START)
    return history[start + 1:] if start >= 0 else history


def model_answer(session: str) -> str:
    """The model's last reply: the lines after the last user message (``####``) that
    are not aider's own (quoted with ``>``)."""
    lines = session.splitlines()
    asked = [i for i, line in enumerate(lines) if line.startswith(_USER_LINE)]
    if not asked:
        return ""
    reply = [line for line in lines[asked[-1] + 1:]
             if not line.startswith(">") and not _TOKENS.match(line) and not _COST.match(line)]
    return "\n".join(reply).strip()


def without_code(text: str) -> str:
    """The answer with each fenced block (an edit: with ``whole``, the entire file) said
    in a few words, and blank runs closed up."""
    out: list[str] = []
    fence: str | None = None
    count = 0
    for line in text.splitlines():
        opening = _FENCE.match(line.strip())
        if fence is None and opening:
            fence, count = opening.group(1)[0] * 3, 0
        elif fence is not None and line.strip().startswith(fence) \
                and not line.strip().strip(fence[0]):
            out.append(f"[{count} line{'' if count == 1 else 's'} of code]")
            fence = None
        elif fence is not None:
            count += 1
        elif line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    if fence is not None:
        out.append(f"[{count} lines of code]")
    return "\n".join(out).strip()


def _count(text: str) -> int:
    return round(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))


def usage_of(text: str) -> Usage | None:
    """What aider said it spent: its ``Tokens:`` lines summed (one per model call; it
    rounds counts over 1000 to a tenth of a k) and the session cost of its last
    ``Cost:`` line (there is none for a model without a price)."""
    tokens = _TOKENS.findall(text)
    costs = _COST.findall(text)
    if not tokens and not costs:
        return None
    return Usage(tokens_in=sum(_count(sent) for sent, _ in tokens) if tokens else None,
                 tokens_out=sum(_count(got) for _, got in tokens) if tokens else None,
                 cost_usd=float(costs[-1][1]) if costs else None)


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


def history_path(lane: Lane) -> Path:
    return lane.work_dir / "chat.history.md"


class Aider:
    name = "aider"
    binary = "aider"
    litter = (".aider*",)
    native_schema = False

    def invocation(self, lane: Lane) -> Invocation:
        home = os.environ.get("HOME")
        if home:  # before aider starts, so that it finds its price list fresh
            price_list_cache(Path(home))
        argv = ["aider", "--message-file", str(lane.prompt_path), "--yes-always",
                *NO_GIT_WRITES, *QUIET,
                "--chat-history-file", str(history_path(lane)),
                "--input-history-file", str(lane.work_dir / "input.history")]
        if lane.model:
            argv += ["--model", lane.model]
        argv += lane.args
        # After the lane's args, so that no --edit-format of theirs lets a critic edit.
        argv += scope_files(lane) if lane.edits else ["--chat-mode", "ask"]
        return Invocation(tuple(argv), env=ENV)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return model_api_url(lane, env)

    def stop_reason(self, line: str) -> str | None:
        return LOGIN_STOPPED if _LOGIN_OFFER.search(line) else None

    def read(self, lane: Lane, done: Completed) -> Transcript:
        output = done.stdout
        try:
            session = last_session(history_path(lane).read_text("utf-8", "replace"))
        except OSError:
            session = ""  # aider ended before it wrote one
        answer = model_answer(session)
        t = Transcript(message=without_code(answer), usage=usage_of(session or output))
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
            t.verdict = find_marked_verdict(answer)
        elif lane.role == "critic":
            t.verdict = find_critique(answer)  # the message has its code blocks left out
        return t


PRESET = Aider()
