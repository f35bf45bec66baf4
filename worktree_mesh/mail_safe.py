"""Commit message bodies that ``git am`` reads back as they were written.

A patch series is a mailbox, and ``git am`` splits every mail into message and patch
with ``git mailsplit`` and ``git mailinfo``. Text in a message can be read as more than
text (git 2.39, mailinfo.c and mailsplit.c):

- a line starting ``diff -`` or ``Index: ``, or ``---`` followed by a space or by nothing
  but whitespace, ends the message: everything after it, to the real patch, is handed to
  ``git apply`` as patch text, so a diff quoted in an objective would be applied too;
- a line starting ``From `` can start a new mail (mailsplit), and ``>From `` is how
  mboxrd escapes one;
- at the start of a body, ``From:``, ``Subject:``, ``Date:`` and ``[PATCH]`` lines are
  taken as headers (the author or the subject would change);
- with ``--scissors`` (or ``mailinfo.scissors``) a ``-- >8 --`` line drops the message
  above it.

Git only looks at the start of a line, and skips no leading space (but for scissors), so
a paragraph holding such a line is indented by four spaces - it reads as a quoted block
- and a scissors mark is split (``>8`` becomes ``> 8``). The body is also normalised the
way ``git am`` normalises what it reads (no trailing whitespace, no runs of blank lines),
so the commit it makes carries the very same message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

INDENT = "    "

# Anywhere in a body: the start of a patch (git's own test is narrower: "---" followed
# by a space or whitespace only, "diff -"; the rest of a quoted diff is caught too, so
# that a reviewer sees it as one block), or of another mail.
_PATCH_OR_MAIL = re.compile(r"(diff |Index: |---|\+\+\+ |@@ |>*From )")
# Only as a body's first line: an in-body header (matched without case, as git does).
_INBODY_HEADER = re.compile(r"((from|subject|date):|\[PATCH\]\s)", re.IGNORECASE)
_SCISSORS_MARKS = (">8", "8<", ">%", "%<")


def body(lines: Iterable[str]) -> str:
    """``lines`` as a commit message body that ``git am`` reads back unchanged: blank
    lines collapsed, trailing whitespace gone, risky paragraphs indented."""
    paragraphs = _paragraphs(line.rstrip() for line in lines)
    safe = []
    for number, paragraph in enumerate(paragraphs):
        if any(_is_risky(line, first=number == 0 and i == 0)
               for i, line in enumerate(paragraph)):
            paragraph = [INDENT + line for line in paragraph]
        safe.append("\n".join(_defuse_scissors(line) for line in paragraph))
    return "\n\n".join(safe)


def _paragraphs(lines: Iterable[str]) -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def _is_risky(line: str, *, first: bool) -> bool:
    return bool(_PATCH_OR_MAIL.match(line) or (first and _INBODY_HEADER.match(line)))


def _defuse_scissors(line: str) -> str:
    if not is_scissors_line(line):
        return line
    for mark in _SCISSORS_MARKS:
        line = line.replace(mark, f"{mark[0]} {mark[1]}")
    return line


def is_scissors_line(line: str) -> bool:
    """git mailinfo's ``is_scissors_line``: a perforation of dashes with a scissors mark
    (``>8``, ``8<``, ``>%``, ``%<``), at least 8 wide, over a third of the visible line."""
    scissors = gap = perforation = 0
    in_perforation = False
    first_visible: int | None = None
    last_visible = 0
    i = 0
    while i < len(line):
        char = line[i]
        if char in " \t\n\v\f\r":
            if in_perforation:
                perforation += 1
                gap += 1
            i += 1
            continue
        last_visible = i
        if first_visible is None:
            first_visible = i
        if char == "-":
            in_perforation = True
            perforation += 1
        elif line.startswith(_SCISSORS_MARKS, i):
            in_perforation = True
            perforation += 2
            scissors += 2
            i += 1  # git counts a mark's first character only as visible
        else:
            in_perforation = False
        i += 1
    visible = 0 if first_visible is None else last_visible - first_visible + 1
    return bool(scissors) and 8 <= visible < perforation * 3 and gap * 2 < perforation

