"""The plan file: load, validate (every problem, each with its JSON path), and records.

The shape lives in ``plan.schema.json`` (published with the package so editors can check
plan files); the rules that span fields — unique ids, known and acyclic dependencies,
scopes that stay inside the repository — live here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PlanError
from .jsonfile import read_json
from .presets import PRESET_OPTIONS, option_problem
from .scope import Scope, pattern_problem, split_scope

if TYPE_CHECKING:  # jsonschema is imported when a plan is checked: commands start faster
    from jsonschema.exceptions import ValidationError

DELIVERY_MODES = ("commit_first", "patch_first")
LANE_NAMES = ("coder", "fixer")
DEFAULT_MAX_ACTIVE = 2
DEFAULT_REBASE_RETRIES = 2
DEFAULT_LANE_TIMEOUT_S = 1800.0
DEFAULT_PROOF_TIMEOUT_S = 1800.0
DEFAULT_RETRIES = 1
MESH_LABELS = ("delivery_mode", "attempt", "variant", "budget_tier")

Command = str | tuple[str, ...]

UPDATE_PLAN_HINT = ("$: this is an update_plan payload, not a wtmesh plan; `wtmesh slice "
                    "--input-json FILE --output-json plan.json` turns it into units")
STEP_LIST_HINT = ("$: expected a plan object with \"units\", got a list (a step list? "
                  "`wtmesh slice` turns it into units)")


@dataclass(frozen=True)
class LaneSpec:
    name: str
    command: Command | None
    preset: str | None
    timeout_s: float
    retries: int
    env: Mapping[str, str] = field(default_factory=dict)
    # Preset options (model, max_turns, max_budget_usd, args) as given.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetupSpec:
    command: Command | None
    copy_ignored: tuple[str, ...]


SELECT_MODES = ("vote", "first_passing", "smallest", "manual")
SYNTHESIS = "synthesis"  # the synthesizer's candidate
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class Variant:
    """One way of trying a consensus unit: its own coder and fixer, an objective with a
    suffix, environment for both lanes (``WTMESH_VARIANT`` is its name)."""

    name: str
    coder: LaneSpec
    fixer: LaneSpec | None
    objective_suffix: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Consensus:
    """Several proposals, critics and a vote (SPEC 12). ``critics`` are named lanes."""

    variants: tuple[Variant, ...]
    critics: tuple[tuple[str, LaneSpec], ...]
    synthesizer: LaneSpec | None
    quorum: int
    rounds: int
    select: str


@dataclass(frozen=True)
class Unit:
    id: str
    objective: str
    scope: Scope
    constraints: str
    invariants: str
    proof_command: Command | None
    proof_timeout_s: float
    depends_on: tuple[str, ...]
    coder: LaneSpec
    fixer: LaneSpec | None
    labels: Mapping[str, Any]
    raw: Mapping[str, Any]
    consensus: Consensus | None = None
    # Writes tests that pin the proof before its implementation units (SPEC 13).
    test_first: bool = False

    def as_record(self) -> dict[str, Any]:
        """The unit with all its fields resolved: what lanes read from WTMESH_UNIT_JSON."""
        record: dict[str, Any] = {
            "id": self.id,
            "objective": self.objective,
            "unit_scope": list(self.scope.patterns),
            "constraints": self.constraints,
            "invariants": self.invariants,
            "proof_command": _command_json(self.proof_command),
            "proof_timeout_s": self.proof_timeout_s,
            "depends_on": list(self.depends_on),
            "test_first": self.test_first,
        }
        record.update(self.labels)
        return record


@dataclass(frozen=True)
class Plan:
    path: Path
    version: int
    base: str | None
    target: str | None
    delivery_mode: str
    proof_command: Command | None
    max_active: int
    setup: SetupSpec
    units: tuple[Unit, ...]
    raw: Mapping[str, Any]
    sandbox: str | None = None  # auto | bwrap | none; None: not said (auto)
    # Paths lanes and proofs may also write when sandboxed, as written: {repo},
    # {plan_dir} and ~ are expanded when the run knows the repository.
    sandbox_writable: tuple[str, ...] = ()
    max_cost_usd: float | None = None  # once the run has spent it, no new lane starts
    overlap: str = "serialize"  # serialize | optimistic (SPEC 14)
    rebase_retries: int = DEFAULT_REBASE_RETRIES  # reruns of a conflicting unit (optimistic)

    @property
    def plan_dir(self) -> Path:
        return self.path.parent

    def unit(self, unit_id: str) -> Unit:
        return next(u for u in self.units if u.id == unit_id)


def _command_json(command: Command | None) -> str | list[str] | None:
    return list(command) if isinstance(command, tuple) else command


@cache
def schema() -> dict[str, Any]:
    text = resources.files("worktree_mesh").joinpath("plan.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _json_path(parts: Sequence[str | int]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: ValidationError) -> list[str]:
    """One line per schema problem, phrased for people."""
    path = list(error.absolute_path)
    where = _json_path(path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        return [f"{_json_path([*path, key])}: unknown key {key!r}"
                for key in error.instance if key not in allowed]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [f"{where}: missing required key {missing!r}"]
    if error.validator == "oneOf" and error.context:
        # Describe the alternative the value has the shape of (a lane object with a bad
        # preset), not "expected null" from one it was never meant for.
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        for subs in branches.values():
            if not any(_wrong_type(sub) for sub in subs):
                return [line for sub in subs for line in _describe(sub)]
        expected = " or ".join(dict.fromkeys(_expected_types(error)))
        if expected:
            return [f"{where}: expected {expected}, got {type(error.instance).__name__}"]
        from jsonschema.exceptions import best_match

        return _describe(best_match(error.context))
    if error.validator == "enum":
        allowed_values = ", ".join(map(str, error.validator_value))
        return [f"{where}: {error.instance!r} is not one of {allowed_values}"]
    if error.validator == "const":
        return [f"{where}: must be {error.validator_value!r} (got {error.instance!r})"]
    if error.validator in ("minimum", "exclusiveMinimum"):
        op = ">=" if error.validator == "minimum" else ">"
        return [f"{where}: must be {op} {error.validator_value} (got {error.instance!r})"]
    if error.validator == "minItems" and error.validator_value == 1:
        return [f"{where}: must not be empty"]
    if error.validator == "minLength":
        return [f"{where}: must not be empty"]
    if error.validator == "pattern":
        # The schema's description spells the pattern for people; the regex itself
        # carries an anchor trick ($(?!\n)) that would only confuse.
        wanted = error.schema.get("description", error.validator_value)
        return [f"{where}: {error.instance!r} must match {wanted}"]
    if error.validator == "type":
        return [f"{where}: expected {error.validator_value}, got {type(error.instance).__name__}"]
    return [f"{where}: {error.message}"]


def _wrong_type(error: ValidationError) -> bool:
    """The value is not of the type this (sub)schema wants at all."""
    if error.relative_path:
        return False
    if error.validator == "type":
        return True
    if error.validator == "const":
        return type(error.instance) is not type(error.validator_value)
    if error.validator == "oneOf" and error.context:
        return all(_wrong_type(sub) for sub in error.context)
    return False


def _expected_types(error: ValidationError) -> list[str]:
    out: list[str] = []
    for sub in error.context or []:
        if sub.validator == "type":
            out.append(str(sub.validator_value))
        elif sub.validator == "const":
            out.append(repr(sub.validator_value))
        elif sub.validator == "oneOf":
            out.extend(_expected_types(sub))
    return out


def _dependency_cycles(depends: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each cycle once, as the ids along it."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in depends.get(node, ()):
            if dep not in depends:
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in depends:
        if node not in state:
            visit(node)
    return cycles


def problems(data: Any) -> list[str]:
    """Every problem of a parsed plan, each line starting with its JSON path."""
    if isinstance(data, dict) and "units" not in data and isinstance(
            data.get("plan", data.get("steps")), list):
        return [UPDATE_PLAN_HINT]
    if isinstance(data, list):
        return [STEP_LIST_HINT]
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    found: list[str] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        found.extend(_describe(error))
    if not isinstance(data, dict):
        return found or ["$: expected a JSON object"]
    units = data.get("units")
    units = units if isinstance(units, list) else []
    ids: dict[str, int] = {}
    depends: dict[str, list[str]] = {}
    for index, unit in enumerate(units):
        if not isinstance(unit, dict) or not isinstance(unit.get("id"), str):
            continue
        uid = unit["id"]
        if uid in ids:
            found.append(f"$.units[{index}].id: duplicate id {uid!r} "
                         f"(also $.units[{ids[uid]}])")
        else:
            ids[uid] = index
    for index, unit in enumerate(units):
        if not isinstance(unit, dict):
            continue
        where = f"$.units[{index}]"
        deps = unit.get("depends_on")
        if isinstance(deps, list) and isinstance(unit.get("id"), str):
            depends.setdefault(unit["id"], [d for d in deps if isinstance(d, str)])
            for j, dep in enumerate(deps):
                if isinstance(dep, str) and dep not in ids:
                    found.append(f"{where}.depends_on[{j}]: unknown unit id {dep!r}")
                elif dep == unit["id"]:
                    found.append(f"{where}.depends_on[{j}]: a unit cannot depend on itself")
        scope = unit.get("unit_scope")
        if isinstance(scope, (str, list)) and all(isinstance(s, str) for s in scope):
            for pattern in split_scope(scope):
                problem = pattern_problem(pattern)
                if problem:
                    found.append(f"{where}.unit_scope: {problem}")
        mode = unit.get("delivery_mode")
        plan_mode = data.get("delivery_mode", "commit_first")
        if (isinstance(mode, str) and mode in DELIVERY_MODES and plan_mode in DELIVERY_MODES
                and mode != plan_mode):
            found.append(f"{where}.delivery_mode: {mode!r} differs from the run's {plan_mode!r}")
        found.extend(_lane_problems(data.get("lanes"), unit.get("lanes"), where,
                                    variants_code=_variants_name_coders(data, unit)))
        found.extend(_consensus_problems(data.get("consensus"), unit, where))
        if unit.get("test_first") is True:
            found.extend(_test_first_problems(data, unit, where, units))
        else:
            found.extend(_implementation_problems(data, unit, where, units))
    found.extend(_sandbox_writable_problems(data.get("sandbox_writable")))
    for cycle in _dependency_cycles(depends):
        if len(cycle) == 2:
            continue  # a unit depending on itself, reported above
        found.append(f"$.units[{ids[cycle[0]]}].depends_on: dependency cycle "
                     + " -> ".join(cycle))
    setup = data.get("setup")
    if isinstance(setup, dict):
        copies = setup.get("copy_ignored")
        for j, item in enumerate([copies] if isinstance(copies, str) else copies or []):
            if isinstance(item, str):
                problem = pattern_problem(item)
                if problem:
                    found.append(f"$.setup.copy_ignored[{j}]: "
                                 + problem.replace("scope", "path"))
    return found


def _consensus_problems(plan_consensus: Any, unit: Mapping[str, Any], where: str) -> list[str]:
    """The rules of a unit's consensus (its own, else the plan's) that span its fields."""
    if "consensus" in unit:
        spec, path = unit["consensus"], f"{where}.consensus"
    else:
        spec, path = plan_consensus, "$.consensus"
    if not isinstance(spec, dict):
        return []
    out: list[str] = []
    variants = spec.get("variants")
    names: dict[str, str] = {}
    for j, variant in enumerate(variants if isinstance(variants, list) else []):
        for lane_name in LANE_NAMES:
            lane = variant.get(lane_name) if isinstance(variant, dict) else None
            if isinstance(lane, dict) and "command" in lane and "preset" in lane:
                out.append(f"{path}.variants[{j}].{lane_name}: give either command or "
                           "preset, not both")
        name = variant.get("name") if isinstance(variant, dict) else None
        if not isinstance(name, str):
            continue
        if name == SYNTHESIS:
            out.append(f"{path}.variants[{j}].name: {SYNTHESIS!r} is the synthesizer's "
                       "candidate; give the variant another name")
        elif name in names:
            out.append(f"{path}.variants[{j}].name: duplicate variant {name!r} "
                       f"(also {names[name]})")
        else:
            names[name] = f"{path}.variants[{j}]"
    critics = spec.get("critics")
    critics = critics if isinstance(critics, list) else []
    seen: dict[str, int] = {}
    for j, critic in enumerate(critics):
        if not isinstance(critic, dict):
            continue
        lane_path = f"{path}.critics[{j}]"
        if ("command" in critic) == ("preset" in critic):
            out.append(f"{lane_path}: give either command or preset")
        name = critic.get("name", f"critic{j + 1}")
        if isinstance(name, str) and name in seen:
            out.append(f"{lane_path}.name: duplicate critic {name!r} "
                       f"(also {path}.critics[{seen[name]}])")
        elif isinstance(name, str):
            seen[name] = j
    synthesizer = spec.get("synthesizer")
    if isinstance(synthesizer, dict):
        if ("command" in synthesizer) == ("preset" in synthesizer):
            out.append(f"{path}.synthesizer: give either command or preset")
        if not critics:
            out.append(f"{path}.synthesizer: a synthesizer works from the critics' "
                       "verdicts; give critics too")
    select = spec.get("select", "vote" if critics else "first_passing")
    if select == "vote" and not critics:
        out.append(f"{path}.select: 'vote' needs critics")
    quorum = spec.get("quorum")
    if isinstance(quorum, int) and not isinstance(quorum, bool) and critics \
            and quorum > len(critics):
        out.append(f"{path}.quorum: {quorum} is more than the {len(critics)} critics")
    return out


def _test_first_problems(data: Mapping[str, Any], unit: Mapping[str, Any], where: str,
                         units: Sequence[Any]) -> list[str]:
    """A test-first unit pins a proof (SPEC 13): it needs one, it is one proposal, not a
    vote among several, and what it depends on is already green."""
    out: list[str] = []
    proof = unit["proof_command"] if "proof_command" in unit else data.get("proof_command")
    if proof is None or proof == "":
        out.append(f"{where}.test_first: a test-first unit needs a proof_command "
                   "(its own or the plan's)")
    out += _no_consensus(data, unit, where, "a test-first unit")
    test_first = {u["id"] for u in units if isinstance(u, dict) and isinstance(u.get("id"), str)
                  and u.get("test_first") is True}
    deps = unit.get("depends_on")
    for j, dep in enumerate(deps if isinstance(deps, list) else []):
        if isinstance(dep, str) and dep in test_first and dep != unit.get("id"):
            out.append(f"{where}.depends_on[{j}]: a test-first unit cannot depend on "
                       f"another test-first unit ({dep!r})")
    return out


def _implementation_problems(data: Mapping[str, Any], unit: Mapping[str, Any], where: str,
                             units: Sequence[Any]) -> list[str]:
    """An implementation unit starts from its test-first unit's change and lands with
    it (SPEC 13): it can implement one."""
    test_first = {u["id"] for u in units if isinstance(u, dict) and isinstance(u.get("id"), str)
                  and u.get("test_first") is True}
    deps = unit.get("depends_on")
    pinned = [d for d in (deps if isinstance(deps, list) else []) if d in test_first]
    if len(pinned) > 1:
        return [(f"{where}.depends_on: a unit implements one test-first unit, not "
                 f"{len(pinned)} ({', '.join(map(repr, pinned))})")]
    # Its candidates would be proven on the head, without the tests it must pass.
    return _no_consensus(data, unit, where, "an implementation unit") if pinned else []


def _no_consensus(data: Mapping[str, Any], unit: Mapping[str, Any], where: str,
                  what: str) -> list[str]:
    """A unit of a test-first group is one proposal, not a vote among several."""
    if "consensus" in unit:
        return ([f"{where}.consensus: {what} cannot be a consensus unit"]
                if isinstance(unit["consensus"], dict) else [])
    if isinstance(data.get("consensus"), dict):
        return [(f"{where}.consensus: {what} cannot be a consensus unit (give it "
                 "\"consensus\": null to leave the plan's consensus)")]
    return []


SANDBOX_PATH_STARTS = ("/", "~/", "{repo}", "{plan_dir}")


def _sandbox_writable_problems(entries: Any) -> list[str]:
    """Each path must name one place whatever directory wtmesh runs in."""
    if not isinstance(entries, list):
        return []
    return [f"$.sandbox_writable[{j}]: {entry!r} must be an absolute path (or start with "
            "~/, {repo} or {plan_dir})"
            for j, entry in enumerate(entries)
            if isinstance(entry, str) and entry and entry != "~"
            and not entry.startswith(SANDBOX_PATH_STARTS)]


def _variants_name_coders(data: Mapping[str, Any], unit: Mapping[str, Any]) -> bool:
    """Every variant of the unit's consensus names its own coder: the unit needs none."""
    spec = unit["consensus"] if "consensus" in unit else data.get("consensus")
    variants = spec.get("variants") if isinstance(spec, dict) else None
    return isinstance(variants, list) and bool(variants) and all(
        isinstance(v, dict) and isinstance(v.get("coder"), dict)
        and ("command" in v["coder"] or "preset" in v["coder"]) for v in variants)


