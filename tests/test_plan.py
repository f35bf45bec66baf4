"""The plan file (SPEC section 2): every rule through ``wtmesh validate`` and ``wtmesh run``,
and the records ``worktree_mesh.plan.load`` builds."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, git, lane, repo_snapshot, state_dir, wtmesh

from worktree_mesh import plan as plan_mod
from worktree_mesh.errors import PlanError, UsageError

CODER = {"command": lane("act.py")}


def valid_plan(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"lanes": {"coder": copy.deepcopy(CODER)},
                            "units": [{"id": "u1", "objective": "Do one thing"}]}
    data.update(extra)
    return data




def error_lines(res: Result) -> list[str]:
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert lines, "no error reported"
    for line in lines:
        assert line.startswith("wtmesh: error: "), line
    return lines


def assert_reports(res: Result, plan: Path, expected: list[tuple[str, str]],
                   exact: bool = False) -> list[str]:
    """Exit 2, and for every (json path, fragment) a line
    ``wtmesh: error: <plan>: <json path>: ...fragment...``."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = error_lines(res)
    for path, fragment in expected:
        prefix = f"wtmesh: error: {plan}: {path}: "
        assert any(line.startswith(prefix) and fragment in line for line in lines), \
            f"no line {prefix}...{fragment}... in:\n{res.stderr}"
    if exact:
        assert len(lines) == len(expected), res.stderr
    return lines


def check_rejected(repo: Path, plan: Path, expected: list[tuple[str, str]],
                   exact: bool = False) -> None:
    """Both ``validate`` and ``run`` report every problem, exit 2 and change nothing."""
    before = repo_snapshot(repo)
    validated = wtmesh("validate", plan, cwd=repo)
    assert validated.stdout == ""
    lines = assert_reports(validated, plan, expected, exact)
    ran = wtmesh("run", plan, cwd=repo)
    assert ran.stdout == ""
    assert assert_reports(ran, plan, expected, exact) == lines
    after = repo_snapshot(repo)
    assert not after["state_dir"]
    assert after == before


