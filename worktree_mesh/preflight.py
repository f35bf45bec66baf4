"""Before any worktree is made: every lane's program is there (SPEC 9).

A lane whose program is missing would otherwise fail on its own, after its worktree was
filled, and every unit the same way. Only what is certainly missing is refused: a bare
name found on no directory of the lane's PATH, an absolute path that is not an
executable file, a preset whose CLI is not on PATH. A relative path (the worktree may
make it), a placeholder, a shell builtin, keyword or anything a shell would expand first
passes.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator, Mapping

from .errors import EnvironmentRefused
from .plan import Command, LaneSpec, Unit
from .presets.versions import TESTED

SHELL_WORDS = frozenset((
    # POSIX special and regular builtins, the keywords, and the common bash ones.
    ". : break continue eval exec exit export readonly return set shift times trap unset "
    "alias bg cd command false fc fg getopts hash jobs kill newgrp pwd read true type "
    "ulimit umask unalias wait echo printf test [ [[ ]] ! { } if then else elif fi case "
    "esac for while until do done in function select time coproc source local declare "
    "typeset let builtin enable shopt caller mapfile readarray disown suspend logout "
    "dirs pushd popd history help bind complete compgen compopt").split())
EXPANDS = frozenset("$`{}()<>|&;*?[]~=\\\"'")


def lanes_of(unit: Unit) -> Iterator[tuple[str, LaneSpec]]:
    """Each lane of ``unit`` with the name a person knows it by."""
    consensus = unit.consensus
    if consensus is None or not consensus.variants:
        yield "coder", unit.coder
        if unit.fixer is not None:
            yield "fixer", unit.fixer
    if consensus is None:
        return
    for variant in consensus.variants:
        yield f"variant {variant.name} coder", variant.coder
        if variant.fixer is not None:
            yield f"variant {variant.name} fixer", variant.fixer
    for name, critic in consensus.critics:
        yield f"critic {name}", critic
    if consensus.synthesizer is not None:
        yield "synthesizer", consensus.synthesizer


def program(command: Command) -> str | None:
    """The program a command starts, or None where that is not certain."""
    if isinstance(command, tuple):
        first = command[0] if command else None
    else:
        try:
            words = shlex.split(command, posix=True)
        except ValueError:
            return None
        first = words[0] if words else None
        if first is None or first in SHELL_WORDS or EXPANDS & set(command.split()[0]):
            return None
    if not first or "{" in first:  # a placeholder, filled per lane
        return None
    return first


def missing(prog: str, env: Mapping[str, str]) -> str | None:
    """Why ``prog`` certainly cannot start, or None."""
    if "/" in prog:
        if not os.path.isabs(prog):
            return None  # relative to the worktree, which may make it
        if os.path.isfile(prog) and os.access(prog, os.X_OK):
            return None
        return f"{prog} is not an executable file" if os.path.exists(prog) \
            else f"{prog} does not exist"
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(prog, path=path) is None:
        return f"`{prog}` is not on PATH"
    return None


def check(units: list[Unit]) -> None:
    """Refuse the run (exit 3) with one line naming the first missing program."""
    for unit in units:
        for lane_name, lane in lanes_of(unit):
            env = {**os.environ, **lane.env}
            if lane.preset is not None and lane.preset in TESTED:
                binary = TESTED[lane.preset].binary
                why = missing(binary, env)
                what = f"preset {lane.preset}: {why} ({TESTED[lane.preset].install_command})"
            elif lane.command is not None and (prog := program(lane.command)) is not None:
                why = missing(prog, env)
                what = f"{why}" if why else ""
            else:
                continue
            if why is not None:
                raise EnvironmentRefused(f"unit {unit.id}, {lane_name} lane: {what}; "
                                         "nothing was started")
