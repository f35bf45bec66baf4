"""A coder lane for tests: bring files of a release over the worktree, as a person porting
a new upstream release file group by file group would.

  copy_release.py RELEASE_DIR [--append PATH=TEXT]... FILE...

Each FILE (repo-relative) is copied from RELEASE_DIR with its bytes and executable bit (a
symlink as a symlink), or, when RELEASE_DIR lacks it, deleted from the worktree.
``--append PATH=TEXT`` then appends TEXT, as given, to PATH: a unit that ports its files
and slips in a change of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("release", type=Path)
    parser.add_argument("--append", action="append", default=[], metavar="PATH=TEXT")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    worktree = Path.cwd()
    for rel in args.files:
        source, dest = args.release / rel, worktree / rel
        if source.is_symlink() or source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or source.is_symlink():
                dest.unlink(missing_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), dest)
            else:
                shutil.copyfile(source, dest)
                shutil.copymode(source, dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
            # git tracks no directories: drop the ones the deletion left empty.
            parent = dest.parent
            while parent != worktree and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    for item in args.append:
        path, _, text = item.partition("=")
        with open(worktree / path, "a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