def _lane_problems(plan_lanes: Any, unit_lanes: Any, where: str,
                   variants_code: bool = False) -> list[str]:
    out: list[str] = []
    for name in LANE_NAMES:
        plan_lane = plan_lanes.get(name) if isinstance(plan_lanes, dict) else None
        unit_lane = unit_lanes.get(name) if isinstance(unit_lanes, dict) else None
        for lane, path in ((plan_lane, f"$.lanes.{name}"), (unit_lane, f"{where}.lanes.{name}")):
            if isinstance(lane, dict) and "command" in lane and "preset" in lane:
                out.append(f"{path}: give either command or preset, not both")
        out.extend(_preset_option_problems(plan_lane, unit_lane, f"$.lanes.{name}",
                                           f"{where}.lanes.{name}"))
        if name == "coder":
            merged = {**(plan_lane if isinstance(plan_lane, dict) else {}),
                      **(unit_lane if isinstance(unit_lane, dict) else {})}
            if "command" not in merged and "preset" not in merged and not variants_code:
                out.append(f"{where}: no coder lane: give lanes.coder.command (or preset) "
                           "in the plan or the unit")
    return out


def _preset_option_problems(plan_lane: Any, unit_lane: Any, plan_path: str,
                            unit_path: str) -> list[str]:
    """Options the lane's preset cannot honour (a turn cap for a CLI that has none),
    reported where they are written. The lane merges as ``_lane`` merges it."""
    plan_lane = plan_lane if isinstance(plan_lane, dict) else {}
    unit_lane = unit_lane if isinstance(unit_lane, dict) else {}
    overrides = "command" in unit_lane or "preset" in unit_lane
    preset = (unit_lane if overrides else plan_lane).get("preset")
    if not isinstance(preset, str):
        return []
    out: list[str] = []
    for key in PRESET_OPTIONS:
        source, path = (unit_lane, unit_path) if key in unit_lane else (plan_lane, plan_path)
        problem = option_problem(preset, key) if key in source else None
        if problem:
            out.append(f"{path}.{key}: {problem}")
    return out


