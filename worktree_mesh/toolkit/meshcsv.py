"""The ten mesh unit fields, and wave CSVs: written with RFC 4180 quoting, read strictly.

Reading refuses what would make a wave ambiguous: an empty file, a header lacking one of
the ten fields (or naming a column twice), a row with a different number of fields, a
row without an id, and an id given twice. Each refusal is one ``UsageError`` line.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .jsonio import read_text, write_file

MESH_FIELDS = ("id", "objective", "unit_scope", "constraints", "invariants", "proof_command",
               "delivery_mode", "attempt", "variant", "budget_tier")
# The mesh helper's defaults for a field a unit lacks, except the scope: mesh writes the
# placeholder "unknown" (which wtmesh reads as "**"); wtmesh writes "**" itself.
MESH_DEFAULTS: Mapping[str, str] = {
    "unit_scope": "**", "constraints": "", "invariants": "", "proof_command": "",
    "delivery_mode": "commit_first", "attempt": "1", "variant": "baseline",
    "budget_tier": "unknown",
}


def cell(name: str, value: Any) -> str:
    """A unit field as CSV text: a scope list joined with ``;`` (as mesh CSVs split it),
    an argv list shell-quoted (it runs through ``sh -c`` from a CSV), numbers as text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value) if name == "unit_scope" else shlex.join(value)
    return json.dumps(value, ensure_ascii=False)


def mesh_row(unit: Mapping[str, Any]) -> dict[str, str]:
    """The ten mesh fields of a unit, mesh's defaults for those it lacks."""
    return {name: cell(name, unit[name]) if name in unit else MESH_DEFAULTS.get(name, "")
            for name in MESH_FIELDS}


def render(header: Sequence[str], rows: Iterable[Mapping[str, str] | Sequence[str]]) -> bytes:
    """RFC 4180: CRLF line ends; a field with a comma, quote, CR or LF is quoted, its
    quotes doubled."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, dialect="excel", quoting=csv.QUOTE_MINIMAL,
                        lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header] if isinstance(row, Mapping) else row)
    return buffer.getvalue().encode("utf-8")


def write(path: Path, header: Sequence[str],
          rows: Iterable[Mapping[str, str] | Sequence[str]]) -> None:
    write_file(path, render(header, rows))


@dataclass(frozen=True)
class WaveCsv:
    path: Path
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]  # keyed by header name, in file order
    lines: tuple[int, ...]  # the line each row starts on (for messages)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]


def read(path: Path) -> WaveCsv:
    text = read_text(path, "CSV file")
    if not text.strip():
        raise UsageError(f"{path}: empty CSV (no header)")
    reader = csv.reader(io.StringIO(text, newline=""), dialect="excel", strict=True)
    try:
        header_row = next(reader)
        header = tuple(h.strip() for h in header_row)
        missing = [name for name in MESH_FIELDS if name not in header]
        if missing:
            raise UsageError(f"{path}: header lacks the mesh column(s) {', '.join(missing)}")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise UsageError(f"{path}: header names column(s) twice: {', '.join(twice)}")
        rows: list[dict[str, str]] = []
        lines: list[int] = []
        seen: dict[str, int] = {}
        line = reader.line_num + 1
        for record in reader:
            start, line = line, reader.line_num + 1
            if not any(field.strip() for field in record):
                continue  # a blank line
            if len(record) != len(header):
                raise UsageError(f"{path}: line {start}: {len(record)} fields, the header "
                                 f"has {len(header)}")
            row = dict(zip(header, record, strict=True))
            unit_id = row["id"]
            if not unit_id.strip():
                raise UsageError(f"{path}: line {start}: empty id")
            if unit_id in seen:
                raise UsageError(f"{path}: line {start}: duplicate id {unit_id!r} "
                                 f"(also line {seen[unit_id]})")
            seen[unit_id] = start
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        raise UsageError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    return WaveCsv(path, header, tuple(rows), tuple(lines))
