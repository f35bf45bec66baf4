"""Lane, setup and proof logs are capped: a log keeps the first and the last part of a
command's output and says how much it dropped between them; the command never blocks
or fails for it, and no process that escaped its lane keeps writing to its log."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from conftest import PY, alive, git, wtmesh
from hypothesis import given, settings
from hypothesis import strategies as st

from worktree_mesh.proc import LOG_HEAD_BYTES, LOG_TAIL_BYTES, CappedLog

MARKER = re.compile(rb"\n\[wtmesh: (\d+) bytes of output dropped here; [^\]\n]*\]\n")
CAP = LOG_HEAD_BYTES + LOG_TAIL_BYTES


def kept_of(log: bytes, head: int, tail: int) -> tuple[bytes, int, bytes]:
    """(head kept, bytes dropped, tail kept) of a capped log; nothing dropped: (log, 0, b"")."""
    found = MARKER.search(log, head)
    if found is None or found.start() != head:
        return log, 0, b""
    return log[:head], int(found.group(1)), log[found.end():]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.lists(st.binary(max_size=30), max_size=20))
def test_a_capped_log_keeps_head_and_tail_and_counts_the_rest(before: bytes,
                                                             chunks: list[bytes]) -> None:
    head, tail = 7, 5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log"
        path.write_bytes(before)  # an earlier command's output in the same log stays
        log = CappedLog(path, head, tail)
        for chunk in chunks:
            log.write(chunk)
        log.close()
        data = path.read_bytes()
    written = b"".join(chunks)
    assert data.startswith(before)
    if len(written) <= head + tail:
        assert data == before + written
        return
    kept_head, dropped, kept_tail = kept_of(data[len(before):], head, tail)
    assert kept_head == written[:head]
    assert kept_tail == written[-tail:]
    assert dropped == len(written) - head - tail


def test_a_lane_and_a_proof_printing_30_mb_end_normally_with_capped_logs(
        repo: Path, tmp_path: Path) -> None:
    # 30 MB in lines, the first and last of which are told apart.
    loud = ("import sys; out = sys.stdout.buffer; out.write(b'the first line\\n'); "
            "[out.write(b'%08d ' % i + b'x' * 90 + b'\\n') for i in range(300_000)]; "
            "out.write(b'the very end\\n'); sys.stderr.write('a word on stderr\\n')")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "proof_command": [PY, "-c", loud],
        "units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
            "command": f"{PY} -c \"{loud}\" && echo a > a.txt"}}}]}))
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert git(repo, "show", "main:a.txt") == "a"
    unit_dir = repo / ".git/wtmesh/runs" / res.json()["run_id"] / "units" / "u1"
    total = len(b"the first line\n") + 300_000 * 100 + len(b"the very end\n")
    lane_log = (unit_dir / "coder-1.stdout.log").read_bytes()
    assert len(lane_log) < CAP + 200
    kept_head, dropped, kept_tail = kept_of(lane_log, LOG_HEAD_BYTES, LOG_TAIL_BYTES)
    assert kept_head.startswith(b"the first line\n")
    assert kept_tail.endswith(b"00299999 " + b"x" * 90 + b"\nthe very end\n")
    assert dropped == total - CAP
    assert (unit_dir / "coder-1.stderr.log").read_bytes() == b"a word on stderr\n"
    # The proof's stdout and stderr share one log, capped the same way.
    proof_log = (unit_dir / "proof.log").read_bytes()
    assert len(proof_log) < CAP + 200
    kept_head, dropped, kept_tail = kept_of(proof_log, LOG_HEAD_BYTES, LOG_TAIL_BYTES)
    assert kept_head.startswith(b"the first line\n")
    assert b"the very end\n" in kept_tail and b"a word on stderr\n" in kept_tail
    assert dropped == total + len(b"a word on stderr\n") - CAP


def test_a_daemon_that_escaped_its_lane_cannot_keep_writing_its_log(
        repo: Path, tmp_path: Path) -> None:
    """A ``setsid`` process outlives the lane's group, but not its log: once the lane is
    over, its output has nowhere to go and it dies of SIGPIPE."""
    pid_file = tmp_path / "daemon.pid"
    daemon = f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec yes daemon"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
        "command": f"setsid sh -c '{daemon}' & "
                   f"until [ -e {pid_file} ]; do sleep 0.02; done; echo a > a.txt"}}}]}))
    pid = None
    try:
        # Unsandboxed: in a PID namespace the daemon would be gone with the lane anyway.
        res = wtmesh("run", plan, "--json", "--sandbox", "none", cwd=repo)
        assert res.returncode == 0, res.stderr
        pid = int(pid_file.read_text())
        give_up = time.monotonic() + 60
        while alive(pid) and time.monotonic() < give_up:
            time.sleep(0.05)
        assert not alive(pid), "the daemon still writes to the lane's log"
        log = repo / ".git/wtmesh/runs" / res.json()["run_id"] / "units/u1/coder-1.stdout.log"
        assert log.stat().st_size < CAP + 200
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
