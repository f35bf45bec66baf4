"""The command line: each command parses, calls one core function, returns an exit code."""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__
from . import plan as plan_mod
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, EnvironmentRefused, WtmeshError
from .git import Git, NotARepository, RepoInfo, discover
from .output import LineRenderer, print_json, print_summary_table
from .scheduler import Run, resolve_run

EXIT_INTERNAL = 70  # a bug in wtmesh (EX_SOFTWARE); details go to a log file


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
@click.option("--json", "as_json", is_flag=True,
              help="Print only the run summary, as one JSON object, on stdout.")
def run(plan_file: Path, repo: Path | None, max_active: int | None, delivery: str | None,
        target: str | None, base: str | None, patch_dir: Path | None, keep_worktrees: bool,
        lock_timeout: float, as_json: bool) -> None:
    """Run PLAN: lanes in worktrees, then integrate accepted changes in plan order."""
    plan = plan_mod.load(plan_file)
    info, git = open_repo(repo)
    options = resolve_run(plan, info, git, target=target, base=base, delivery_mode=delivery,
                          max_active=max_active,
                          patch_dir=patch_dir.resolve() if patch_dir else None,
                          keep_worktrees=keep_worktrees, lock_timeout_s=lock_timeout)
    renderer = LineRenderer(sys.stderr if as_json else sys.stdout)
    the_run = Run(options, git, renderer)
    try:
        the_run.prepare()
        summary = the_run.execute()
    finally:
        the_run.close()
    if as_json:
        print_json(summary)
    else:
        print_summary_table(summary)
    sys.exit(summary["exit_code"])


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



