"""Wait until a run's ledger holds COUNT events matching every KEY=VALUE given.

  wait_for_events.py STATE_DIR COUNT KEY=VALUE...

STATE_DIR is a repository's wtmesh state directory; the ledgers of every run in it are
read (the tests that use this start one run). For tests that must order their steps
against wtmesh's own (a lane that ends only once another unit is waiting to land),
without guessing how long wtmesh takes. Exits 1 after a generous bound, so a test that
waits for something that never happens fails instead of hanging.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

GIVE_UP_S = 120.0
POLL_S = 0.02


def matching(state_dir: Path, wanted: dict[str, str]) -> int:
    count = 0
    for ledger in state_dir.glob("runs/*/ledger.jsonl"):
        for line in ledger.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if all(str(record.get(key)) == value for key, value in wanted.items()):
                count += 1
    return count


def main() -> int:
    state_dir, count = Path(sys.argv[1]), int(sys.argv[2])
    wanted = dict(arg.split("=", 1) for arg in sys.argv[3:])
    give_up = time.monotonic() + GIVE_UP_S
    while matching(state_dir, wanted) < count:
        if time.monotonic() > give_up:
            print(f"wait_for_events: gave up waiting for {count} x {wanted}", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
