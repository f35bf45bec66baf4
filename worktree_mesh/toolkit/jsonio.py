"""Reading the toolkit's JSON inputs (as plans are read) and writing its outputs.

Every problem with an input file (missing, a directory, not UTF-8, not JSON) is a
``UsageError``: exit 2 and one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..jsonfile import read_json as read_json  # the readers live beside the plan's
from ..jsonfile import read_text as read_text
from ..state import write_atomic


def write_file(path: Path, data: bytes) -> None:
    """Whole-file write through a temporary file and ``os.replace`` (parents created)."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_json(path: Path, data: Any) -> None:
    write_file(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def line(data: Any) -> str:
    """One JSON line, as every toolkit command prints on stdout: ASCII (non-ASCII text
    escaped), so it survives any terminal or locale encoding."""
    return json.dumps(data, allow_nan=False)


def same_file(a: Path, b: Path) -> bool:
    """Do two paths name one file, after resolving ``..`` and symlinks (and hard links)?"""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
