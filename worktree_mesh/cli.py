"""The command line: each command parses, calls one core function, returns an exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import click

from . import __version__, starter
from . import pick as pick_mod
from . import plan as plan_mod
from . import sandbox as sandbox_mod
from .cleanup import collect_garbage
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, EnvironmentRefused, UsageError, WtmeshError
from .git import Git, NotARepository, RepoInfo, discover
from .integrator import landing_window_s
from .output import (
    LineRenderer,
    print_gc,
    print_json,
    print_status,
    print_summary_table,
    status_view,
)
from .resume import Recovery, events, find_run, recover, run_finished
from .run_options import resolve_run, resumed_options
from .scheduler import Observer, Run
from .state import StateDir
from .status import LOG_LANES, log_files, run_status
from .text import printable
from .toolkit import budget as budget_mod
from .toolkit import commands as toolkit_commands
from .toolkit.budget import BudgetDecision

EXIT_INTERNAL = 70  # a bug in wtmesh (EX_SOFTWARE); details go to a log file
NEWEST = "\0newest"  # --resume without a run id


def open_repo(repo: Path | None) -> tuple[RepoInfo, Git]:
    where = (repo or Path.cwd()).resolve() if repo else Path.cwd()
    try:
        info = discover(where)
    except NotARepository as exc:
        raise EnvironmentRefused(str(exc)) from None
    return info, Git(info.common_dir)


repo_option = click.option(
    "--repo", type=click.Path(path_type=Path, file_okay=False),
    help="Repository to work on (default: the one containing the current directory).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wtmesh")
def cli() -> None:
    """Run a plan of coding units in parallel, one git worktree per unit, and land their
    changes safely through a single integrator that proves every step."""


@cli.command()
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path, dir_okay=True))
def validate(plan_file: Path) -> None:
    """Check a plan and print every problem found (exit 0 valid, 2 invalid)."""
    plan = plan_mod.load(plan_file)
    click.echo(f"{plan_file}: valid plan, {len(plan.units)} units")


@cli.command()
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@repo_option
@click.option("--max-active", type=click.IntRange(min=1), help="Units whose lanes run at once.")
@click.option("--delivery", type=click.Choice(plan_mod.DELIVERY_MODES),
              help="commit_first lands commits on the target; patch_first writes patches.")
@click.option("--target", help="Branch to land on (default: the plan's, else the checked-out one).")
@click.option("--base", help="Commit the units start from (default: the target's tip).")
@click.option("--patch-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where patch_first writes its patch series.")
@click.option("--keep-worktrees", is_flag=True, help="Leave the unit worktrees in place.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds to wait for another run's integrator lock before exiting 3.")
@click.option("--resume", "resume", is_flag=False, flag_value=NEWEST, default=None,
              metavar="[RUN_ID]",
              help="Continue an interrupted run (default: the newest unfinished run of PLAN).")
@click.option("--remaining-five-hour", type=float, metavar="P",
              help="Percent of the five-hour budget left: clamps --max-active (with "
                   "--remaining-weekly) and slows down after units go badly.")
@click.option("--remaining-weekly", type=float, metavar="P",
              help="Percent of the weekly budget left (with --remaining-five-hour).")
@click.option("--batch", "batch", metavar="auto|N",
              callback=lambda _ctx, _param, value: _batch_size(value),
              help="Integrate up to N ready units under one proof (auto: all that are "
                   "ready; default 1); a failing batch is bisected, so the outcome is that "
                   "of 1.")
@click.option("--sandbox", type=click.Choice(sandbox_mod.SANDBOX_MODES),
              help="Confine lanes, setup and proofs with bubblewrap: auto (the default: "
                   "where it works, else say so), bwrap (exit 3 where it cannot run), none.")
@click.option("--max-cost-usd", metavar="X",
              callback=lambda _ctx, _param, value: _dollars(value),
              help="Once the run's lanes have reported spending X US dollars, start no "
                   "new lane (running ones finish); units not started end skipped, "
                   "budget_exhausted. Overrides the plan's max_cost_usd.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the run's report.md to this file.")
@click.option("--learnings", type=click.Path(path_type=Path, dir_okay=False),
              help="Append a JSONL record per failed or rejected unit to this file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print only the run summary, as one JSON object, on stdout.")
def run(plan_file: Path, repo: Path | None, max_active: int | None, delivery: str | None,
        target: str | None, base: str | None, patch_dir: Path | None, keep_worktrees: bool,
        lock_timeout: float, resume: str | None, remaining_five_hour: float | None,
        remaining_weekly: float | None, batch: int | None, sandbox: str | None,
        max_cost_usd: float | None, report: Path | None, learnings: Path | None,
        as_json: bool) -> None:
    """Run PLAN: lanes in worktrees, then integrate accepted changes in plan order."""
    landing_window_s()  # a bad value is refused before anything starts
    # On a terminal a live table; otherwise (a pipe, CI, --json) one line per change.
    live = not as_json and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    renderer: Observer
    drawing: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    view = None
    if live:
        from .live import LiveView  # rich, only for a terminal

        renderer = drawing = view = LiveView(sys.stdout)
    else:
        renderer = LineRenderer(sys.stderr if as_json else sys.stdout)
    if resume is not None:
        if (delivery or target or base or patch_dir or learnings
                or remaining_five_hour is not None or remaining_weekly is not None
                or batch is not None or report or max_cost_usd is not None):
            raise UsageError("--resume continues a run as it was started: --delivery, "
                             "--target, --base, --patch-dir, --batch, --report, "
                             "--learnings, --max-cost-usd and the budget cannot change")
        the_run, recovery = _resumable(plan_file, repo, resume, renderer, as_json,
                                       keep_worktrees=keep_worktrees, lock_timeout=lock_timeout,
                                       max_active=max_active, sandbox=sandbox)
        if view is not None:
            view.recall(events(the_run.run_dir))
    else:
        decision = _budget(remaining_five_hour, remaining_weekly)
        plan = plan_mod.load(plan_file)
        info, git = open_repo(repo)
        options = resolve_run(plan, info, git, target=target, base=base,
                              delivery_mode=delivery, max_active=max_active,
                              patch_dir=patch_dir.resolve() if patch_dir else None,
                              keep_worktrees=keep_worktrees, lock_timeout_s=lock_timeout,
                              budget=decision, batch=1 if batch is None else batch,
                              sandbox=sandbox, report=report.resolve() if report else None,
                              learnings=learnings.resolve() if learnings else None,
                              max_cost_usd=max_cost_usd)
        the_run, recovery = Run(options, git, renderer), None
    stop = _Stop()
    previous = {signum: signal.signal(signum, stop) for signum in _Stop.SIGNALS}
    try:
        with drawing:
            if recovery is None:
                the_run.prepare()
            else:
                the_run.resume(recovery)
            summary = the_run.execute()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        the_run.close()
    _print_summary(summary, as_json)
    if summary["exit_code"] == EXIT_INTERRUPTED:
        click.echo(f"wtmesh: interrupted; continue with: wtmesh run {plan_file} --resume "
                   f"{summary['run_id']}", err=True)
    sys.exit(summary["exit_code"])


def _batch_size(value: str | None) -> int | None:
    """``auto`` is 0 (every ready unit); else a whole number >= 1; None when not given."""
    if value is None:
        return None
    if value == "auto":
        return 0
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is not auto or a whole number >= 1")
    return int(value)


def _dollars(value: str | None) -> float | None:
    """A sum of money: a finite number >= 0 (``nan`` and ``inf`` read as floats too)."""
    if value is None:
        return None
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        raise click.BadParameter(f"{value!r} is not a number of dollars >= 0")
    return amount


def _budget(five_hour: float | None, weekly: float | None) -> BudgetDecision | None:
    if five_hour is None and weekly is None:
        return None
    if five_hour is None or weekly is None:
        raise UsageError("--remaining-five-hour and --remaining-weekly go together")
    try:
        return budget_mod.clamp(five_hour, weekly)
    except ValueError as exc:
        raise UsageError(f"budget: {exc}") from None


class _Stop:
    """SIGTERM (a CI cancel, a kill) and SIGHUP (the terminal or ssh session closed) stop
    a run like Ctrl-C: lanes and proofs stopped, the interruption recorded, resumable.
    Their default is to die on the spot, leaving the lanes (each in a session of its own,
    so the hang-up never reaches them) running on, orphaned.

    Only the first one interrupts: a closed session often sends more than one (the
    kernel's hang-up, then the shell passing it on), and a second interrupt would cut
    short the recording of the first."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self._terminals = [fd for fd in (1, 2) if os.isatty(fd)]

    def __call__(self, signum: int, _frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        if signum == signal.SIGHUP:
            self._leave_a_hung_up_terminal()
        raise KeyboardInterrupt

    def _leave_a_hung_up_terminal(self) -> None:
        """Writing to a terminal that hung up fails (EIO), which would turn the orderly
        stop into a crash: what was shown there goes nowhere now, as with nohup. A
        terminal that is still there (a SIGHUP sent by hand) keeps its output."""
        gone = [fd for fd in self._terminals if not os.isatty(fd)]
        if not gone:
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in gone:
            os.dup2(devnull, fd)
        os.close(devnull)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
    else:
        print_summary_table(summary)


def _resumable(plan_file: Path, repo: Path | None, resume: str, renderer: Observer,
               as_json: bool, *, keep_worktrees: bool, lock_timeout: float,
               max_active: int | None, sandbox: str | None) -> tuple[Run, Recovery]:
    info, git = open_repo(repo)
    state = StateDir.for_common_dir(git.common_dir)
    run_id = find_run(state, plan_file.resolve(), None if resume == NEWEST else resume)
    run_dir = state.run(run_id)
    finished = run_finished(events(run_dir))
    if finished is not None:
        click.echo(f"run {run_id} had already finished "
                   f"({_describe_counts(finished['counts'])}); nothing to resume", err=True)
        summary_file = run_dir.path / "summary.json"
        if as_json and summary_file.exists():
            print_json(json.loads(summary_file.read_text("utf-8")))
        sys.exit(finished["exit_code"])
    recovery = recover(run_dir)
    options = resumed_options(run_dir, info, recovery, keep_worktrees=keep_worktrees,
                              lock_timeout_s=lock_timeout, sandbox=sandbox)
    if max_active:
        options = dataclasses.replace(options, max_active=max_active)
    return Run(options, git, renderer, run_id=run_id), recovery


def _describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no units"


@cli.command()
@click.argument("run_id", required=False)
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.option("--watch", is_flag=True, help="Keep showing the status until the run ends.")
def status(run_id: str | None, repo: Path | None, as_json: bool, watch: bool) -> None:
    """What a run did (default: the newest), and what --resume would do."""
    _info, git = open_repo(repo)
    state = StateDir.for_common_dir(git.common_dir)
    record = run_status(git, state, run_id)
    if watch:
        record = _watch(git, state, record, as_json)
    if as_json:
        print_json(record)
    else:
        print_status(record)


def _watch(git: Git, state: StateDir, record: dict[str, Any], as_json: bool
           ) -> dict[str, Any]:
    """Follow a running run: redrawn in place on a terminal, else one JSON line or
    status block each time something changes. Returns the status once it has ended."""
    from rich.live import Live

    run_id = record["run_id"]
    in_place = not as_json and sys.stdout.isatty()
    shown = None
    with Live(get_renderable=lambda: status_view(run_status(git, state, run_id)),
              refresh_per_second=1, transient=True) if in_place else contextlib.nullcontext():
        while record["state"] == "running":
            if not in_place and record != shown:
                if as_json:
                    print_json(record)
                else:
                    print_status(record)
                shown = record
            time.sleep(1.0)
            record = run_status(git, state, run_id)
    return record


@cli.command()
@click.argument("run_id")
@click.argument("unit")
@repo_option
@click.option("--lane", type=click.Choice(LOG_LANES), help="Only this lane's logs.")
def log(run_id: str, unit: str, repo: Path | None, lane: str | None) -> None:
    """Print a unit's logs: each lane attempt's output, then the proof's."""
    _info, git = open_repo(repo)
    files = log_files(StateDir.for_common_dir(git.common_dir), run_id, unit, lane)
    if not files:
        click.echo(f"no {lane + ' ' if lane else ''}logs for unit {unit} of run {run_id}")
    out: BinaryIO = sys.stdout.buffer
    for path in files:
        out.write(f"== {path.name} ({path}) ==\n".encode())
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, out)
        out.flush()


@cli.command("pick")
@click.argument("run_id")
@click.argument("unit")
@click.argument("candidate")
@repo_option
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds to wait for a run's integrator lock before exiting 3.")
def pick_command(run_id: str, unit: str, candidate: str, repo: Path | None,
                 lock_timeout: float) -> None:
    """Integrate CANDIDATE as UNIT of the finished run RUN_ID, a consensus unit awaiting
    a choice (select: manual): proven afresh on the head as it is now, delivered in the
    run's mode. Exit 0 landed, 1 not (its proof failed, it conflicts: the unit still
    awaits a choice), 2 nothing to pick, 3 the environment refused."""
    info, git = open_repo(repo)
    stop = _Stop()
    previous = {signum: signal.signal(signum, stop) for signum in _Stop.SIGNALS}
    try:
        outcome = pick_mod.pick(git, info, run_id, unit, candidate,
                                lock_timeout_s=lock_timeout,
                                observer=LineRenderer(sys.stdout))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for line in outcome.said:
        click.echo(printable(line))
    sys.exit(outcome.exit_code)


@cli.command()
@repo_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--unfinished", is_flag=True,
              help="Also drop the refs of interrupted runs (they can then not be resumed) "
                   "and of units awaiting a choice (they can then not be picked).")
def gc(repo: Path | None, dry_run: bool, unfinished: bool) -> None:
    """Remove worktrees, refs and stale locks of finished or dead runs."""
    _info, git = open_repo(repo)
    report = collect_garbage(git, StateDir.for_common_dir(git.common_dir), dry_run=dry_run,
                             unfinished=unfinished)
    print_gc(report)


toolkit_commands.register(cli)
starter.register(cli)


def _internal_error() -> int:
    with tempfile.NamedTemporaryFile("w", prefix="wtmesh-crash-", suffix=".log",
                                     delete=False) as log:
        log.write(traceback.format_exc())
    exc = sys.exc_info()[1]
    click.echo(f"wtmesh: internal error: {type(exc).__name__}: {exc} (details in {log.name})",
               err=True)
    return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> Any:
    """Entry point: expected failures print one line per problem, never a traceback."""
    try:
        cli.main(args=argv, prog_name="wtmesh", standalone_mode=False)
    except WtmeshError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        message = exc.format_message()
        hint = f" (see 'wtmesh {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        click.echo(f"wtmesh: error: {message}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"wtmesh: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("wtmesh: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    except Exception:  # noqa: BLE001 - anything else is a bug
        sys.exit(_internal_error())
    return None