def load(path: Path) -> Plan:
    """Read and validate a plan file; raises PlanError listing every problem."""
    data = read_json(path, "plan file")
    found = problems(data)
    if found:
        # One line per problem; duplicates (a plan-level lane problem seen from every unit)
        # are shown once.
        unique = list(dict.fromkeys(found))
        raise PlanError(f"{path}: invalid plan", details=[f"{path}: {p}" for p in unique])
    return build(data, path.resolve())


def load_as_run(copy: Path, original: Path) -> Plan:
    """The plan a run recorded (its copy in the run directory), placed where the original
    was so ``{plan_dir}`` still names the same directory."""
    return build(json.loads(copy.read_text("utf-8-sig")), original)


def _command(value: Any) -> Command | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else tuple(value)


def _merged(base_lane: Mapping[str, Any] | None,
            over_lane: Mapping[str, Any] | None) -> dict[str, Any]:
    """A lane's keys over another's: a command or preset replaces the other's either."""
    base = dict(base_lane or {})
    over = dict(over_lane or {})
    if "command" in over or "preset" in over:
        base.pop("command", None)
        base.pop("preset", None)
    return {**base, **over}


def _lane(name: str, plan_lane: Mapping[str, Any] | None, unit_lane: Mapping[str, Any] | None,
          unit_timeout: float | None) -> LaneSpec | None:
    base = _merged(plan_lane, None)
    over = dict(unit_lane or {})
    merged = _merged(plan_lane, unit_lane)
    if "command" not in merged and "preset" not in merged:
        return None
    timeout = over.get("timeout_s", unit_timeout if unit_timeout is not None
                       else base.get("timeout_s", DEFAULT_LANE_TIMEOUT_S))
    options = {k: v for k, v in merged.items()
               if k not in ("command", "preset", "timeout_s", "retries", "env")}
    return LaneSpec(
        name=name,
        command=_command(merged.get("command")),
        preset=merged.get("preset"),
        timeout_s=float(timeout),
        retries=int(merged.get("retries", DEFAULT_RETRIES)),
        env=dict(merged.get("env", {})),
        options=options,
    )


