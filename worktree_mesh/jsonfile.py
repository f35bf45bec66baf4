"""Reading a JSON input file (a plan, a toolkit payload) with one-line errors.

Every problem — missing, a directory, not UTF-8, not JSON — is a ``UsageError``: exit 2
and one line naming the file. A UTF-8 byte-order mark (editors on Windows write one) is
accepted; NaN and Infinity, which are not JSON, are not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UsageError


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