def mutate(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = valid_plan()
    change(data)
    return data


def unit0(data: dict[str, Any]) -> dict[str, Any]:
    unit: dict[str, Any] = data["units"][0]
    return unit


# (id, plan, [(json path, fragment of the message)])
INVALID: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("unknown-plan-key", valid_plan(bogus=1), [("$.bogus", "unknown key 'bogus'")]),
    ("unknown-unit-key", mutate(lambda d: unit0(d).update(title="x")),
     [("$.units[0].title", "unknown key 'title'")]),
    ("unknown-lane-key", mutate(lambda d: d["lanes"]["coder"].update(cmd="x")),
     [("$.lanes.coder.cmd", "unknown key 'cmd'")]),
    ("unknown-unit-lane-key",
     mutate(lambda d: unit0(d).update(lanes={"coder": {"command": "x", "timeout": 5}})),
     [("$.units[0].lanes.coder.timeout", "unknown key 'timeout'")]),
    ("unknown-lane-name", mutate(lambda d: d["lanes"].update(reviewer=CODER)),
     [("$.lanes.reviewer", "unknown key 'reviewer'")]),
    ("unknown-setup-key", valid_plan(setup={"command": "true", "copy": [".env"]}),
     [("$.setup.copy", "unknown key 'copy'")]),
    ("missing-units", {"lanes": {"coder": CODER}}, [("$", "missing required key 'units'")]),
    ("empty-units", valid_plan(units=[]), [("$.units", "must not be empty")]),
    ("units-not-a-list", valid_plan(units={"id": "u1"}),
     [("$.units", "expected array, got dict")]),
    ("unit-not-an-object", valid_plan(units=["u1"]),
     [("$.units[0]", "expected object, got str")]),
    ("missing-id", valid_plan(units=[{"objective": "o"}]),
     [("$.units[0]", "missing required key 'id'")]),
    ("missing-objective", valid_plan(units=[{"id": "u1"}]),
     [("$.units[0]", "missing required key 'objective'")]),
    ("empty-objective", valid_plan(units=[{"id": "u1", "objective": ""}]),
     [("$.units[0].objective", "must not be empty")]),
    ("id-with-space", valid_plan(units=[{"id": "u 1", "objective": "o"}]),
     [("$.units[0].id", "'u 1' must match")]),
    ("id-with-slash", valid_plan(units=[{"id": "a/b", "objective": "o"}]),
     [("$.units[0].id", "'a/b' must match")]),
    ("id-with-newline", valid_plan(units=[{"id": "a\nb", "objective": "o"}]),
     [("$.units[0].id", "must match")]),
    # Python's ``$`` also matches before a final newline: the id must still be refused
    # (it would end up in ref names, paths and commit subjects).
    ("id-trailing-newline", valid_plan(units=[{"id": "u1\n", "objective": "o"}]),
     [("$.units[0].id", "'u1\\n' must match")]),
    ("id-empty", valid_plan(units=[{"id": "", "objective": "o"}]),
     [("$.units[0].id", "must match")]),
    ("id-not-a-string", valid_plan(units=[{"id": 7, "objective": "o"}]),
     [("$.units[0].id", "expected string, got int")]),
    ("duplicate-id", valid_plan(units=[{"id": "u1", "objective": "o"},
                                       {"id": "u2", "objective": "o"},
                                       {"id": "u1", "objective": "again"}]),
     [("$.units[2].id", "duplicate id 'u1' (also $.units[0])")]),
    ("unknown-dependency", valid_plan(units=[{"id": "u1", "objective": "o",
                                              "depends_on": ["u0"]}]),
     [("$.units[0].depends_on[0]", "unknown unit id 'u0'")]),
    ("self-dependency", valid_plan(units=[{"id": "u1", "objective": "o",
                                           "depends_on": ["u1"]}]),
     [("$.units[0].depends_on[0]", "cannot depend on itself")]),
    ("cycle-of-two", valid_plan(units=[
        {"id": "a", "objective": "o", "depends_on": ["b"]},
        {"id": "b", "objective": "o", "depends_on": ["a"]}]),
     [("$.units[0].depends_on", "dependency cycle a -> b -> a")]),
    ("cycle-of-three", valid_plan(units=[
        {"id": "free", "objective": "o"},
        {"id": "a", "objective": "o", "depends_on": ["free", "c"]},
        {"id": "b", "objective": "o", "depends_on": ["a"]},
        {"id": "c", "objective": "o", "depends_on": ["b"]}]),
     [("$.units[1].depends_on", "dependency cycle a -> c -> b -> a")]),
    ("bad-delivery-mode", valid_plan(delivery_mode="commit"),
     [("$.delivery_mode", "'commit' is not one of commit_first, patch_first")]),
    ("bad-unit-delivery-mode", mutate(lambda d: unit0(d).update(delivery_mode="later")),
     [("$.units[0].delivery_mode", "'later' is not one of commit_first, patch_first")]),
    ("bad-preset", valid_plan(lanes={"coder": {"preset": "chatgpt"}}),
     [("$.lanes.coder.preset", "'chatgpt' is not one of codex, claude")]),
    ("bad-fixer-preset", mutate(lambda d: d["lanes"].update(fixer={"preset": "gpt"})),
     [("$.lanes.fixer.preset", "'gpt' is not one of codex")]),
    ("bad-unit-preset", mutate(lambda d: unit0(d).update(lanes={"coder": {"preset": "x"}})),
     [("$.units[0].lanes.coder.preset", "'x' is not one of codex")]),
    ("negative-max-active", valid_plan(max_active=-1),
     [("$.max_active", "must be >= 1 (got -1)")]),
    ("zero-max-active", valid_plan(max_active=0), [("$.max_active", "must be >= 1 (got 0)")]),
    ("fractional-max-active", valid_plan(max_active=1.5),
     [("$.max_active", "expected integer, got float")]),
    ("negative-lane-timeout", mutate(lambda d: d["lanes"]["coder"].update(timeout_s=-1)),
     [("$.lanes.coder.timeout_s", "must be > 0 (got -1)")]),
    ("negative-unit-timeout", mutate(lambda d: unit0(d).update(timeout_s=-5)),
     [("$.units[0].timeout_s", "must be > 0 (got -5)")]),
    ("negative-retries", mutate(lambda d: d["lanes"]["coder"].update(retries=-1)),
     [("$.lanes.coder.retries", "must be >= 0 (got -1)")]),
    ("negative-fixer-retries",
     mutate(lambda d: d["lanes"].update(fixer={"command": "true", "retries": -2})),
     [("$.lanes.fixer.retries", "must be >= 0 (got -2)")]),
    ("negative-proof-timeout", valid_plan(proof_timeout_s=-3),
     [("$.proof_timeout_s", "must be > 0 (got -3)")]),
    ("negative-unit-proof-timeout", mutate(lambda d: unit0(d).update(proof_timeout_s=-0.5)),
     [("$.units[0].proof_timeout_s", "must be > 0 (got -0.5)")]),
    ("negative-attempt", mutate(lambda d: unit0(d).update(attempt=-1)),
     [("$.units[0].attempt", "must be >= 0 (got -1)")]),
    ("non-numeric-attempt", mutate(lambda d: unit0(d).update(attempt="2nd")),
     [("$.units[0].attempt", "'2nd' must match")]),
    ("attempt-trailing-newline", mutate(lambda d: unit0(d).update(attempt="2\n")),
     [("$.units[0].attempt", "must match")]),
    ("scope-parent", mutate(lambda d: unit0(d).update(unit_scope=["../x"])),
     [("$.units[0].unit_scope", "scope '../x' leaves the repository")]),
    ("scope-absolute", mutate(lambda d: unit0(d).update(unit_scope=["/etc"])),
     [("$.units[0].unit_scope", "scope '/etc' leaves the repository (absolute path)")]),
    ("scope-climbs-out", mutate(lambda d: unit0(d).update(unit_scope="src/;a/../../b")),
     [("$.units[0].unit_scope", "scope 'a/../../b' leaves the repository")]),
    ("scope-git-dir", mutate(lambda d: unit0(d).update(unit_scope=[".git/hooks/"])),
     [("$.units[0].unit_scope", "scope '.git/hooks/' enters .git/")]),
    ("scope-item-not-a-string", mutate(lambda d: unit0(d).update(unit_scope=["a", 3])),
     [("$.units[0].unit_scope[1]", "expected string, got int")]),
    ("copy-ignored-leaves-repo", valid_plan(setup={"copy_ignored": [".env", "../secrets"]}),
     [("$.setup.copy_ignored[1]", "path '../secrets' leaves the repository")]),
    ("version-2", valid_plan(version=2), [("$.version", "must be 1 (got 2)")]),
    ("version-string", valid_plan(version="1"), [("$.version", "must be 1 (got '1')")]),
    ("no-coder-lane", {"units": [{"id": "u1", "objective": "o"}]},
     [("$.units[0]", "no coder lane")]),
    ("fixer-only", {"lanes": {"fixer": CODER}, "units": [{"id": "u1", "objective": "o"}]},
     [("$.units[0]", "no coder lane")]),
    ("command-and-preset", valid_plan(lanes={"coder": {"command": "x", "preset": "codex"}}),
     [("$.lanes.coder", "give either command or preset, not both")]),
    ("unit-command-and-preset", mutate(lambda d: unit0(d).update(
        lanes={"fixer": {"command": "x", "preset": "claude"}})),
     [("$.units[0].lanes.fixer", "give either command or preset, not both")]),
    ("empty-command-list", valid_plan(lanes={"coder": {"command": []}}),
     [("$.lanes.coder.command", "must not be empty")]),
    ("proof-command-number", valid_plan(proof_command=5),
     [("$.proof_command", "got int")]),
    ("unit-label-differs", mutate(lambda d: unit0(d).update(delivery_mode="patch_first")),
     [("$.units[0].delivery_mode", "'patch_first' differs from the run's 'commit_first'")]),
    ("unit-label-differs-from-plan", valid_plan(delivery_mode="patch_first", units=[
        {"id": "u1", "objective": "o", "delivery_mode": "patch_first"},
        {"id": "u2", "objective": "o", "delivery_mode": "commit_first"}]),
     [("$.units[1].delivery_mode", "'commit_first' differs from the run's 'patch_first'")]),
    ("plan-not-an-object", "units",  # type: ignore[list-item]
     [("$", "expected object, got str")]),
    # consensus (SPEC 12)
    ("consensus-unknown-key", valid_plan(consensus={"variants": 2, "judges": []}),
     [("$.consensus.judges", "unknown key 'judges'")]),
    ("consensus-no-variants", valid_plan(consensus={"critics": []}),
     [("$.consensus", "missing required key 'variants'")]),
    ("consensus-zero-variants", valid_plan(consensus={"variants": 0}),
     [("$.consensus.variants", "")]),
    ("consensus-bad-select", valid_plan(consensus={"variants": 2, "select": "best"}),
     [("$.consensus.select", "'best' is not one of vote, first_passing")]),
    ("consensus-duplicate-variant",
     valid_plan(consensus={"variants": [{"name": "a"}, {"name": "a"}]}),
     [("$.consensus.variants[1].name", "duplicate variant 'a'")]),
    ("consensus-synthesis-name", valid_plan(consensus={"variants": [{"name": "synthesis"}]}),
     [("$.consensus.variants[0].name", "'synthesis' is the synthesizer's candidate")]),
    ("consensus-vote-without-critics", valid_plan(consensus={"variants": 2, "select": "vote"}),
     [("$.consensus.select", "'vote' needs critics")]),
    ("consensus-quorum-above-critics",
     valid_plan(consensus={"variants": 2, "critics": [{"command": "c"}], "quorum": 2}),
     [("$.consensus.quorum", "2 is more than the 1 critics")]),
    ("consensus-critic-without-command", valid_plan(consensus={"variants": 2, "critics": [{}]}),
     [("$.consensus.critics[0]", "give either command or preset")]),
    ("consensus-duplicate-critic",
     valid_plan(consensus={"variants": 2, "critics": [{"name": "x", "command": "c"},
                                                      {"name": "x", "command": "c"}]}),
     [("$.consensus.critics[1].name", "duplicate critic 'x'")]),
    ("consensus-synthesizer-without-critics",
     valid_plan(consensus={"variants": 2, "synthesizer": {"command": "s"}}),
     [("$.consensus.synthesizer", "give critics too")]),
    ("unit-consensus-variant-both",
     mutate(lambda d: unit0(d).update(consensus={"variants": [
         {"coder": {"command": "x", "preset": "claude"}}]})),
     [("$.units[0].consensus.variants[0].coder", "give either command or preset")]),
    # test-first units (SPEC 13)
    ("test-first-not-a-boolean", mutate(lambda d: unit0(d).update(test_first="yes")),
     [("$.units[0].test_first", "expected boolean, got str")]),
    ("test-first-without-proof", mutate(lambda d: unit0(d).update(test_first=True)),
     [("$.units[0].test_first", "a test-first unit needs a proof_command")]),
    ("test-first-proof-emptied", valid_plan(proof_command="pytest", units=[
        {"id": "t", "objective": "o", "test_first": True, "proof_command": ""},
        {"id": "n", "objective": "o", "test_first": True, "proof_command": None}]),
     [("$.units[0].test_first", "needs a proof_command (its own or the plan's)"),
      ("$.units[1].test_first", "needs a proof_command (its own or the plan's)")]),
    ("test-first-consensus", mutate(lambda d: unit0(d).update(
        test_first=True, proof_command="pytest", consensus={"variants": 2})),
     [("$.units[0].consensus", "a test-first unit cannot be a consensus unit")]),
    ("test-first-under-plan-consensus", valid_plan(
        proof_command="pytest", consensus={"variants": 2},
        units=[{"id": "t", "objective": "o", "test_first": True}]),
     [("$.units[0].consensus", 'cannot be a consensus unit (give it "consensus": null')]),
    ("implementation-consensus", valid_plan(proof_command="pytest", units=[
        {"id": "t", "objective": "o", "test_first": True},
        {"id": "i", "objective": "o", "depends_on": ["t"], "consensus": {"variants": 2}}]),
     [("$.units[1].consensus", "an implementation unit cannot be a consensus unit")]),
    ("implementation-under-plan-consensus", valid_plan(
        proof_command="pytest", consensus={"variants": 2},
        units=[{"id": "t", "objective": "o", "test_first": True, "consensus": None},
               {"id": "i", "objective": "o", "depends_on": ["t"]}]),
     [("$.units[1].consensus", "an implementation unit cannot be a consensus unit (give")]),
    ("test-first-on-test-first", valid_plan(proof_command="pytest", units=[
        {"id": "t1", "objective": "o", "test_first": True},
        {"id": "free", "objective": "o"},
        {"id": "t2", "objective": "o", "test_first": True, "depends_on": ["free", "t1"]}]),
     [("$.units[2].depends_on[1]", "cannot depend on another test-first unit ('t1')")]),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_plan_is_rejected_by_validate_and_run(
        repo: Path, write_plan: Callable[..., Path], data: Any,
        expected: list[tuple[str, str]]) -> None:
    check_rejected(repo, write_plan(data), expected, exact=True)


def test_every_problem_is_reported_at_once(repo: Path, write_plan: Callable[..., Path]) -> None:
    data = {
        "version": 3,
        "bogus": True,
        "delivery_mode": "now",
        "max_active": -2,
        "proof_timeout_s": -1,
        "lanes": {"coder": {"command": "x", "preset": "codex", "retries": -1, "zz": 0},
                  "fixer": {"preset": "nope"}},
        "setup": {"command": "true", "extra": 1},
        "units": [
            {"id": "a b", "objective": "o", "foo": 1, "timeout_s": -5,
             "unit_scope": ["../x", "/etc", "a/../../b", ".git/config"]},
            {"objective": "no id"},
            {"id": "c"},
            {"id": "d", "objective": "o", "depends_on": ["d", "nope"]},
            {"id": "d", "objective": "twice"},
            {"id": "e", "objective": "o", "depends_on": ["f"]},
            # A label next to an invalid run mode: only the mode is reported.
            {"id": "f", "objective": "o", "depends_on": ["e"], "delivery_mode": "patch_first"},
        ],
    }
    expected = [
        ("$.version", "must be 1 (got 3)"),
        ("$.bogus", "unknown key 'bogus'"),
        ("$.delivery_mode", "'now' is not one of"),
        ("$.max_active", "must be >= 1"),
        ("$.proof_timeout_s", "must be > 0"),
        ("$.lanes.coder", "give either command or preset, not both"),
        ("$.lanes.coder.retries", "must be >= 0"),
        ("$.lanes.coder.zz", "unknown key 'zz'"),
        ("$.lanes.fixer.preset", "'nope' is not one of"),
        ("$.setup.extra", "unknown key 'extra'"),
        ("$.units[0].id", "'a b' must match"),
        ("$.units[0].foo", "unknown key 'foo'"),
        ("$.units[0].timeout_s", "must be > 0"),
        ("$.units[0].unit_scope", "'../x' leaves the repository"),
        ("$.units[0].unit_scope", "'/etc' leaves the repository"),
        ("$.units[0].unit_scope", "'a/../../b' leaves the repository"),
        ("$.units[0].unit_scope", "'.git/config' enters .git/"),
        ("$.units[1]", "missing required key 'id'"),
        ("$.units[2]", "missing required key 'objective'"),
        ("$.units[3].depends_on[0]", "cannot depend on itself"),
        ("$.units[3].depends_on[1]", "unknown unit id 'nope'"),
        ("$.units[4].id", "duplicate id 'd'"),
        ("$.units[5].depends_on", "dependency cycle e -> f -> e"),
    ]
    check_rejected(repo, write_plan(data), expected, exact=True)


def test_plan_level_problem_is_reported_once_not_per_unit(
        repo: Path, write_plan: Callable[..., Path]) -> None:
    plan = write_plan(valid_plan(
        lanes={"coder": {"command": "x", "preset": "codex"}},
        units=[{"id": f"u{i}", "objective": "o"} for i in range(3)]))
    res = wtmesh("validate", plan, cwd=repo)
    assert error_lines(res) == [
        f"wtmesh: error: {plan}: $.lanes.coder: give either command or preset, not both"]


@pytest.mark.parametrize("payload", [
    {"plan": [{"step": "x", "status": "pending"}]},
    {"explanation": "why", "plan": [{"step": "x", "status": "in_progress"}]},
    {"steps": [{"step": "x", "status": "pending"}]},
])
def test_update_plan_payload_gets_a_slice_hint(repo: Path, write_plan: Callable[..., Path],
                                               payload: dict[str, Any]) -> None:
    plan = write_plan(payload)
    before = repo_snapshot(repo)
    for command in ("validate", "run"):
        res = wtmesh(command, plan, cwd=repo)
        assert res.returncode == 2
        (line,) = error_lines(res)
        assert line.startswith(f"wtmesh: error: {plan}: $: ")
        assert "update_plan" in line and "wtmesh slice" in line
    assert repo_snapshot(repo) == before


def test_a_json_list_is_not_a_plan(repo: Path, write_plan: Callable[..., Path],
                                   tmp_path: Path) -> None:
    plan = tmp_path / "steps.json"
    plan.write_text(json.dumps([{"step": "x", "status": "pending"}]))
    before = repo_snapshot(repo)
    for command in ("validate", "run"):
        res = wtmesh(command, plan, cwd=repo)
        assert res.returncode == 2
        (line,) = error_lines(res)
        assert line.startswith(f"wtmesh: error: {plan}: $: ")
        assert "got a list" in line and "wtmesh slice" in line
    assert repo_snapshot(repo) == before


@pytest.mark.parametrize(("text", "where"), [
    ('{\n  "units": [\n    {"id": "u1",}\n  ]\n}\n', "line 3 column 17"),
    ('{"units": [', "line 1 column 12"),
    ("", "line 1 column 1"),
    ('{"units": []}\n{"units": []}\n', "line 2 column 1"),
])
def test_invalid_json_gives_line_and_column(repo: Path, tmp_path: Path, text: str,
                                            where: str) -> None:
    plan = tmp_path / "broken.json"
    plan.write_text(text)
    before = repo_snapshot(repo)
    for command in ("validate", "run"):
        res = wtmesh(command, plan, cwd=repo)
        assert res.returncode == 2
        (line,) = error_lines(res)
        assert line.startswith(f"wtmesh: error: {plan}: not valid JSON: {where}: ")
    assert repo_snapshot(repo) == before


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda tmp: tmp / "missing.json", "no such plan file"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: (tmp / "latin1.json", (tmp / "latin1.json").write_bytes(
        b'{"units": [{"id": "u1", "objective": "caf\xe9"}]}'))[0], "not UTF-8"),
])
def test_unreadable_plan_file(repo: Path, tmp_path: Path, make: Callable[[Path], Path],
                              fragment: str) -> None:
    plan = make(tmp_path)
    before = repo_snapshot(repo)
    for command in ("validate", "run"):
        res = wtmesh(command, plan, cwd=repo)
        assert res.returncode == 2
        (line,) = error_lines(res)
        assert line.startswith(f"wtmesh: error: {plan}: ") and fragment in line
    assert repo_snapshot(repo) == before


