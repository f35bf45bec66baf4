"""Backpressure: halve after a bad unit, one more after each clean integration."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worktree_mesh.toolkit.backpressure import Backpressure, LimitChange


def test_starts_at_the_clamp() -> None:
    assert Backpressure(9).limit == 9
    assert Backpressure(0).limit == 1


def test_a_rejected_unit_halves_the_limit() -> None:
    bp = Backpressure(9)
    change = bp.unit_ended("u1", "rejected", "lane_failed")
    assert change == LimitChange("u1", 9, 4, "rejected")
    assert change.as_record() == {"unit": "u1", "old": 9, "new": 4, "reason": "rejected"}
    assert bp.limit == 4


def test_timeouts_and_bad_output_halve_whatever_the_status() -> None:
    bp = Backpressure(12)
    assert bp.unit_ended("a", "failed", "timeout_retry_exhausted") == \
        LimitChange("a", 12, 6, "timeout_retry_exhausted")
    assert bp.unit_ended("b", "rejected", "invalid_output_schema") == \
        LimitChange("b", 6, 3, "invalid_output_schema")
    assert bp.unit_ended("c", "failed", "timeout_retry_exhausted") == \
        LimitChange("c", 3, 1, "timeout_retry_exhausted")
    assert bp.unit_ended("d", "rejected", None) is None  # already 1: no change, no record
    assert bp.limit == 1


def test_clean_integrations_climb_back_to_the_clamp() -> None:
    bp = Backpressure(4)
    bp.unit_ended("x", "rejected", None)
    bp.unit_ended("y", "rejected", None)
    assert bp.limit == 1
    climbed = [bp.unit_ended(f"u{i}", "integrated", None) for i in range(5)]
    assert climbed[:3] == [LimitChange("u0", 1, 2, "integrated"),
                           LimitChange("u1", 2, 3, "integrated"),
                           LimitChange("u2", 3, 4, "integrated")]
    assert climbed[3:] == [None, None]
    assert bp.limit == 4


def test_other_ends_leave_the_limit_alone() -> None:
    bp = Backpressure(6)
    bp.unit_ended("r", "rejected", None)
    for status, code in (("no_diff", None), ("failed", "proof_failed"),
                         ("failed", "scope_violation"), ("skipped", "dependency_failed"),
                         ("failed", "integration_conflict")):
        assert bp.unit_ended("u", status, code) is None
    assert bp.limit == 3


ends = st.sampled_from([("integrated", None), ("no_diff", None), ("rejected", "lane_failed"),
                        ("rejected", None), ("failed", "timeout_retry_exhausted"),
                        ("rejected", "invalid_output_schema"), ("failed", "proof_failed")])


@given(st.integers(1, 64), st.lists(ends, max_size=40))
def test_limit_stays_between_one_and_the_clamp(clamp: int,
                                               sequence: list[tuple[str, str | None]]) -> None:
    bp = Backpressure(clamp)
    for n, (status, code) in enumerate(sequence):
        before = bp.limit
        change = bp.unit_ended(f"u{n}", status, code)
        assert 1 <= bp.limit <= clamp
        if change is None:
            assert bp.limit == before
        else:
            assert (change.old, change.new) == (before, bp.limit) and change.old != change.new
            if change.reason == "integrated":
                assert change.new == change.old + 1
            else:
                assert change.new == max(1, change.old // 2)
