"""A critic for tests: reads $WTMESH_CANDIDATES_JSON and writes a verdict, as told.

  smallest            agree with the candidate of fewest changed lines, rank by size
  largest             the same, the other way round
  agree:NAME,...      agree with these, disagree with the rest; rank them first
  reject              decision reject (votes as the others say)
  scores:NAME=N,...   give every rubric dimension of NAME the mark N
  verdict:JSON        write this JSON as the result (raw)
  record:FILE         append the candidates file and the WTMESH_* variables to FILE
  follow              round 2 on: agree with what the other critics agreed on most
  notes:TEXT          the verdict's notes
  flip:TEXT           what would change this critic's vote
  write:PATH=TEXT     write a file in the worktree (a critic that writes)
  sleep:S             sleep S seconds
  tamper:TEXT         try to overwrite every candidate's own diff in the run directory

Standalone: a sandboxed lane sees the script it names, not the directory beside it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

RUBRIC = ("contract_clarity", "invariant_strength", "minimal_incision", "proof_credibility",
          "legibility_trace")


def main(args: list[str]) -> None:
    document = json.loads(Path(os.environ["WTMESH_CANDIDATES_JSON"]).read_text())
    names = [c["name"] for c in document["candidates"]]
    by_size = sorted(document["candidates"],
                     key=lambda c: (c["changed_lines"], names.index(c["name"])))
    agree: list[str] = []
    ranking = list(names)
    verdict: dict[str, Any] = {"id": os.environ["WTMESH_UNIT_ID"], "decision": "accept"}
    scores: dict[str, dict[str, int]] = {}
    raw: str | None = None
    for arg in args:
        verb, _, rest = arg.partition(":")
        if arg == "smallest":
            agree, ranking = [by_size[0]["name"]], [c["name"] for c in by_size]
        elif arg == "largest":
            agree, ranking = [by_size[-1]["name"]], [c["name"] for c in reversed(by_size)]
        elif verb == "agree":
            agree = [n for n in rest.split(",") if n in names]  # the others are not here yet
            ranking = agree + [n for n in names if n not in agree]
        elif arg == "reject":
            verdict["decision"] = "reject"
        elif verb == "scores":
            for item in rest.split(","):
                name, _, mark = item.partition("=")
                scores[name] = {key: int(mark) for key in RUBRIC}
        elif verb == "verdict":
            raw = rest
        elif verb == "record":
            with open(rest, "a", encoding="utf-8") as out:
                env = {k: v for k, v in os.environ.items() if k.startswith("WTMESH_")}
                out.write(json.dumps({"candidates": document, "env": env}) + "\n")
        elif verb in ("notes", "flip"):
            verdict[verb] = rest
        elif arg == "follow":
            counts = Counter(n for p in document["previous"] for n, v in p["votes"].items()
                             if v == "agree")
            if counts:
                top = max(names, key=lambda n: (counts[n], -names.index(n)))
                agree, ranking = [top], [top] + [n for n in names if n != top]
        elif verb == "write":
            path, _, text = rest.partition("=")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text.replace("\\n", "\n"), encoding="utf-8")
        elif verb == "sleep":
            time.sleep(float(rest))
        elif verb == "tamper":  # <unit dir>/critics/<me>/result -> <unit dir>/candidates
            unit_dir = Path(os.environ["WTMESH_RESULT_JSON"]).parents[2]
            for diff in unit_dir.glob("candidates/*/unit.diff"):
                try:
                    diff.write_text(rest, encoding="utf-8")
                except OSError:
                    pass
        else:
            raise SystemExit(f"critic.py: unknown action {arg!r}")
    result = Path(os.environ["WTMESH_RESULT_JSON"])
    if raw is not None:
        result.write_text(raw, encoding="utf-8")
        return
    verdict["votes"] = {n: "agree" if n in agree else "disagree" for n in names}
    verdict["ranking"] = ranking
    if scores:
        verdict["scores"] = {n: s for n, s in scores.items() if n in names}
    result.write_text(json.dumps(verdict), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