def test_a_plan_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"\xef\xbb\xbf" + json.dumps({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "true"}}}]}).encode())
    assert [u.id for u in plan_mod.load(plan).units] == ["u1"]


def test_delivery_option_conflicting_with_a_unit_label(
        repo: Path, write_plan: Callable[..., Path]) -> None:
    """The plan alone is valid; ``--delivery patch_first`` makes the unit's
    ``commit_first`` label disagree with the run."""
    plan = write_plan(valid_plan(units=[
        {"id": "u1", "objective": "o", "delivery_mode": "commit_first"},
        {"id": "u2", "objective": "o"}]))
    assert wtmesh("validate", plan, cwd=repo).returncode == 0
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, "--delivery", "patch_first", cwd=repo)
    assert res.returncode == 2
    (line,) = error_lines(res)
    assert line == (f"wtmesh: error: {plan.resolve()}: $.units[0].delivery_mode: unit 'u1' "
                    "says 'commit_first' but the run delivers 'patch_first' (from --delivery)")
    after = repo_snapshot(repo)
    assert not after["state_dir"]
    assert after == before


# -- valid plans ---------------------------------------------------------------------------


def test_valid_plan_prints_one_ok_line(repo: Path, write_plan: Callable[..., Path]) -> None:
    plan = write_plan(valid_plan(units=[{"id": "u1", "objective": "o"},
                                        {"id": "u2", "objective": "o"}]))
    before = repo_snapshot(repo)
    res = wtmesh("validate", plan, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert res.stdout.count("\n") == 1
    assert str(plan) in res.stdout and "valid" in res.stdout and "2 units" in res.stdout
    assert repo_snapshot(repo) == before


def test_validate_needs_no_repository(tmp_path: Path, write_plan: Callable[..., Path]) -> None:
    plan = write_plan(valid_plan())
    outside = tmp_path / "outside"
    outside.mkdir()
    res = wtmesh("validate", plan, cwd=outside, env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert res.returncode == 0, res.stderr


def test_test_first_units_that_are_valid(write_plan: Callable[..., Path]) -> None:
    """The plan's proof serves; a unit may opt out of the plan's consensus; a test-first
    unit may depend on an ordinary unit and have no implementation unit at all."""
    loaded = plan_mod.load(write_plan(valid_plan(
        proof_command="pytest", consensus={"variants": 2}, units=[
            {"id": "base", "objective": "o", "consensus": None},
            {"id": "tests", "objective": "o", "test_first": True, "consensus": None,
             "unit_scope": "tests/", "depends_on": ["base"]},
            {"id": "impl", "objective": "o", "depends_on": ["tests"], "consensus": None},
            {"id": "alone", "objective": "o", "test_first": True, "consensus": None,
             "proof_command": ["pytest", "-q"]},
            {"id": "impl2", "objective": "o", "depends_on": ["base", "tests"],
             "test_first": False, "consensus": None}])))
    units = {u.id: u for u in loaded.units}
    assert [uid for uid, u in units.items() if u.test_first] == ["tests", "alone"]
    assert units["tests"].as_record()["test_first"] is True
    assert units["impl"].as_record()["test_first"] is False
    assert units["tests"].proof_command == "pytest"
    assert [u.id for u in plan_mod.implementation_units(loaded.units, "tests")] == ["impl", "impl2"]
    assert plan_mod.implementation_units(loaded.units, "alone") == []
    assert [u.id for u in plan_mod.implementation_units(loaded.units, "base")] == ["tests", "impl2"]


def test_full_spec_example_is_valid(tmp_path: Path, write_plan: Callable[..., Path]) -> None:
    data = {
        "version": 1,
        "base": "HEAD",
        "target": "main",
        "delivery_mode": "commit_first",
        "proof_command": "python -m pytest -q",
        "proof_timeout_s": 120,
        "max_active": 4,
        "lanes": {
            "coder": {"command": "my-agent --task \"$WTMESH_UNIT_JSON\"", "timeout_s": 900,
                      "retries": 1, "env": {"A": "1"}},
            "fixer": {"command": ["python", "{plan_dir}/review.py"], "timeout_s": 600},
        },
        "setup": {"command": "ln -s {repo}/.venv .venv", "copy_ignored": [".env"]},
        "units": [{
            "id": "u-001",
            "objective": "Treat trailing commas as invalid",
            "unit_scope": ["src/parser.py", "tests/test_parser.py"],
            "constraints": "Do not change public API",
            "invariants": "Reject invalid input at boundary",
            "proof_command": "python -m pytest -q tests/test_parser.py",
            "depends_on": [],
            "lanes": {"coder": {"preset": "claude", "model": "m", "max_turns": 5,
                                "args": ["--x"]}},
            "delivery_mode": "commit_first", "attempt": 1, "variant": "a", "budget_tier": "low",
        }, {"id": "u.2_B-c", "objective": "o", "depends_on": ["u-001"],
            "lanes": {"fixer": None}}],
    }
    plan = write_plan(data)
    res = wtmesh("validate", plan, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    loaded = plan_mod.load(plan)
    first, second = loaded.units
    assert first.coder.preset == "claude" and first.coder.command is None
    assert first.coder.options == {"model": "m", "max_turns": 5, "args": ["--x"]}
    assert first.coder.timeout_s == 900 and first.coder.env == {"A": "1"}
    assert first.fixer is not None and first.fixer.command == ("python", "{plan_dir}/review.py")
    assert second.fixer is None
    assert loaded.setup.command == "ln -s {repo}/.venv .venv"
    assert loaded.setup.copy_ignored == (".env",)
    assert (loaded.base, loaded.target, loaded.max_active) == ("HEAD", "main", 4)


def test_defaults(write_plan: Callable[..., Path]) -> None:
    loaded = plan_mod.load(write_plan(valid_plan()))
    assert loaded.version == 1
    assert loaded.base is None and loaded.target is None
    assert loaded.delivery_mode == "commit_first"
    assert loaded.max_active == 2
    assert loaded.proof_command is None
    assert loaded.setup.command is None and loaded.setup.copy_ignored == ()
    (unit,) = loaded.units
    assert unit.scope.patterns == ("**",) and unit.scope.is_everything
    assert unit.proof_command is None
    assert unit.proof_timeout_s == 1800
    assert unit.depends_on == ()
    assert unit.constraints == "" and unit.invariants == ""
    assert unit.fixer is None
    assert unit.coder.command == tuple(CODER["command"])
    assert unit.coder.retries == 1 and unit.coder.timeout_s == 1800
    assert unit.labels == {}
    assert unit.as_record()["unit_scope"] == ["**"]


def test_defaults_in_a_real_run(repo: Path, write_plan: Callable[..., Path]) -> None:
    """No delivery mode, max_active, proof, scope, target or base given: commit_first on
    the checked-out branch from its tip, two at a time, whole repository, proof skipped."""
    base = git(repo, "rev-parse", "HEAD")
    coder = lane("act.py", "write:deep/er/new.txt=x\\n", "append:calc/ops.py=# more\\n")
    plan = write_plan({"lanes": {"coder": {"command": coder}},
                       "units": [{"id": "u1", "objective": "Touch two places"}]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert summary["delivery_mode"] == "commit_first" and summary["target"] == "main"
    assert summary["base"] == base and summary["patch_dir"] is None
    assert summary["units"][0]["status"] == "integrated"
    assert git(repo, "rev-parse", "main") == summary["head"] != base
    ledger = state_dir(repo) / "runs" / summary["run_id"] / "ledger.jsonl"
    events = [json.loads(line) for line in ledger.read_text().splitlines()]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["max_active"] == 2
    proofs = [e for e in events if e["event"] == "proof_finished"]
    assert [p["status"] for p in proofs] == ["skipped"]


@pytest.mark.parametrize(("scope", "patterns"), [
    ("src/a.py;src/b.py", ("src/a.py", "src/b.py")),
    ("src/a.py, docs/ ; tests/*.py", ("src/a.py", "docs/", "tests/*.py")),
    ("calc/", ("calc/",)),
    (["x/", "y.txt"], ("x/", "y.txt")),
    ("unknown", ("**",)),
    (["unknown"], ("**",)),
    ("", ("**",)),
    ([], ("**",)),
])
def test_unit_scope_forms(write_plan: Callable[..., Path], scope: str | list[str],
                          patterns: tuple[str, ...]) -> None:
    loaded = plan_mod.load(write_plan(valid_plan(units=[
        {"id": "u1", "objective": "o", "unit_scope": scope}])))
    assert loaded.units[0].scope.patterns == patterns


def test_string_scope_is_enforced_as_split(repo: Path, write_plan: Callable[..., Path]) -> None:
    """``"a.txt;b.txt"`` in a real run: writing both is fine, a third file is not."""
    plan = write_plan({"lanes": {"coder": {"command": lane("act.py")}}, "units": [
        {"id": "ok", "objective": "o", "unit_scope": "a.txt;b.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:a.txt=1", "write:b.txt=2")}}},
        {"id": "stray", "objective": "o", "unit_scope": "c.txt, d.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:c.txt=1", "write:e.txt=2")}}},
    ]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    states = {u["id"]: (u["status"], u["failure_code"]) for u in res.json()["units"]}
    assert states == {"ok": ("integrated", None), "stray": ("failed", "scope_violation")}


def test_unit_overrides_plan(write_plan: Callable[..., Path]) -> None:
    loaded = plan_mod.load(write_plan({
        "proof_command": "plan-proof",
        "proof_timeout_s": 100,
        "lanes": {"coder": {"command": "plan-coder", "timeout_s": 60, "retries": 3,
                            "env": {"K": "plan"}},
                  "fixer": {"command": ["plan-fixer"], "timeout_s": 50}},
        "units": [
            {"id": "inherits", "objective": "o"},
            {"id": "overrides", "objective": "o", "proof_command": ["unit", "proof"],
             "proof_timeout_s": 7, "timeout_s": 30,
             "lanes": {"coder": {"command": "unit-coder"}}},
            {"id": "lane-timeout", "objective": "o", "timeout_s": 30,
             "lanes": {"coder": {"timeout_s": 10}, "fixer": {"preset": "codex"}}},
            {"id": "no-proof-no-fixer", "objective": "o", "proof_command": None,
             "lanes": {"fixer": None}},
            {"id": "empty-proof", "objective": "o", "proof_command": ""},
        ]}))
    units = {u.id: u for u in loaded.units}

    inherits = units["inherits"]
    assert inherits.proof_command == "plan-proof" and inherits.proof_timeout_s == 100
    assert inherits.coder.command == "plan-coder" and inherits.coder.timeout_s == 60
    assert inherits.coder.retries == 3 and inherits.coder.env == {"K": "plan"}
    assert inherits.fixer is not None
    assert inherits.fixer.command == ("plan-fixer",) and inherits.fixer.timeout_s == 50

    over = units["overrides"]
    assert over.proof_command == ("unit", "proof") and over.proof_timeout_s == 7
    assert over.coder.command == "unit-coder"
    # A unit's timeout_s bounds its lanes; what the unit's lane does not say comes
    # from the plan's lane.
    assert over.coder.timeout_s == 30 and over.coder.retries == 3
    assert over.coder.env == {"K": "plan"}
    assert over.fixer is not None and over.fixer.timeout_s == 30
    assert over.as_record()["proof_command"] == ["unit", "proof"]

    lane_timeout = units["lane-timeout"]
    assert lane_timeout.coder.command == "plan-coder" and lane_timeout.coder.timeout_s == 10
    assert lane_timeout.fixer is not None
    assert lane_timeout.fixer.preset == "codex" and lane_timeout.fixer.command is None
    assert lane_timeout.fixer.timeout_s == 30

    assert units["no-proof-no-fixer"].proof_command is None
    assert units["no-proof-no-fixer"].fixer is None
    assert units["empty-proof"].proof_command is None
    assert loaded.proof_command == "plan-proof"


def test_unit_lanes_override_in_a_real_run(repo: Path, write_plan: Callable[..., Path],
                                           tmp_path: Path) -> None:
    plan = write_plan({"lanes": {"coder": {"command": lane("act.py", "write:plan.txt=p\\n")}},
                       "proof_command": "test ! -e x.txt",
                       "units": [
        {"id": "own", "objective": "o", "proof_command": None,
         "lanes": {"coder": {"command": lane("act.py", "write:own.txt=o\\n")}}},
        {"id": "plan-lane", "objective": "o", "proof_command": lane("act.py")},
        {"id": "plan-proof", "objective": "o", "unit_scope": "x.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:x.txt=x\\n")}}},
    ]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    states = {u["id"]: (u["status"], u["failure_code"], u["files"])
              for u in res.json()["units"]}
    assert states == {"own": ("integrated", None, ["own.txt"]),
                      "plan-lane": ("integrated", None, ["plan.txt"]),
                      "plan-proof": ("failed", "proof_failed", ["x.txt"])}


