"""The section 7 commands (budget, plan-sync, slice, wave, run-csv, ledger, replay).

Each parses its options, calls one function of this package, and prints one JSON line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import plan as plan_mod
from ..errors import UsageError
from . import budget as budget_mod
from . import ledger_view, meshcsv, replay, run_csv, slicing, steps, wave
from .jsonio import line, read_json, same_file, write_json

PathArg = click.Path(path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def _echo(data: Any) -> None:
    click.echo(line(data))


def _decision(five_hour: float, weekly: float, max_threads: int,
              **thresholds: float) -> budget_mod.BudgetDecision:
    try:
        return budget_mod.clamp(five_hour, weekly, max_threads, **thresholds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def five_hour_option(required: bool) -> Callable[[F], F]:
    return click.option("--remaining-five-hour", "five_hour", type=float, metavar="PERCENT",
                        required=required,
                        help="Percent of the five-hour budget left (clamped to [0, 100]).")


def weekly_option(required: bool) -> Callable[[F], F]:
    return click.option("--remaining-weekly", "weekly", type=float, metavar="PERCENT",
                        required=required,
                        help="Percent of the weekly budget left (clamped to [0, 100]).")

max_threads_option = click.option(
    "--max-threads", type=int, default=budget_mod.DEFAULT_MAX_THREADS, show_default=True,
    help="Units at once with budget to spare (values below 1 count as 1).")


@click.command("budget")
@five_hour_option(required=True)
@weekly_option(required=True)
@max_threads_option
@click.option("--single-agent-threshold", type=float, metavar="PERCENT",
              default=budget_mod.DEFAULT_SINGLE_AGENT_THRESHOLD, show_default=True,
              help="At or below this, one unit at a time.")
@click.option("--linear-start-threshold", type=float, metavar="PERCENT",
              default=budget_mod.DEFAULT_LINEAR_START_THRESHOLD, show_default=True,
              help="At or below this, units scale linearly down from --max-threads.")
@click.option("--scaleout-threshold", type=float, metavar="PERCENT",
              default=budget_mod.DEFAULT_SCALEOUT_THRESHOLD, show_default=True,
              help="Above this, scale-out (cas_scaleout_allowed) is allowed.")
@click.option("--roles-per-task", type=int, metavar="N",
              help="Lanes one consensus task runs at once (variants and critics): adds "
                   "parallel_tasks_target, the tasks that fit side by side.")
@click.option("--reserve-slots", type=int, metavar="N",
              help="Of --max-threads, slots kept free before dividing by --roles-per-task "
                   f"(fewer than --max-threads).  [default: {budget_mod.DEFAULT_RESERVE_SLOTS}]")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json",
              show_default=True, help="One JSON line, or one key=value line.")
def budget_command(five_hour: float, weekly: float, max_threads: int,
                   single_agent_threshold: float, linear_start_threshold: float,
                   scaleout_threshold: float, roles_per_task: int | None,
                   reserve_slots: int | None, fmt: str) -> None:
    """Units to run at once on the budget left.

    Mode single_agent, linear_clamp or full_fanout, as SPEC section 7 computes it. With
    --roles-per-task, also parallel_tasks_target = max(1, floor((max_threads - reserve_slots)
    / roles_per_task)) (SPEC section 12)."""
    if roles_per_task is None and reserve_slots is not None:
        raise UsageError("--reserve-slots goes with --roles-per-task")
    decision = _decision(five_hour, weekly, max_threads,
                         single_agent_threshold=single_agent_threshold,
                         linear_start_threshold=linear_start_threshold,
                         scaleout_threshold=scaleout_threshold)
    if roles_per_task is not None:
        reserve = budget_mod.DEFAULT_RESERVE_SLOTS if reserve_slots is None else reserve_slots
        try:
            decision = decision.with_roles(roles_per_task, reserve)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    click.echo(decision.as_json() if fmt == "json" else decision.as_text())


@click.command("plan-sync")
@click.option("--input-json", type=PathArg, required=True, metavar="FILE",
              help="A step array, {\"plan\": [...]} (update_plan) or {\"steps\": [...]}.")
@click.option("--output-json", type=PathArg, metavar="FILE",
              help="Write the normalised plan here, as {\"plan\": [...]}.")
def plan_sync_command(input_json: Path, output_json: Path | None) -> None:
    """Count and normalise update_plan steps.

    Status aliases: open/queued -> pending, active/doing -> in_progress, done/closed ->
    completed. --output-json writes the normalised steps as {"plan": [...]}."""
    parsed = _steps(input_json)
    if output_json is not None:
        write_json(output_json, parsed.normalised_plan())
    out: dict[str, Any] = {"command": "plan_sync", **parsed.counts()}
    if output_json is not None:
        out["output_json"] = str(output_json)
    _echo(out)


def _steps(path: Path) -> steps.StepList:
    data = read_json(path)
    try:
        return steps.parse(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc.message}") from None


@click.command("slice")
@click.option("--input-json", type=PathArg, required=True, metavar="FILE",
              help="An update_plan payload (as plan-sync reads it).")
@click.option("--output-json", type=PathArg, metavar="FILE",
              help="Write {\"version\": 1, \"units\": [...]}: a plan once lanes are added.")
@click.option("--max-slices", type=click.IntRange(min=0), metavar="N",
              help="At most N units (the first N pending or in-progress steps).")
def slice_command(input_json: Path, output_json: Path | None, max_slices: int | None) -> None:
    """Turn plan steps into units (unit-001, ...).

    Pending and in-progress steps become units with the ten mesh fields; --output-json
    writes {"version": 1, "units": [...]}, a plan once lanes are added."""
    if output_json is not None and same_file(input_json, output_json):
        raise UsageError("--input-json and --output-json name the same file")
    result = slicing.slice_steps(_steps(input_json), max_slices)
    if output_json is not None:
        write_json(output_json, result.plan)
    _echo({"command": "slice", "units": result.units, "unit_count": len(result.units)})


@click.command("wave")
@click.option("--units-json", type=PathArg, required=True, metavar="FILE",
              help="{\"units\": [...]}: slice's output or a plan.")
@click.option("--csv-path", type=PathArg, required=True, metavar="FILE",
              help="Where to write the wave CSV.")
@click.option("--max-active", type=click.IntRange(min=1), default=1, show_default=True,
              help="Units in the wave at most.")
def wave_command(units_json: Path, csv_path: Path, max_active: int) -> None:
    """One wave of units whose scopes share no path.

    Units are taken in order, test-first units ahead of the rest; the wave is written as
    a CSV of the ten mesh fields."""
    if same_file(units_json, csv_path):
        raise UsageError("--units-json and --csv-path name the same file")
    data = read_json(units_json)
    try:
        units = wave.units_of(data)
    except UsageError as exc:
        raise UsageError(f"{units_json}: {exc.message}") from None
    chosen = wave.select(units, max_active)
    meshcsv.write(csv_path, meshcsv.MESH_FIELDS, [meshcsv.mesh_row(u) for u in chosen.selected])
    _echo({"command": "wave", "units_in": len(units), "units_selected": len(chosen.selected),
           "csv_path": str(csv_path), "selected_ids": [u["id"] for u in chosen.selected],
           "remaining_ids": chosen.left, "test_first_ids": wave.test_first_ids(units)})


@click.command("run-csv")
@click.option("--csv-path", type=PathArg, required=True, metavar="FILE",
              help="A wave CSV (the ten mesh columns, and any others).")
@click.option("--output-csv-path", type=PathArg, required=True, metavar="FILE",
              help="Where to write the output CSV (never the input).")
@click.option("--execute", is_flag=True,
              help="Run every row as a unit through `wtmesh run` (else only prepare).")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False),
              help="Repository to run in (default: the one containing the current directory).")
@click.option("--coder", metavar="CMD", help="The coder lane's command (with --execute).")
@click.option("--fixer", metavar="CMD", help="A fixer lane's command.")
@click.option("--proof", metavar="CMD",
              help="The plan's proof command (a row's proof_command overrides it).")
@click.option("--max-active", type=click.IntRange(min=1), help="Units whose lanes run at once.")
@click.option("--delivery", type=click.Choice(plan_mod.DELIVERY_MODES),
              help="Delivery mode (default: the rows' delivery_mode).")
def run_csv_command(csv_path: Path, output_csv_path: Path, execute: bool,
                    repo: Path | None, coder: str | None, fixer: str | None, proof: str | None,
                    max_active: int | None, delivery: str | None) -> None:
    """Check, prepare or run a wave CSV.

    Without --execute, writes id,decision,proof_status,failure_code,notes rows
    (queued, pending). With --execute, runs every row as a unit through `wtmesh run` and
    writes the input columns plus job_id, item_id, status, attempt_count, last_error,
    result_json; the exit code is the run's."""
    run_csv.check_paths(csv_path, output_csv_path)
    if not execute:
        given = [name for name, value in (("--repo", repo), ("--coder", coder),
                                          ("--fixer", fixer), ("--proof", proof),
                                          ("--max-active", max_active),
                                          ("--delivery", delivery)) if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only go with --execute")
        _echo(run_csv.prepare(meshcsv.read(csv_path), output_csv_path))
        return
    if not coder:
        raise click.UsageError("--execute needs --coder CMD")
    result, code = run_csv.execute(meshcsv.read(csv_path), output_csv_path,
                                   lanes=run_csv.Lanes(coder, fixer, proof), repo=repo,
                                   delivery=delivery, max_active=max_active)
    if result is not None:
        _echo(result)
    # Not ctx.exit(): the group runs with standalone_mode=False, which returns its code.
    sys.exit(code)


@click.command("ledger")
@click.option("--input-json", type=PathArg, metavar="FILE", help="A ledger payload (an object).")
@click.option("--run", "run_id", metavar="RUN_ID", help="A run of this repository instead.")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False),
              help="Repository of --run (default: the one containing the current directory).")
