"""How names and text that wtmesh did not choose are written out.

A file name is bytes to git, and need not be UTF-8. wtmesh holds paths as str with every
byte that is not UTF-8 as a lone surrogate (``surrogateescape``, ``git.decode_path``),
which keeps them exact for git but cannot be encoded as UTF-8: writing one crashed the
report. So everything wtmesh writes for people and programs (the report, summary.json,
plain lines, ``--json``, status) is valid UTF-8, whatever a lane named its files:

- a path is spelled as git spells it (``core.quotePath``): as it is when it is plain;
  else in double quotes, with C escapes and each byte that is not UTF-8 in octal
  (``"caf\\351.txt"``, as ``git status`` shows it). UTF-8 names stay readable.
- in any other text (a lane's notes, a message naming a path), a byte that is not UTF-8
  shows as ``\\xNN``, and any other lone surrogate as ``\\uXXXX``.

The ledger is wtmesh's own record and keeps every string exact (JSON ``\\u`` escapes,
read back as they were): resume reads paths from it.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
# What git quotes in a path (quote.c: sq_must_quote), bytes that are not UTF-8 included.
_NEEDS_QUOTES = re.compile('["\\\\\x00-\x1f\x7f\ud800-\udfff]')
_C_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n",
              "\v": "\\v", "\f": "\\f", "\r": "\\r"}


def _escaped_byte(char: str) -> int | None:
    """The byte a ``surrogateescape`` surrogate stands for, or None."""
    code = ord(char)
    return code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else None


def quote_path(path: str) -> str:
    """``path`` as git shows it: plain names as they are, others quoted and escaped."""
    if _NEEDS_QUOTES.search(path) is None:
        return path
    out = []
    for char in path:
        byte = _escaped_byte(char)
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif byte is not None:
            out.append(f"\\{byte:03o}")
        elif char < " " or char == "\x7f":
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return printable('"' + "".join(out) + '"')


def _escape_surrogate(match: re.Match[str]) -> str:
    byte = _escaped_byte(match.group())
    return f"\\x{byte:02x}" if byte is not None else f"\\u{ord(match.group()):04x}"


def printable(text: str) -> str:
    """``text`` with nothing that cannot be written as UTF-8."""
    return _SURROGATE.sub(_escape_surrogate, text)


def printable_data(data: Any) -> Any:
    """A JSON-like record with every string, keys included, made ``printable``."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_data(key): printable_data(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [printable_data(item) for item in data]
    return data