def build(data: Mapping[str, Any], path: Path) -> Plan:
    """Records from an already validated plan."""
    plan_lanes = data.get("lanes", {})
    plan_proof = _command(data.get("proof_command"))
    plan_proof_timeout = float(data.get("proof_timeout_s", DEFAULT_PROOF_TIMEOUT_S))
    units = []
    for raw in data["units"]:
        unit_lanes = raw.get("lanes", {})
        unit_timeout = raw.get("timeout_s")
        coder = _lane("coder", plan_lanes.get("coder"), unit_lanes.get("coder"), unit_timeout)
        spec = raw["consensus"] if "consensus" in raw else data.get("consensus")
        if coder is None:  # validated: every variant of its consensus names its coder
            assert spec is not None
            coder = _lane("coder", None, spec["variants"][0]["coder"], unit_timeout)
        assert coder is not None
        fixer = None
        if unit_lanes.get("fixer", {}) is not None:
            fixer = _lane("fixer", plan_lanes.get("fixer"), unit_lanes.get("fixer"), unit_timeout)
        units.append(Unit(
            id=raw["id"],
            objective=raw["objective"],
            scope=Scope.parse(raw.get("unit_scope")),
            constraints=raw.get("constraints", ""),
            invariants=raw.get("invariants", ""),
            proof_command=_command(raw["proof_command"]) if "proof_command" in raw
            else plan_proof,
            proof_timeout_s=float(raw.get("proof_timeout_s", plan_proof_timeout)),
            depends_on=tuple(raw.get("depends_on", ())),
            coder=coder,
            fixer=fixer,
            labels={k: raw[k] for k in MESH_LABELS if k in raw},
            raw=raw,
            consensus=_consensus(spec, plan_lanes, unit_lanes, unit_timeout, coder, fixer),
            test_first=raw.get("test_first", False) is True,
        ))
    setup = data.get("setup", {})
    copies = setup.get("copy_ignored", [])
    return Plan(
        path=path,
        version=int(data.get("version", 1)),
        base=data.get("base"),
        target=data.get("target"),
        delivery_mode=data.get("delivery_mode", "commit_first"),
        proof_command=plan_proof,
        max_active=int(data.get("max_active", DEFAULT_MAX_ACTIVE)),
        setup=SetupSpec(_command(setup.get("command")),
                        (copies,) if isinstance(copies, str) else tuple(copies)),
        units=tuple(units),
        raw=data,
        sandbox=data.get("sandbox"),
        sandbox_writable=tuple(data.get("sandbox_writable", ())),
        max_cost_usd=float(data["max_cost_usd"]) if "max_cost_usd" in data else None,
        overlap=data.get("overlap", "serialize"),
        rebase_retries=int(data.get("rebase_retries", DEFAULT_REBASE_RETRIES)),
    )


