"""Expected failures: each carries the exit code of SPEC section 6 and one clear line.

Anything that is not a ``WtmeshError`` is a bug; the CLI's handler says where the log is.
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_UNITS_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130


class WtmeshError(click.ClickException):
    """An expected failure: a message for the user and the exit code it maps to."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        # Extra problems, one per line (plan validation reports them all at once).
        self.details = list(details or [])

    def lines(self) -> list[str]:
        return [self.message, *self.details] if not self.details else list(self.details)

    def show(self, file: object = None) -> None:  # click calls this on ClickException
        for line in self.lines():
            click.echo(f"wtmesh: error: {line}", err=True)


class UsageError(WtmeshError):
    """Bad usage or an invalid plan; nothing was changed."""

    exit_code = EXIT_USAGE


class PlanError(UsageError):
    """An invalid plan: ``details`` holds every problem, each with its JSON path."""


class EnvironmentRefused(WtmeshError):
    """The environment refused: not a repository, a dirty target, a lock timeout."""

    exit_code = EXIT_ENVIRONMENT


class RunInterrupted(WtmeshError):
    """The run was interrupted; it can be resumed."""

    exit_code = EXIT_INTERRUPTED