@pytest.mark.parametrize("attempt", [0, 2, "3", "10"])
def test_attempt_integer_or_numeric_string(write_plan: Callable[..., Path],
                                           attempt: int | str) -> None:
    loaded = plan_mod.load(write_plan(valid_plan(units=[
        {"id": "u1", "objective": "o", "attempt": attempt, "variant": "v",
         "budget_tier": 2, "delivery_mode": "commit_first"}])))
    unit = loaded.units[0]
    assert unit.labels == {"attempt": attempt, "variant": "v", "budget_tier": 2,
                           "delivery_mode": "commit_first"}
    assert unit.as_record()["attempt"] == attempt


def test_load_raises_plan_error_with_every_problem(write_plan: Callable[..., Path]) -> None:
    plan = write_plan({"units": [{"id": "u1"}, {"id": "u1", "objective": "o"}]})
    with pytest.raises(PlanError) as info:
        plan_mod.load(plan)
    assert info.value.exit_code == 2
    assert info.value.lines() == [
        f"{plan}: $.units[0]: missing required key 'objective'",
        f"{plan}: $.units[1].id: duplicate id 'u1' (also $.units[0])",
        (f"{plan}: $.units[0]: no coder lane: give lanes.coder.command (or preset) "
        "in the plan or the unit"),
        (f"{plan}: $.units[1]: no coder lane: give lanes.coder.command (or preset) "
        "in the plan or the unit"),
    ]