def _consensus(spec: Mapping[str, Any] | None, plan_lanes: Mapping[str, Any],
               unit_lanes: Mapping[str, Any], unit_timeout: float | None, coder: LaneSpec,
               fixer: LaneSpec | None) -> Consensus | None:
    """The unit's consensus; each variant's lanes are the unit's (``coder``, ``fixer``)
    with the variant's keys over them."""
    if spec is None:
        return None
    raw_variants = spec["variants"]
    if isinstance(raw_variants, int):
        raw_variants = [{"name": f"v{i}"} for i in range(1, raw_variants + 1)]
    raw_coder = _merged(plan_lanes.get("coder"), unit_lanes.get("coder"))
    raw_fixer = _merged(plan_lanes.get("fixer"), unit_lanes.get("fixer") or {})
    variants = []
    for i, raw in enumerate(raw_variants, 1):
        variant_fixer: LaneSpec | None = fixer
        if "fixer" in raw:
            variant_fixer = (None if raw["fixer"] is None
                             else _override(fixer, raw_fixer if fixer else {}, raw["fixer"]))
        variants.append(Variant(
            name=str(raw.get("name", f"v{i}")),
            coder=_override(coder, raw_coder, raw.get("coder")) or coder,
            fixer=variant_fixer,
            objective_suffix=str(raw.get("objective_suffix", "")),
            env=dict(raw.get("env", {}))))
    critics = tuple((str(raw.get("name", f"critic{j}")),
                     _lane("critic", None, {k: v for k, v in raw.items() if k != "name"},
                           unit_timeout))
                    for j, raw in enumerate(spec.get("critics", []), 1))
    synthesizer = (_lane("synthesizer", None, spec["synthesizer"], unit_timeout)
                   if spec.get("synthesizer") else None)
    return Consensus(
        variants=tuple(variants),
        critics=tuple((name, lane) for name, lane in critics if lane is not None),
        synthesizer=synthesizer,
        quorum=int(spec.get("quorum", max(1, len(critics) - 1))),
        rounds=int(spec.get("rounds", DEFAULT_ROUNDS)),
        select=str(spec.get("select", "vote" if critics else "first_passing")),
    )


