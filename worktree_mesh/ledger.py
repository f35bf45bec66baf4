"""The append-only run ledger: one JSON object a line, flushed and fsynced per event.

Every line carries ``seq``, ``ts`` (ISO 8601 UTC), ``run_id`` and ``event``. Reading
tolerates a torn last line (a crash mid-write) but nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import faults
from .errors import EnvironmentRefused


class Ledger:
    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _drop_torn_tail(path)
        existing = read(path) if path.exists() else []
        self._seq = existing[-1]["seq"] if existing else 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            record = {
                "seq": self._seq,
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "run_id": self.run_id,
                "event": event,
                **fields,
            }
            line = json.dumps(record, ensure_ascii=True, sort_keys=False) + "\n"
            os.write(self._fd, line.encode("ascii"))
            os.fsync(self._fd)
        faults.after_event(record["seq"])
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _drop_torn_tail(path: Path) -> None:
    """A crash can leave a last line without its newline; cut it before appending."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())


def read(path: Path) -> list[dict[str, Any]]:
    return list(iter_events(path))


class LedgerDamaged(EnvironmentRefused):
    """A line other than the last is not a ledger event: the file was edited or the
    disk damaged it, not torn by a crash. Nothing is guessed from it."""


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a torn write
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LedgerDamaged(f"{path}: line {number} is not JSON ({exc.msg}): the "
                                "ledger is damaged") from None
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            raise LedgerDamaged(f"{path}: line {number} is not a ledger event: the ledger "
                                "is damaged")
        yield record
    if torn.strip():
        try:
            record = json.loads(torn)
        except json.JSONDecodeError:
            return  # a torn last line from a crash mid-write
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            yield record
