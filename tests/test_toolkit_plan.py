"""`wtmesh plan-sync`, `wtmesh slice` and `wtmesh replay PLAN`: update_plan payloads to
units, and a plan's real schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import one_error_line, wtmesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worktree_mesh import plan as plan_mod
from worktree_mesh.toolkit import slicing, steps

MESH_FIELDS = ["id", "objective", "unit_scope", "constraints", "invariants", "proof_command",
               "delivery_mode", "attempt", "variant", "budget_tier"]
LANES = {"coder": {"command": "true"}}




def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), "utf-8")
    return path


UPDATE_PLAN = {
    "explanation": "port the parser",
    "plan": [
        {"step": "Read the old parser", "status": "done"},
        {"step": "Reject trailing commas", "status": "in_progress",
         "unit_scope": "calc/parse.py; tests/test_parse.py",
         "constraints": "Do not change public API", "invariants": "Reject at the boundary",
         "proof_command": "python -m pytest -q tests/test_parse.py"},
        {"step": "Document it, \"with\" quotes", "status": "queued", "variant": "terse"},
        {"title": "Benchmark", "status": "Open", "attempt": 2, "budget_tier": "low"},
        {"step": "Ship", "status": "blocked"},
        {"step": "Tidy", "status": "Closed"},
        {"step": "Polish", "status": "doing"},
        {"step": "Celebrate"},
    ],
}


# -- plan-sync ------------------------------------------------------------------------------


def test_plan_sync_counts_with_aliases_normalised(tmp_path: Path) -> None:
    res = wtmesh("plan-sync", "--input-json", write(tmp_path / "p.json", UPDATE_PLAN),
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert res.json() == {"command": "plan_sync", "total_steps": 8, "pending": 3,
                          "in_progress": 2, "completed": 2, "other": 1}


@pytest.mark.parametrize("shape", ["bare", "plan", "steps"])
def test_plan_sync_accepts_three_shapes(tmp_path: Path, shape: str) -> None:
    items = [{"step": "a", "status": "active"}, {"title": "b", "status": "done"},
             {"step": "c"}]
    data: Any = items if shape == "bare" else {shape: items}
    out = wtmesh("plan_sync", "--input-json", write(tmp_path / "p.json", data),
                 cwd=tmp_path).json()
    assert out == {"command": "plan_sync", "total_steps": 3, "pending": 1, "in_progress": 1,
                   "completed": 1, "other": 0}


def test_plan_sync_writes_the_normalised_plan(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", {"steps": [
        {"step": "a", "status": "queued", "note": "kept"}, {"step": "b", "status": "DOING"},
        {"step": "c", "status": "in-progress"}, {"step": "d", "status": "waiting"},
        {"step": "e"}]})
    res = wtmesh("plan-sync", "--input-json", source, "--output-json", tmp_path / "n.json",
                 cwd=tmp_path)
    assert res.json()["output_json"] == str(tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text()) == {"plan": [
        {"step": "a", "status": "pending", "note": "kept"},
        {"step": "b", "status": "in_progress"}, {"step": "c", "status": "in_progress"},
        {"step": "d", "status": "waiting"}, {"step": "e", "status": "pending"}]}
    # In place is allowed (the write is atomic), and normalising twice changes nothing.
    once = (tmp_path / "n.json").read_text()
    again = wtmesh("plan-sync", "--input-json", tmp_path / "n.json", "--output-json",
                   tmp_path / "n.json", cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "n.json").read_text() == once
    kept = wtmesh("plan-sync", "--input-json", write(tmp_path / "u.json", UPDATE_PLAN),
                  "--output-json", tmp_path / "u2.json", cwd=tmp_path)
    assert kept.returncode == 0
    assert json.loads((tmp_path / "u2.json").read_text())["explanation"] == "port the parser"


@pytest.mark.parametrize("command", ["plan-sync", "slice"])
@pytest.mark.parametrize("content, needle", [
    (None, "no such JSON file"),
    ("{not json", "not valid JSON: line 1 column 2"),
    ('{"plan": [NaN]}', "not valid JSON"),
    ('"a string"', "expected a step array"),
    ('{"todo": []}', "expected a step array"),
    ('{"plan": {"step": "x"}}', "$.plan: expected an array of steps, got dict"),
    ('{"plan": ["just text"]}', "$.plan[0]: expected a step object, got str"),
    ('[{"step": "x", "status": 3}]', "$[0].status: expected a string, got int"),
    ('{"steps": [{"step": ["x"]}]}', "$.steps[0].step: expected a string, got list"),
    ('{"units": [{"id": "a", "objective": "b"}]}', "this is a wtmesh plan"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, command: str, content: str | None,
                                      needle: str) -> None:
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    line = one_error_line(wtmesh(command, "--input-json", path, cwd=tmp_path))
    assert needle in line and str(path) in line


def test_a_directory_and_non_utf8_input(tmp_path: Path) -> None:
    assert "is a directory" in one_error_line(
        wtmesh("plan-sync", "--input-json", tmp_path, cwd=tmp_path))
    (tmp_path / "latin1.json").write_bytes(b'[{"step": "caf\xe9"}]')
    assert "not UTF-8" in one_error_line(
        wtmesh("slice", "--input-json", tmp_path / "latin1.json", cwd=tmp_path))


# -- slice ----------------------------------------------------------------------------------


def test_slice_makes_units_with_the_ten_mesh_fields(tmp_path: Path) -> None:
    res = wtmesh("slice", "--input-json", write(tmp_path / "p.json", UPDATE_PLAN),
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    out = res.json()
    assert list(out) == ["command", "units", "unit_count"]
    assert out["command"] == "slice" and out["unit_count"] == 5
    units = out["units"]
    assert [u["id"] for u in units] == [f"unit-00{n}" for n in range(1, 6)]
    # Only pending and in-progress steps (after normalising), in plan order.
    assert [u["objective"] for u in units] == [
        "Reject trailing commas", 'Document it, "with" quotes', "Benchmark", "Polish",
        "Celebrate"]
    for unit in units:
        assert list(unit)[:10] == MESH_FIELDS
    # Fields on the step are carried over ...
    assert units[0] == {
        "id": "unit-001", "objective": "Reject trailing commas",
        "unit_scope": "calc/parse.py; tests/test_parse.py",
        "constraints": "Do not change public API", "invariants": "Reject at the boundary",
        "proof_command": "python -m pytest -q tests/test_parse.py",
        "delivery_mode": "commit_first", "attempt": "1", "variant": "baseline",
        "budget_tier": "unknown"}
    assert units[1]["variant"] == "terse"
    assert (units[2]["attempt"], units[2]["budget_tier"]) == (2, "low")
    # ... the rest take mesh's defaults, except a missing scope, which is "**".
    assert units[3] == {
        "id": "unit-004", "objective": "Polish", "unit_scope": "**", "constraints": "",
        "invariants": "", "proof_command": "", "delivery_mode": "commit_first",
        "attempt": "1", "variant": "baseline", "budget_tier": "unknown"}


def test_slice_objectives_and_max_slices(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", [
        {"step": "one"}, {"step": "", "title": "two from title"}, {"status": "pending"},
        {"step": "done already", "status": "completed"}, {"step": "four"}])
    out = wtmesh("slice", "--input-json", source, cwd=tmp_path).json()
    assert [u["objective"] for u in out["units"]] == [
        "one", "two from title", "untitled-step", "four"]
    cut = wtmesh("slice", "--input-json", source, "--max-slices", "2", cwd=tmp_path).json()
    assert [u["id"] for u in cut["units"]] == ["unit-001", "unit-002"]
    assert cut["unit_count"] == 2
    none = wtmesh("slice", "--input-json", source, "--max-slices", "0", cwd=tmp_path).json()
    assert none == {"command": "slice", "units": [], "unit_count": 0}
    assert "Invalid value for '--max-slices'" in one_error_line(
        wtmesh("slice", "--input-json", source, "--max-slices", "-1", cwd=tmp_path))


def test_slice_output_is_a_plan_wtmesh_validate_accepts_once_lanes_are_added(
        tmp_path: Path) -> None:
    res = wtmesh("slice", "--input-json", write(tmp_path / "p.json", UPDATE_PLAN),
                 "--output-json", tmp_path / "plan.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert list(plan) == ["version", "units"] and plan["version"] == 1
    printed = {u["id"]: u for u in res.json()["units"]}
    for unit in plan["units"]:
        # The file's units are the printed ones, less two defaults that would override
        # the plan's own proof command and delivery mode.
        dropped = {k: v for k, v in printed[unit["id"]].items() if k not in unit}
        assert set(dropped) <= {"proof_command", "delivery_mode"}
        assert all(v in ("", "commit_first") for v in dropped.values())
    assert plan["units"][0]["proof_command"] == "python -m pytest -q tests/test_parse.py"
    # Without lanes, not yet a plan to run ...
    bare = wtmesh("validate", tmp_path / "plan.json", cwd=tmp_path)
    assert bare.returncode == 2 and "no coder lane" in bare.stderr
    # ... with lanes, a valid one, and a plan-level proof or delivery mode still applies.
    plan["lanes"] = LANES
    plan["proof_command"] = "true"
    plan["delivery_mode"] = "patch_first"
    write(tmp_path / "plan.json", plan)
    ok = wtmesh("validate", tmp_path / "plan.json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{tmp_path / 'plan.json'}: valid plan, 5 units"
    loaded = plan_mod.load(tmp_path / "plan.json")
    assert loaded.units[1].proof_command == "true"
    assert loaded.units[0].proof_command == "python -m pytest -q tests/test_parse.py"


def test_slice_carries_dependencies_and_a_delivery_mode(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", {"plan": [
        {"id": "s1", "step": "base", "status": "completed"},
        {"id": "s2", "step": "parser", "delivery_mode": "patch_first", "unit_scope": ["src/"]},
        {"id": "s3", "step": "tests", "depends_on": ["s1", "s2"], "timeout_s": 60,
         "delivery_mode": "patch_first", "lanes": {"coder": {"command": "echo hi"}}},
    ]})
    res = wtmesh("slice", "--input-json", source, "--output-json", tmp_path / "plan.json",
                 cwd=tmp_path)
    units = res.json()["units"]
    assert units[1]["depends_on"] == ["unit-001"]  # s1 is done; s2 is unit-001
    assert units[1]["timeout_s"] == 60
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["delivery_mode"] == "patch_first"
    assert plan["units"][0]["unit_scope"] == ["src/"]
    assert plan_mod.problems({**plan, "lanes": LANES}) == []
    replayed = wtmesh("replay", tmp_path / "plan.json", cwd=tmp_path).json()
    assert replayed["waves"] == [["unit-001"], ["unit-002"]]


def test_slice_carries_test_first(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", {"plan": [
        {"id": "pin", "step": "tests for the parser", "unit_scope": "tests/",
         "test_first": True, "proof_command": "pytest -q tests"},
        {"id": "impl", "step": "the parser", "unit_scope": "src/", "depends_on": ["pin"]},
        {"step": "docs", "unit_scope": "docs/", "test_first": False},
    ]})
    res = wtmesh("slice", "--input-json", source, "--output-json", tmp_path / "plan.json",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    units = res.json()["units"]
    assert [u.get("test_first") for u in units] == [True, None, False]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [u.get("test_first") for u in plan["units"]] == [True, None, False]
    loaded = plan_mod.build({**plan, "lanes": LANES}, tmp_path / "plan.json")
    assert plan_mod.problems({**plan, "lanes": LANES}) == []
    assert [u.id for u in plan_mod.implementation_units(loaded.units, "unit-001")] == ["unit-002"]
    replayed = wtmesh("replay", tmp_path / "plan.json", "--max-active", "3",
                      cwd=tmp_path).json()
    assert replayed["waves"] == [["unit-001", "unit-003"], ["unit-002"]]
    assert replayed["test_first_ids"] == ["unit-001"]


def test_slice_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", UPDATE_PLAN)
    line = one_error_line(wtmesh("slice", "--input-json", source, "--output-json",
                                 tmp_path / "." / "p.json", cwd=tmp_path))
    assert "same file" in line
    assert json.loads(source.read_text()) == UPDATE_PLAN


# hypothesis: whatever the steps say, the plan file is valid once lanes are added.

text = st.text(st.characters(codec="utf-8"), max_size=30)
status = st.sampled_from(["pending", "in_progress", "completed", "open", "queued", "active",
                          "doing", "done", "closed", "In Progress", "blocked", "PENDING"])
scope = st.one_of(
    st.sampled_from(["src/", "src/a.py", "docs/*.md", "src/**/*.py", "**", "unknown",
                     "lib/b.py; lib/c.py", "a.py,b.py", ""]),
    st.lists(st.sampled_from(["src/", "tests/test_x.py", "README.md", "**/*.rst"]),
             max_size=3))
optional_fields = st.fixed_dictionaries({}, optional={
    "unit_scope": scope,
    "constraints": text,
    "invariants": text,
    "proof_command": st.one_of(text, st.lists(st.text(max_size=5), min_size=1, max_size=3)),
    "attempt": st.one_of(st.integers(0, 99), st.integers(0, 99).map(str)),
    "variant": text,
    "budget_tier": st.one_of(text, st.integers(0, 5)),
    "timeout_s": st.floats(min_value=0.5, max_value=1e4),
})


@st.composite
def update_plans(draw: st.DrawFn) -> Any:
    mode = draw(st.sampled_from([None, "commit_first", "patch_first"]))
    items = []
    for _ in range(draw(st.integers(0, 8))):
        step: dict[str, Any] = dict(draw(optional_fields))
        key = draw(st.sampled_from(["step", "title", None]))
        if key is not None:
            step[key] = draw(text)
        if draw(st.booleans()):
            step["status"] = draw(status)
        if mode is not None and draw(st.booleans()):
            step["delivery_mode"] = mode
        items.append(step)
    return draw(st.sampled_from([items, {"plan": items}, {"steps": items}]))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(update_plans(), st.one_of(st.none(), st.integers(0, 5)))
def test_slice_plan_always_validates_once_lanes_are_added(data: Any,
                                                          max_slices: int | None) -> None:
    result = slicing.slice_steps(steps.parse(data), max_slices)
    assert [u["id"] for u in result.units] == \
        [f"unit-{n:03d}" for n in range(1, len(result.units) + 1)]
    for unit in result.units:
        assert list(unit)[:10] == MESH_FIELDS
    assert [u["id"] for u in result.plan["units"]] == [u["id"] for u in result.units]
    if result.units:
        assert plan_mod.problems({**result.plan, "lanes": LANES}) == []


# -- replay PLAN ----------------------------------------------------------------------------

SCHEDULED = {
    "max_active": 2,
    "units": [
        {"id": "a", "objective": "a", "unit_scope": "src/"},
        {"id": "b", "objective": "b", "unit_scope": "src/a.py"},  # overlaps a: after it
        {"id": "c", "objective": "c", "unit_scope": "docs/", "depends_on": ["a"]},
        {"id": "d", "objective": "d", "unit_scope": "lib/"},
        {"id": "e", "objective": "e", "unit_scope": "lib/b.py; lib/c.py",
         "depends_on": ["f"]},
        {"id": "f", "objective": "f", "unit_scope": "tools/"},
    ],
}


def test_replay_plan_simulates_the_real_schedule(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.json", SCHEDULED)  # no lanes: replay runs none
    res = wtmesh("replay", plan, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.json() == {"command": "replay", "plan": str(plan), "max_active_units": 2,
                          "unit_count": 6, "wave_count": 4,
                          "waves": [["a", "d"], ["b", "c"], ["f"], ["e"]],
                          "test_first_ids": []}
    wide = wtmesh("replay", plan, "--max-active", "10", cwd=tmp_path).json()
    # e waits for f (its dependency) and for d (an earlier unit whose scope overlaps).
    assert wide["waves"] == [["a", "d", "f"], ["b", "c", "e"]]
    one = wtmesh("replay", plan, "--max-active", "1", cwd=tmp_path).json()
    assert one["waves"] == [["a"], ["b"], ["c"], ["d"], ["f"], ["e"]]


def test_replay_plan_starts_test_first_units_in_the_first_wave(tmp_path: Path) -> None:
    """Ahead of an earlier unit whose scope overlaps theirs, and of the slots; their
    implementation units follow them, ahead of the units that overlap the group (it lands
    as one)."""
    plan = write(tmp_path / "plan.json", {"max_active": 2, "proof_command": "true", "units": [
        {"id": "code", "objective": "o", "unit_scope": "src/"},
        {"id": "docs", "objective": "o", "unit_scope": "docs/"},
        {"id": "tests", "objective": "o", "unit_scope": "src/tests/", "test_first": True},
        {"id": "impl", "objective": "o", "unit_scope": "src/parse.py", "depends_on": ["tests"]},
        {"id": "lib-tests", "objective": "o", "unit_scope": "lib/tests/", "test_first": True},
    ]})
    res = wtmesh("replay", plan, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["waves"] == [["tests", "lib-tests"], ["impl", "docs"], ["code"]]
    assert out["test_first_ids"] == ["tests", "lib-tests"]
    wide = wtmesh("replay", plan, "--max-active", "10", cwd=tmp_path).json()
    assert wide["waves"] == [["tests", "lib-tests", "docs"], ["impl"], ["code"]]


def test_replay_plan_clamped_by_the_budget(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.json", {**SCHEDULED, "lanes": LANES, "max_active": 8})
    # strict 12: floor(12 * 2 / 23) = 1 unit at a time.
    out = wtmesh("replay", plan, "--remaining-five-hour", "12", "--remaining-weekly", "50",
                 cwd=tmp_path).json()
    assert (out["mode"], out["max_active_units"], out["wave_count"]) == ("linear_clamp", 1, 6)
    assert out["waves"] == [["a"], ["b"], ["c"], ["d"], ["f"], ["e"]]
    roomy = wtmesh("replay", plan, "--remaining-five-hour", "90", "--remaining-weekly", "90",
                   "--max-threads", "2", cwd=tmp_path).json()
    assert (roomy["mode"], roomy["max_active_units"]) == ("full_fanout", 2)


def test_replay_of_an_invalid_plan_lists_every_problem(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.json", {"units": [
        {"id": "a", "objective": "a", "depends_on": ["zz"]},
        {"id": "a", "objective": "", "unit_scope": "../out"}]})
    res = wtmesh("replay", plan, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert all(line.startswith(f"wtmesh: error: {plan}: $.units[") for line in lines)
    assert len(lines) == 4, lines  # duplicate id, unknown dependency, empty objective, scope
    assert "--ready-units goes without PLAN" in one_error_line(
        wtmesh("replay", plan, "--ready-units", "3", cwd=tmp_path))
    assert "no such plan file" in one_error_line(
        wtmesh("replay", tmp_path / "missing.json", cwd=tmp_path))