def _override(resolved: LaneSpec | None, base: Mapping[str, Any],
              over: Mapping[str, Any] | None) -> LaneSpec | None:
    """``resolved`` (a unit's lane, from ``base``) with a variant's keys over it; the
    timeout stays the unit's unless the variant gives one."""
    if not over:
        return resolved
    name = resolved.name if resolved else "fixer"
    lane = _lane(name, base, over, None)
    if lane is not None and resolved is not None and "timeout_s" not in over:
        lane = dataclasses.replace(lane, timeout_s=resolved.timeout_s)
    return lane


def implementation_units(units: Sequence[Unit], test_first_id: str) -> list[Unit]:
    """The units of ``units`` that depend on a test-first unit directly (its
    implementation units, SPEC 13), in the order given."""
    return [unit for unit in units if test_first_id in unit.depends_on]


def test_first_groups(units: Sequence[Unit]) -> dict[str, str]:
    """Each member of a test-first group (SPEC 13) -> the id of its test-first unit
    (which maps to itself). Validation allows a unit to implement one."""
    test_first = {unit.id for unit in units if unit.test_first}
    groups = {uid: uid for uid in test_first}
    for unit in units:
        owner = next((dep for dep in unit.depends_on if dep in test_first), None)
        if owner is not None and not unit.test_first:
            groups[unit.id] = owner
    return groups


