"""From a CLI's transcript to the lane result (SPEC 3.4, with SPEC 9's mapping).

Precedence, first match wins:

| signal                                              | result                                  |
|-----------------------------------------------------|-----------------------------------------|
| CLI missing, version probe fails, auth/config error | reject, ``tooling_unavailable``         |
| a tool or command was denied (not a critic)         | reject, ``requires_clarification``      |
| turn or budget cap hit                              | reject, ``timeout_retry_exhausted``     |
| the CLI could not produce the verdict's shape       | reject, ``invalid_output_schema``       |
| any other error the CLI reported                    | reject, ``lane_failed`` (retried)       |
| coder: no change, final message is a question       | reject, ``requires_clarification``      |
| coder: no change                                    | ``no_diff``                             |
| coder: a change                                     | ``accept``                              |
| fixer: verdict accept / reject                      | as given (reject without a code:        |
|                                                     | ``safety_regression_risk``)             |
| fixer: no verdict, final message is a question      | reject, ``requires_clarification``      |
| fixer: no verdict or a malformed one                | reject, ``invalid_output_schema``       |
| critic: a critique of the right shape               | the critique (its decision, votes, ...) |
| critic: no critique, and a tool was denied          | reject, ``requires_clarification``      |
| critic: no critique, or one of the wrong shape      | reject, ``invalid_output_schema``       |

A synthesizer's result is a coder's. A critic denied a tool (it may only read) that still
gave its critique did its work: the denial was the read-only rule holding.

A denial outranks a cap because an agent refused a tool often spends its turns working
around it: the fix is a permission, not a bigger cap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .base import Lane, Transcript, Usage
from .critique import find_critique, read_critique
from .prompt import DEFAULT_REJECT_CODE, VERDICT_CODES, is_question, parse_verdict_text

MAX_NOTES = 2000


@dataclass(frozen=True)
class Outcome:
    decision: str  # accept | reject | no_diff
    failure_code: str | None
    notes: str
    usage: Usage | None = None
    critique: dict[str, Any] | None = None  # a critic's, in the result's shape (SPEC 12)

    def record(self, unit_id: str) -> dict[str, Any]:
        record: dict[str, Any]
        if self.critique is not None:
            record = {"id": unit_id, **self.critique, "notes": self.notes[:MAX_NOTES]}
        else:
            # The preset does not run the proof: the integrator does, on the integrated tree.
            record = {"id": unit_id, "decision": self.decision, "proof_status": "skipped",
                      "failure_code": self.failure_code, "notes": self.notes[:MAX_NOTES]}
        if self.usage is not None:
            record["usage"] = self.usage.record()
        return record


def reject(code: str, notes: str) -> Outcome:
    return Outcome("reject", code, notes)


def decide(lane: Lane, transcript: Transcript, *, changed: bool) -> Outcome:
    """The lane's result, carrying what the CLI said it spent, whatever the decision."""
    outcome = _decide(lane, transcript, changed=changed)
    return dataclasses.replace(outcome, usage=transcript.usage)


def _decide(lane: Lane, transcript: Transcript, *, changed: bool) -> Outcome:
    t = transcript
    if t.unavailable:
        return reject("tooling_unavailable", f"{lane.preset}: {t.unavailable}")
    if t.denials and lane.edits:  # a critic's denials matter only without a critique
        shown = ", ".join(dict.fromkeys(t.denials))
        return reject("requires_clarification",
                      f"{lane.preset} was denied: {shown} (allow it with the lane's args, or "
                      "change the task)")
    if t.cap:
        return reject("timeout_retry_exhausted", f"{lane.preset}: {t.cap}")
    if t.schema_failed:
        return reject("invalid_output_schema", f"{lane.preset}: {t.schema_failed}")
    if t.error:
        return reject("lane_failed", f"{lane.preset}: {t.error}")
    if lane.role == "fixer":
        return _verdict(lane, t)
    if lane.role == "critic":
        return _critique(lane, t)
    message = t.message.strip()
    if not changed:
        if is_question(message):
            return reject("requires_clarification",
                          f"{lane.preset} asked instead of changing anything: {message}")
        return Outcome("no_diff", None, message or f"{lane.preset} changed nothing")
    return Outcome("accept", None, message)


def _verdict(lane: Lane, t: Transcript) -> Outcome:
    verdict = t.verdict if t.verdict is not None else parse_verdict_text(t.message)
    if verdict is None:
        if is_question(t.message):
            return reject("requires_clarification",
                          f"{lane.preset} asked instead of giving a verdict: {t.message.strip()}")
        return reject("invalid_output_schema", f"{lane.preset} gave no verdict")
    if not isinstance(verdict, dict) or verdict.get("decision") not in ("accept", "reject"):
        return reject("invalid_output_schema",
                      f"{lane.preset} gave a malformed verdict: {str(verdict)[:300]}")
    notes = verdict.get("notes")
    notes = notes if isinstance(notes, str) else ""
    code = verdict.get("failure_code")
    if verdict["decision"] == "accept":
        if code:
            notes = f"{notes} (failure_code {code!r} ignored: the verdict accepts)".strip()
        return Outcome("accept", None, notes)
    if code is None:
        code = DEFAULT_REJECT_CODE
    elif code not in VERDICT_CODES:
        return reject("invalid_output_schema",
                      f"{lane.preset} rejected with unknown failure_code {code!r}: {notes}")
    return reject(str(code), notes or f"the {lane.preset} fixer rejected the change")


def _critique(lane: Lane, t: Transcript) -> Outcome:
    """A critique that cannot be read is a reject the core counts as no critique."""
    found = t.verdict if t.verdict is not None else find_critique(t.message)
    if found is None and t.denials:
        shown = ", ".join(dict.fromkeys(t.denials))
        return reject("requires_clarification",
                      f"{lane.preset} was denied: {shown}, and gave no critique (a critic "
                      "reads only)")
    if found is None:
        asked = (f" (it asked instead: {t.message.strip()[:300]})"
                 if is_question(t.message) else "")
        return reject("invalid_output_schema",
                      f"{lane.preset} gave no critique: no JSON object in its final "
                      f"message{asked}")
    critique = read_critique(found, lane)
    if isinstance(critique, str):
        return reject("invalid_output_schema",
                      f"{lane.preset} gave a critique of the wrong shape: {critique}")
    return Outcome(critique["decision"], None, str(critique.get("notes") or ""),
                   critique=critique)