def test_load_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        plan_mod.load(tmp_path / "nope.json")
    assert info.value.exit_code == 2
    assert not isinstance(info.value, PlanError)


def test_load_records_the_resolved_path(tmp_path: Path, write_plan: Callable[..., Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_plan(valid_plan())
    monkeypatch.chdir(tmp_path)
    loaded = plan_mod.load(Path("plan.json"))
    assert loaded.path == tmp_path.resolve() / "plan.json"
    assert loaded.plan_dir == tmp_path.resolve()
    assert loaded.unit("u1").objective == "Do one thing"


# -- integration order ---------------------------------------------------------------------


def order_of(write_plan: Callable[..., Path], units: list[dict[str, Any]]) -> list[str]:
    loaded = plan_mod.load(write_plan(valid_plan(units=units)))
    return [u.id for u in plan_mod.integration_order(loaded)]


def u(uid: str, *deps: str) -> dict[str, Any]:
    return {"id": uid, "objective": "o", "depends_on": list(deps)}


def test_integration_order_is_plan_order_without_dependencies(
        write_plan: Callable[..., Path]) -> None:
    assert order_of(write_plan, [u("c"), u("a"), u("b")]) == ["c", "a", "b"]


def test_integration_order_moves_dependencies_first(write_plan: Callable[..., Path]) -> None:
    assert order_of(write_plan, [u("b", "a"), u("a")]) == ["a", "b"]
    assert order_of(write_plan, [u("a", "c"), u("b"), u("c")]) == ["b", "c", "a"]
    assert order_of(write_plan, [u("d", "c"), u("c", "b"), u("b", "a"), u("a")]) == \
        ["a", "b", "c", "d"]
    assert order_of(write_plan, [u("x"), u("top", "y", "x"), u("y"), u("z")]) == \
        ["x", "y", "top", "z"]


def test_integration_order_is_stable_around_a_moved_unit(
        write_plan: Callable[..., Path]) -> None:
    order = order_of(write_plan, [u("p"), u("q", "s"), u("r"), u("s"), u("t")])
    assert order == ["p", "r", "s", "q", "t"]
    # Every unit after its dependencies, the others in plan order.
    assert order.index("s") < order.index("q")
    assert [x for x in order if x != "q"] == ["p", "r", "s", "t"]


def tf(uid: str, *deps: str) -> dict[str, Any]:
    return {**u(uid, *deps), "test_first": True}


def ahead_order(write_plan: Callable[..., Path], units: list[dict[str, Any]]) -> list[str]:
    loaded = plan_mod.load(write_plan(valid_plan(proof_command="true", units=units)))
    return [unit.id for unit in plan_mod.integration_order(loaded)]


def test_integration_order_moves_test_first_groups_ahead_whole(
        write_plan: Callable[..., Path]) -> None:
    """A group lands as one: its members come together, ahead of the rest."""
    assert ahead_order(write_plan, [u("a"), tf("t"), u("i", "t"), u("b")]) == \
        ["t", "i", "a", "b"]
    # What a group's members depend on comes along, ahead of it; the rest keep their order.
    assert ahead_order(write_plan, [u("a"), u("b"), tf("t", "c"), u("c", "b"),
                                    tf("s"), u("i", "t", "d"), u("d"), u("j", "s")]) == \
        ["b", "c", "d", "t", "i", "s", "j", "a"]
    # Without test-first units it is the integration order.
    units = [u("p"), u("q", "s"), u("r"), u("s"), u("t")]
    assert ahead_order(write_plan, units) == order_of(write_plan, units)


def test_nan_and_infinity_are_not_json(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"units": [{"id": "u1", "objective": "o", "lanes": {"coder": '
                    '{"command": "true", "timeout_s": NaN}}}]}')
    with pytest.raises(UsageError) as info:
        plan_mod.load(plan)
    assert info.value.lines() == [f"{plan}: not valid JSON: NaN is not a JSON number"]
