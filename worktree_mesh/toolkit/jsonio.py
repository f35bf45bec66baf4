"""Reading the toolkit's JSON inputs and writing its outputs, with one-line errors.

Every problem with an input file (missing, a directory, not UTF-8, not JSON) is a
``UsageError``: exit 2 and one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..state import write_atomic


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), and would be printed back as invalid JSON.
    raise ValueError(f"{name} is not a JSON number")


def read_text(path: Path, what: str = "file") -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def read_json(path: Path, what: str = "JSON file") -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from None


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
