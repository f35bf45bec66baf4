"""`wtmesh budget` and `wtmesh replay` with budget numbers: SPEC 7's clamp, to the unit."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import Result, one_error_line, wtmesh
from hypothesis import given
from hypothesis import strategies as st

from worktree_mesh.toolkit import budget

SPEC_KEYS = ["command", "remaining_five_hour", "remaining_weekly", "remaining_strict",
             "linear_start_threshold", "single_agent_threshold", "scaleout_threshold",
             "max_threads", "max_active_units", "mode", "cas_scaleout_allowed"]




def run_budget(tmp_path: Path, *args: str) -> Result:
    return wtmesh("budget", *args, cwd=tmp_path)


def test_budget_40_28_12_is_linear_clamp_9_with_scaleout(tmp_path: Path) -> None:
    res = run_budget(tmp_path, "--remaining-five-hour", "40", "--remaining-weekly", "28",
                     "--max-threads", "12")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    out = json.loads(res.stdout)
    assert list(out) == SPEC_KEYS
    assert out == {"command": "budget", "remaining_five_hour": 40.0, "remaining_weekly": 28.0,
                   "remaining_strict": 28.0, "linear_start_threshold": 33.0,
                   "single_agent_threshold": 10.0, "scaleout_threshold": 25.0,
                   "max_threads": 12, "max_active_units": 9, "mode": "linear_clamp",
                   "cas_scaleout_allowed": True}
    # Percentages are JSON floats, whatever was typed; counts are integers.
    assert '"remaining_five_hour": 40.0' in res.stdout
    assert '"linear_start_threshold": 33.0' in res.stdout
    assert '"max_active_units": 9,' in res.stdout


def test_budget_90_70_is_full_fanout_12(tmp_path: Path) -> None:
    out = run_budget(tmp_path, "--remaining-five-hour", "90", "--remaining-weekly", "70").json()
    assert (out["mode"], out["max_active_units"], out["cas_scaleout_allowed"]) == \
        ("full_fanout", 12, True)
    assert out["remaining_strict"] == 70.0


def test_budget_9_40_is_single_agent_1(tmp_path: Path) -> None:
    out = run_budget(tmp_path, "--remaining-five-hour", "9", "--remaining-weekly", "40").json()
    assert (out["mode"], out["max_active_units"], out["cas_scaleout_allowed"]) == \
        ("single_agent", 1, False)


def test_percentages_outside_0_100_are_clamped(tmp_path: Path) -> None:
    out = run_budget(tmp_path, "--remaining-five-hour", "250", "--remaining-weekly",
                     "-30").json()
    assert out["remaining_five_hour"] == 100.0
    assert out["remaining_weekly"] == 0.0
    assert out["remaining_strict"] == 0.0
    assert out["mode"] == "single_agent" and out["max_active_units"] == 1
    high = run_budget(tmp_path, "--remaining-five-hour", "1e9", "--remaining-weekly", "101",
                      "--linear-start-threshold", "400").json()
    assert high["remaining_strict"] == 100.0 and high["linear_start_threshold"] == 100.0
    # strict 100 <= linear 100 (clamped): the top of the linear range, all threads.
    assert (high["mode"], high["max_active_units"]) == ("linear_clamp", 12)


def test_max_threads_below_one_counts_as_one(tmp_path: Path) -> None:
    for n in ("0", "-4"):
        out = run_budget(tmp_path, "--remaining-five-hour", "90", "--remaining-weekly", "90",
                         "--max-threads", n).json()
        assert (out["max_threads"], out["max_active_units"]) == (1, 1)


def test_thresholds_are_options(tmp_path: Path) -> None:
    out = run_budget(tmp_path, "--remaining-five-hour", "50", "--remaining-weekly", "50",
                     "--single-agent-threshold", "20", "--linear-start-threshold", "60",
                     "--scaleout-threshold", "50", "--max-threads", "8").json()
    # floor(8 * (50 - 20) / (60 - 20)) = floor(6.0)
    assert (out["mode"], out["max_active_units"]) == ("linear_clamp", 6)
    assert out["cas_scaleout_allowed"] is False  # 50 is not > 50
    # A linear start at or below the single-agent threshold leaves no linear range.
    flat = run_budget(tmp_path, "--remaining-five-hour", "90", "--remaining-weekly", "90",
                      "--single-agent-threshold", "40", "--linear-start-threshold",
                      "30").json()
    assert (flat["mode"], flat["max_active_units"]) == ("single_agent", 1)


def test_text_format(tmp_path: Path) -> None:
    res = run_budget(tmp_path, "--remaining-five-hour", "40", "--remaining-weekly", "28",
                     "--format", "text")
    assert res.returncode == 0
    assert res.stdout == ("mode=linear_clamp strict_remaining=28.00 max_active_units=9 "
                          "cas_scaleout_allowed=true\n")


@pytest.mark.parametrize("args, needle", [
    ((), "Missing option '--remaining-five-hour'"),
    (("--remaining-five-hour", "40"), "Missing option '--remaining-weekly'"),
    (("--remaining-five-hour", "lots", "--remaining-weekly", "1"), "not a valid float"),
    (("--remaining-five-hour", "nan", "--remaining-weekly", "1"), "NaN"),
    (("--remaining-five-hour", "1", "--remaining-weekly", "1", "--format", "yaml"),
     "'yaml' is not one of"),
    (("--remaining-five-hour", "1", "--remaining-weekly", "1", "--max-threads", "2.5"),
     "not a valid integer"),
])
def test_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert needle in one_error_line(run_budget(tmp_path, *args))


ROLE_KEYS = ["roles_per_task", "reserve_slots", "parallel_tasks_target"]
PLENTY = ("--remaining-five-hour", "90", "--remaining-weekly", "90")


@pytest.mark.parametrize("roles, target", [("5", 2), ("3", 3)])
def test_roles_per_task_mesh_figures(tmp_path: Path, roles: str, target: int) -> None:
    """SPEC 12: 12 threads less 2 reserved, by 5 roles -> 2 tasks; by 3 roles -> 3."""
    res = run_budget(tmp_path, "--remaining-five-hour", "40", "--remaining-weekly", "28",
                     "--max-threads", "12", "--roles-per-task", roles, "--reserve-slots", "2")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert list(out) == SPEC_KEYS + ROLE_KEYS
    assert {k: out[k] for k in ROLE_KEYS} == \
        {"roles_per_task": int(roles), "reserve_slots": 2, "parallel_tasks_target": target}
    # The clamp itself is untouched by the roles.
    assert (out["mode"], out["max_active_units"]) == ("linear_clamp", 9)


def test_reserve_slots_defaults_to_two(tmp_path: Path) -> None:
    out = run_budget(tmp_path, *PLENTY, "--roles-per-task", "3").json()
    assert (out["reserve_slots"], out["parallel_tasks_target"]) == (2, 3)  # floor(10 / 3)
    none_kept = run_budget(tmp_path, *PLENTY, "--roles-per-task", "3",
                           "--reserve-slots", "0").json()
    assert (none_kept["reserve_slots"], none_kept["parallel_tasks_target"]) == (0, 4)


def test_parallel_tasks_target_is_at_least_one(tmp_path: Path) -> None:
    # floor((4 - 2) / 5) = 0: still one task.
    out = run_budget(tmp_path, *PLENTY, "--max-threads", "4", "--roles-per-task", "5").json()
    assert out["parallel_tasks_target"] == 1
    # One slot left (3 - 2) for a task of 3 roles.
    out = run_budget(tmp_path, *PLENTY, "--max-threads", "3", "--roles-per-task", "3").json()
    assert out["parallel_tasks_target"] == 1


def test_roles_in_the_text_format(tmp_path: Path) -> None:
    res = run_budget(tmp_path, "--remaining-five-hour", "40", "--remaining-weekly", "28",
                     "--roles-per-task", "5", "--format", "text")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("mode=linear_clamp strict_remaining=28.00 max_active_units=9 "
                          "cas_scaleout_allowed=true roles_per_task=5 reserve_slots=2 "
                          "parallel_tasks_target=2\n")


@pytest.mark.parametrize("args, needle", [
    (("--roles-per-task", "0"), "--roles-per-task must be at least 1, not 0"),
    (("--roles-per-task", "-3"), "--roles-per-task must be at least 1, not -3"),
    (("--roles-per-task", "2.5"), "'--roles-per-task': '2.5' is not a valid integer"),
    (("--roles-per-task", "five"), "'--roles-per-task': 'five' is not a valid integer"),
    (("--roles-per-task", "3", "--reserve-slots", "-1"), "--reserve-slots cannot be negative"),
    (("--roles-per-task", "3", "--reserve-slots", "0.5"),
     "'--reserve-slots': '0.5' is not a valid integer"),
    (("--roles-per-task", "3", "--reserve-slots", "12"),
     "--reserve-slots 12 leaves no slot of --max-threads 12"),
    (("--roles-per-task", "3", "--reserve-slots", "13"),
     "--reserve-slots 13 leaves no slot of --max-threads 12"),
    # The default reserve (2) counts too.
    (("--max-threads", "2", "--roles-per-task", "1"),
     "--reserve-slots 2 leaves no slot of --max-threads 2"),
    (("--reserve-slots", "1"), "--reserve-slots goes with --roles-per-task"),
])
def test_roles_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert needle in one_error_line(run_budget(tmp_path, *PLENTY, *args))


def test_replay_62_41_12_with_19_ready_units_is_waves_12_7(tmp_path: Path) -> None:
    res = wtmesh("replay", "--remaining-five-hour", "62", "--remaining-weekly", "41",
                 "--ready-units", "19", "--max-threads", "12", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert list(out) == ["command", "mode", "max_active_units", "ready_units", "wave_count",
                         "waves"]
    assert out == {"command": "replay", "mode": "full_fanout", "max_active_units": 12,
                   "ready_units": 19, "wave_count": 2, "waves": [12, 7]}


def test_replay_in_the_linear_range_and_with_nothing_ready(tmp_path: Path) -> None:
    out = wtmesh("replay", "--remaining-five-hour", "40", "--remaining-weekly", "28",
                 "--ready-units", "20", cwd=tmp_path).json()
    assert (out["max_active_units"], out["waves"]) == (9, [9, 9, 2])
    empty = wtmesh("replay", "--remaining-five-hour", "40", "--remaining-weekly", "28",
                   "--ready-units", "0", cwd=tmp_path).json()
    assert (empty["wave_count"], empty["waves"]) == (0, [])


@pytest.mark.parametrize("args, needle", [
    ((), "give PLAN, or --remaining-five-hour"),
    (("--remaining-five-hour", "50"), "give both"),
    (("--remaining-five-hour", "50", "--remaining-weekly", "50"), "--ready-units"),
    (("--remaining-five-hour", "5", "--remaining-weekly", "5", "--ready-units", "-1"),
     "Invalid value for '--ready-units'"),
    (("--remaining-five-hour", "5", "--remaining-weekly", "5", "--ready-units", "3",
      "--max-active", "2"), "--max-active goes with PLAN"),
])
def test_replay_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert needle in one_error_line(wtmesh("replay", *args, cwd=tmp_path))


# -- the pure clamp -------------------------------------------------------------------------

percent = st.floats(min_value=-50, max_value=150, allow_nan=False)
threads = st.integers(min_value=-3, max_value=64)


@given(percent, percent, threads)
def test_units_between_one_and_max_threads(five: float, week: float, n: int) -> None:
    decision = budget.clamp(five, week, n)
    assert 1 <= decision.max_active_units <= decision.max_threads == max(1, n)
    assert 0.0 <= decision.remaining_strict <= 100.0
    assert decision.mode in budget.MODES
    assert decision.cas_scaleout_allowed == (decision.remaining_strict > 25.0)


@given(percent, percent, percent, percent, threads)
def test_monotone_in_the_remaining_budget(a: float, b: float, c: float, d: float,
                                          n: int) -> None:
    """More budget left (in either window, or both) never means fewer units."""
    low_five, high_five = sorted((a, b))
    low_week, high_week = sorted((c, d))
    low = budget.clamp(low_five, low_week, n).max_active_units
    assert low <= budget.clamp(high_five, low_week, n).max_active_units
    assert low <= budget.clamp(low_five, high_week, n).max_active_units
    assert low <= budget.clamp(high_five, high_week, n).max_active_units


@given(st.integers(-20, 120), st.integers(-20, 120), st.integers(1, 64))
def test_matches_the_formula_exactly(five: int, week: int, n: int) -> None:
    """SPEC's formula over exact rationals (integer percentages: no rounding to blame)."""
    strict = Fraction(min(min(max(five, 0), 100), min(max(week, 0), 100)))
    decision = budget.clamp(five, week, n)
    if strict <= 10:
        assert (decision.mode, decision.max_active_units) == ("single_agent", 1)
    elif strict <= 33:
        expected = max(1, math.floor(n * (strict - 10) / (33 - 10)))
        assert (decision.mode, decision.max_active_units) == ("linear_clamp", expected)
    else:
        assert (decision.mode, decision.max_active_units) == ("full_fanout", n)


@given(st.integers(1, 64), st.integers(1, 16), st.integers(0, 63))
def test_parallel_tasks_target_matches_the_formula(n: int, roles: int, reserve: int) -> None:
    if reserve >= n:
        with pytest.raises(ValueError):
            budget.parallel_tasks_target(n, roles, reserve)
        return
    target = budget.parallel_tasks_target(n, roles, reserve)
    assert target == max(1, math.floor(Fraction(n - reserve, roles)))
    # Never more lanes than threads, unless the floor of one task forces it.
    assert target * roles <= n - reserve or target == 1


def test_decision_limits_a_run_and_renders() -> None:
    decision = budget.clamp(40, 28, 12)
    assert decision.limit(4) == 4 and decision.limit(20) == 9 and decision.limit(0) == 1
    assert json.loads(decision.as_json()) == decision.as_dict()
    with pytest.raises(ValueError):
        budget.clamp(float("nan"), 50)
    assert budget.wave_sizes(19, 12) == [12, 7]
    assert budget.wave_sizes(24, 12) == [12, 12]
    assert budget.wave_sizes(5, 0) == [1, 1, 1, 1, 1]