def ledger_command(input_json: Path | None, run_id: str | None, repo: Path | None) -> None:
    """Keep what occurred in a ledger payload or a run.

    Dropped: null, false, numbers <= 0, "", "none", [] and {}. Kept keys stay in order."""
    if (input_json is None) == (run_id is None):
        raise click.UsageError("give one of --input-json FILE and --run RUN_ID")
    if input_json is not None:
        if repo is not None:
            raise click.UsageError("--repo goes with --run")
        data = read_json(input_json)
        try:
            _echo(ledger_view.filter_events(data))
        except UsageError as exc:
            raise UsageError(f"{input_json}: {exc.message}") from None
        return
    assert run_id is not None
    records = ledger_view.read_run(repo, run_id)
    _echo(ledger_view.filter_events(ledger_view.run_summary(run_id, records)))


@click.command("replay")
@click.argument("plan_file", metavar="[PLAN]", required=False, type=PathArg)
@five_hour_option(required=False)
@weekly_option(required=False)
@click.option("--ready-units", type=click.IntRange(min=0), metavar="N",
              help="Units ready to run (without PLAN).")
@max_threads_option
@click.option("--max-active", type=click.IntRange(min=1),
              help="With PLAN: units at once (default: the plan's max_active).")
def replay_command(plan_file: Path | None, five_hour: float | None, weekly: float | None,
                   ready_units: int | None, max_threads: int, max_active: int | None) -> None:
    """Simulate waves without running anything.

    With budget numbers and --ready-units: wave sizes. With PLAN: the plan's real schedule
    (dependencies, scope overlap, max_active, test-first units first), unit ids per wave."""
    if (five_hour is None) != (weekly is None):
        raise click.UsageError("give both --remaining-five-hour and --remaining-weekly")
    decision = None if five_hour is None or weekly is None else _decision(
        five_hour, weekly, max_threads)
    if plan_file is not None:
        if ready_units is not None:
            raise click.UsageError("--ready-units goes without PLAN (PLAN's units are counted)")
        _echo(replay.plan_replay(plan_file, max_active, decision))
        return
    if max_active is not None:
        raise click.UsageError("--max-active goes with PLAN")
    if decision is None or ready_units is None:
        raise click.UsageError("give PLAN, or --remaining-five-hour, --remaining-weekly "
                               "and --ready-units")
    _echo(replay.budget_replay(decision, ready_units))


COMMANDS = (budget_command, plan_sync_command, slice_command, wave_command, run_csv_command,
            ledger_command, replay_command)
# SPEC 1: the section 7 commands also answer to their underscore names; the same command
# object is registered under both, so the two can never drift apart.
ALIASES = {"plan_sync": plan_sync_command, "run_csv": run_csv_command}


def register(group: click.Group) -> None:
    """Add the toolkit's commands, and their underscore aliases, to the main group."""
    for command in COMMANDS:
        group.add_command(command)
    for name, command in ALIASES.items():
        group.add_command(command, name)
