"""`wtmesh wave`: one wave of units whose scopes share no path, written as a mesh CSV."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MESH_HEADER, Result, one_error_line, wtmesh
from hypothesis import given, settings
from hypothesis import strategies as st

from worktree_mesh.scope import Scope
from worktree_mesh.toolkit import wave


def run_wave(tmp_path: Path, units: Any, *args: str) -> tuple[Result, Path]:
    source = tmp_path / "units.json"
    source.write_text(json.dumps(units if not isinstance(units, list) else {"units": units}))
    out = tmp_path / "wave.csv"
    return wtmesh("wave", "--units-json", source, "--csv-path", out, *args, cwd=tmp_path), out


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_directory_overlaps_a_file_below_it(tmp_path: Path) -> None:
    res, out = run_wave(tmp_path, [
        {"id": "dir", "objective": "o", "unit_scope": "src/"},
        {"id": "file", "objective": "o", "unit_scope": "src/a.py"},
        {"id": "other", "objective": "o", "unit_scope": "docs/a.py"},
    ], "--max-active", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert res.json() == {"command": "wave", "units_in": 3, "units_selected": 2,
                          "csv_path": str(out), "selected_ids": ["dir", "other"],
                          "remaining_ids": ["file"], "test_first_ids": []}
    assert [r["id"] for r in rows(out)] == ["dir", "other"]


def test_a_scope_list_overlaps_one_of_its_files(tmp_path: Path) -> None:
    res, out = run_wave(tmp_path, [
        {"id": "pair", "objective": "o", "unit_scope": "lib/b.py; lib/c.py"},
        {"id": "c", "objective": "o", "unit_scope": "lib/c.py"},
        {"id": "d", "objective": "o", "unit_scope": ["lib/d.py"]},
        {"id": "glob", "objective": "o", "unit_scope": "lib/*.py"},
        {"id": "all", "objective": "o", "unit_scope": "unknown"},
    ], "--max-active", "5")
    assert res.json()["selected_ids"] == ["pair", "d"]
    assert res.json()["remaining_ids"] == ["c", "glob", "all"]
    assert [r["unit_scope"] for r in rows(out)] == ["lib/b.py; lib/c.py", "lib/d.py"]


def test_max_active_defaults_to_one(tmp_path: Path) -> None:
    res, out = run_wave(tmp_path, [{"id": f"u{i}", "objective": "o", "unit_scope": f"m{i}/"}
                                   for i in range(4)])
    assert res.json()["units_selected"] == 1
    assert res.json()["remaining_ids"] == ["u1", "u2", "u3"]
    res, out = run_wave(tmp_path, [{"id": f"u{i}", "objective": "o", "unit_scope": f"m{i}/"}
                                   for i in range(4)], "--max-active", "3")
    assert res.json()["selected_ids"] == ["u0", "u1", "u2"]


def test_a_unit_waits_for_a_dependency_still_in_the_list(tmp_path: Path) -> None:
    res, _ = run_wave(tmp_path, [
        {"id": "a", "objective": "o", "unit_scope": "a/"},
        {"id": "b", "objective": "o", "unit_scope": "b/", "depends_on": ["a"]},
        {"id": "c", "objective": "o", "unit_scope": "c/", "depends_on": ["done-earlier"]},
    ], "--max-active", "3")
    assert res.json()["selected_ids"] == ["a", "c"]
    assert res.json()["remaining_ids"] == ["b"]


def test_test_first_units_go_in_the_first_wave(tmp_path: Path) -> None:
    """Ahead of earlier units whose scopes overlap theirs, and of the slots; the units
    that depend on them wait."""
    res, out = run_wave(tmp_path, [
        {"id": "code", "objective": "o", "unit_scope": "src/"},
        {"id": "other", "objective": "o", "unit_scope": "docs/"},
        {"id": "tests", "objective": "o", "unit_scope": "src/tests/", "test_first": True},
        {"id": "impl", "objective": "o", "unit_scope": "src/parse.py", "depends_on": ["tests"]},
        {"id": "more", "objective": "o", "unit_scope": "lib/tests/", "test_first": True},
    ], "--max-active", "2")
    assert res.returncode == 0, res.stderr
    assert res.json()["selected_ids"] == ["tests", "more"]
    assert res.json()["remaining_ids"] == ["code", "other", "impl"]
    assert res.json()["test_first_ids"] == ["tests", "more"]
    assert [r["id"] for r in rows(out)] == ["tests", "more"]


def test_a_test_first_unit_brings_what_it_depends_on_ahead(tmp_path: Path) -> None:
    res, _ = run_wave(tmp_path, [
        {"id": "a", "objective": "o", "unit_scope": "a/"},
        {"id": "tests", "objective": "o", "unit_scope": "tests/", "test_first": True,
         "depends_on": ["fixture"]},
        {"id": "fixture", "objective": "o", "unit_scope": "tests/data/"},
    ])
    assert res.json()["selected_ids"] == ["fixture"]
    assert res.json()["remaining_ids"] == ["a", "tests"]


def test_csv_has_the_ten_headers_defaults_and_rfc4180_quoting(tmp_path: Path) -> None:
    units = [
        {"id": "q", "objective": 'Fix "quoted", comma\nand newline', "unit_scope": ["a/", "b/"],
         "constraints": "keep, all", "proof_command": ["python", "-m", "pytest", "-k", "a b"],
         "attempt": 2, "budget_tier": 3, "extra": "ignored"},
        {"id": "bare", "objective": "plain", "unit_scope": "c/"},
    ]
    res, out = run_wave(tmp_path, {"units": units, "lanes": {}}, "--max-active", "2")
    assert res.returncode == 0, res.stderr
    raw = out.read_bytes()
    assert raw.startswith(MESH_HEADER.encode() + b"\r\n")
    assert b'"Fix ""quoted"", comma\nand newline"' in raw
    assert b'"keep, all"' in raw
    assert raw.endswith(b"bare,plain,c/,,,,commit_first,1,baseline,unknown\r\n")
    parsed = rows(out)
    assert parsed[0] == {
        "id": "q", "objective": 'Fix "quoted", comma\nand newline', "unit_scope": "a/;b/",
        "constraints": "keep, all", "invariants": "",
        "proof_command": "python -m pytest -k 'a b'", "delivery_mode": "commit_first",
        "attempt": "2", "variant": "baseline", "budget_tier": "3"}


def test_a_slice_output_goes_straight_into_wave(tmp_path: Path) -> None:
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"plan": [{"step": "a", "unit_scope": "src/"},
                                          {"step": "b", "unit_scope": "src/x.py"},
                                          {"step": "c"}]}))
    sliced = wtmesh("slice", "--input-json", steps, cwd=tmp_path)
    (tmp_path / "units.json").write_text(sliced.stdout)
    res = wtmesh("wave", "--units-json", tmp_path / "units.json", "--csv-path",
                 tmp_path / "w.csv", "--max-active", "3", cwd=tmp_path)
    assert res.json()["selected_ids"] == ["unit-001"]  # unit-003's scope is ** (everything)
    assert res.json()["remaining_ids"] == ["unit-002", "unit-003"]


@pytest.mark.parametrize("content, needle", [
    ("[1, 2]", 'expected {"units": [...]}'),
    ('{"plan": []}', 'expected {"units": [...]}'),
    ('{"units": [3]}', "$.units[0]: expected a unit object, got int"),
    ('{"units": [{"objective": "x"}]}', "$.units[0].id: expected a non-empty string"),
    ('{"units": [{"id": "a"}, {"id": "a"}]}', "$.units[1].id: duplicate id 'a'"),
    ('{"units": [{"id": "a", "unit_scope": 7}]}', "$.units[0].unit_scope: expected a string"),
    ('{"units": [{"id": "a", "depends_on": "b"}]}', "$.units[0].depends_on: expected a list"),
    ('{"units": [{"id": "a", "test_first": 1}]}', "$.units[0].test_first: expected true or"),
    ("{", "not valid JSON"),
])
def test_bad_units_are_one_line_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "units.json").write_text(content)
    res = wtmesh("wave", "--units-json", tmp_path / "units.json", "--csv-path",
                 tmp_path / "w.csv", cwd=tmp_path)
    assert needle in one_error_line(res)
    assert not (tmp_path / "w.csv").exists()


def test_wave_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "units.json").write_text('{"units": []}')
    assert "Missing option '--csv-path'" in one_error_line(
        wtmesh("wave", "--units-json", tmp_path / "units.json", cwd=tmp_path))
    assert "Invalid value for '--max-active'" in one_error_line(
        wtmesh("wave", "--units-json", tmp_path / "units.json", "--csv-path", "w.csv",
               "--max-active", "0", cwd=tmp_path))
    assert "same file" in one_error_line(
        wtmesh("wave", "--units-json", tmp_path / "units.json", "--csv-path",
               tmp_path / "sub" / ".." / "units.json", cwd=tmp_path))
    assert "no such JSON file" in one_error_line(
        wtmesh("wave", "--units-json", tmp_path / "nope.json", "--csv-path", "w.csv",
               cwd=tmp_path))
    empty = wtmesh("wave", "--units-json", tmp_path / "units.json", "--csv-path", "w.csv",
                   cwd=tmp_path)
    assert empty.json()["units_selected"] == 0
    assert (tmp_path / "w.csv").read_bytes() == MESH_HEADER.encode() + b"\r\n"


# hypothesis: no wave ever holds two scopes that can touch one path.

SEGMENTS = ["src", "lib", "docs", "a.py", "b.py", "*.py", "c?.md", "**", "sub"]
LITERALS = ["src", "lib", "docs", "sub", "a.py", "b.py", "c1.md", "x.txt"]
PATHS = ["/".join(p) for n in range(1, 4) for p in itertools.product(LITERALS, repeat=n)]

patterns = st.builds(
    lambda parts, slash: "/".join(parts) + ("/" if slash else ""),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3), st.booleans())
scopes = st.one_of(st.lists(patterns, min_size=1, max_size=3),
                   st.lists(patterns, min_size=1, max_size=3).map("; ".join))


@st.composite
def unit_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 8))
    units: list[dict[str, Any]] = []
    for i in range(n):
        unit: dict[str, Any] = {"id": f"u{i}", "objective": "o"}
        if draw(st.integers(0, 5)):
            unit["unit_scope"] = draw(scopes)
        if i and draw(st.integers(0, 3)) == 0:
            unit["depends_on"] = [f"u{draw(st.integers(0, i - 1))}"]
        if draw(st.integers(0, 3)) == 0:
            unit["test_first"] = True
        units.append(unit)
    return units


@settings(max_examples=200, deadline=None)
@given(unit_lists(), st.integers(1, 8))
def test_no_wave_selects_overlapping_scopes(units: list[dict[str, Any]],
                                            max_active: int) -> None:
    chosen = wave.select(units, max_active)
    picked = [Scope.parse(u.get("unit_scope")) for u in chosen.selected]
    assert len(picked) <= max_active
    # Checked on real paths, independently of Scope.overlaps: no path is in two scopes.
    for path in PATHS:
        assert sum(scope.matches(path) for scope in picked) <= 1, path
    # Nothing was left out that could have gone in: the selection is greedy and in order.
    ids = [u["id"] for u in units]
    assert sorted(chosen.left + [u["id"] for u in chosen.selected]) == sorted(ids)
    if len(picked) < max_active:
        selected_ids = {u["id"] for u in chosen.selected}
        for unit in units:
            if unit["id"] in selected_ids:
                continue
            scope = Scope.parse(unit.get("unit_scope"))
            waits = any(d in ids for d in unit.get("depends_on", ()))
            assert waits or any(scope.overlaps(p) for p in picked), unit
    # A test-first unit free to start is only crowded out by test-first units or the units
    # they depend on.
    depends = {u["id"]: u.get("depends_on", []) for u in units}
    ahead = {u["id"] for u in units if u.get("test_first")}
    while grown := {d for uid in ahead for d in depends[uid]} - ahead:
        ahead |= grown
    for unit in units:
        if unit.get("test_first") and unit["id"] in chosen.left \
                and not any(d in ids for d in depends[unit["id"]]):
            scope = Scope.parse(unit.get("unit_scope"))
            overlapping = [u["id"] for u in chosen.selected
                           if Scope.parse(u.get("unit_scope")).overlaps(scope)]
            if not any(uid in ahead for uid in overlapping):  # then the slots were taken
                assert len(picked) == max_active, unit
                assert all(u["id"] in ahead for u in chosen.selected), unit