def with_dependencies(depends: Mapping[str, Sequence[str]], ids: Iterable[str]) -> set[str]:
    """``ids`` and every unit they depend on, directly or not (ids of ``depends``
    only)."""
    out: set[str] = set()
    todo = [uid for uid in ids if uid in depends]
    while todo:
        uid = todo.pop()
        if uid not in out:
            out.add(uid)
            todo.extend(dep for dep in depends[uid] if dep in depends)
    return out


def integration_order(plan: Plan) -> list[Unit]:
    """Plan order, with every unit moved after the units it depends on (stable), and each
    test-first group (SPEC 13) ahead of the rest, whole: what its members depend on, the
    test-first unit, then its implementation units. A group lands as one, so a unit
    between its members that overlapped them would wait for a landing that waits for it."""
    placed: set[str] = set()
    order: list[Unit] = []
    by_id = {unit.id: unit for unit in plan.units}
    for test_first in (u for u in plan.units if u.test_first):
        group = [test_first, *implementation_units(plan.units, test_first.id)]
        members = {unit.id for unit in group}
        needed = with_dependencies({u.id: u.depends_on for u in plan.units},
                                   [dep for unit in group for dep in unit.depends_on
                                    if dep not in members])
        order += _dependency_order([u for u in plan.units
                                    if u.id in needed and u.id not in placed], placed)
        placed.update(u.id for u in order)
        order += _dependency_order([u for u in group if u.id not in placed], placed)
        placed.update(u.id for u in order)
    return order + _dependency_order([by_id[u.id] for u in plan.units if u.id not in placed],
                                     placed)


def _dependency_order(units: Sequence[Unit], placed: set[str]) -> list[Unit]:
    """``units`` in order, each moved after those it depends on (``placed``: ids already
    ordered before them)."""
    placed = set(placed)
    order: list[Unit] = []
    pending = list(units)
    while pending:
        for unit in pending:
            if all(dep in placed for dep in unit.depends_on):
                order.append(unit)
                placed.add(unit.id)
                pending.remove(unit)
                break
        else:  # pragma: no cover - cycles are rejected by validation
            raise AssertionError("dependency cycle in a validated plan")
    return order
