"""A patch_first run checks every patch it delivers (SPEC 10): ``git am`` of a unit's
patch onto its parent must give the unit's tree. The integrator checks each candidate
commit before it can land, and a unit whose patch does not reproduce fails
``delivery_blocked``, like a proof that fails: it never lands, and the next unit goes
onto the same tip.

Checked patch by patch, the whole series is checked: ``git am`` applies a patch to the
index and the files, which hold the parent's tree whichever commit names it, so patch
k applied after the ``git am`` of patches 1..k-1 (whose result has the tree of commit
k-1) gives what it gives applied onto commit k-1 itself.

The check runs in a scratch worktree of wtmesh's own (git.py ``PrivateGit``: a private
admin git dir with the configuration wtmesh wrote, system and global configuration off,
no hooks), made and removed by each check, so none of the user's refs, worktrees or
index is touched; the commit ``git am`` makes goes unreachable into the object store,
as candidate commits do. Only the files the patch changes are checked out, since ``git
apply --index`` inside ``git am`` reads no other (a full checkout of a large repository
costs seconds).

``git am`` runs as a reviewer's would on a git with its defaults, with ``--keep-cr``
(the command the run prints): mailsplit otherwise strips the CR of every CRLF line, and
a file with CRLF line ends no longer applies, or is created with LF ones.
"""

from __future__ import annotations

from pathlib import Path

from .git import Git, Sha, decode_path
from .proc import CommandError

# How a reviewer applies the series (printed by the run and in its report): the check
# below is this command, on a git with its default settings.
REVIEWER_AM = "git am --keep-cr"

_AM_OPTIONS = ("--quiet", "--keep-cr", "--no-3way", "--no-scissors", "--patch-format=mbox",
               "--no-gpg-sign", "--no-rerere-autoupdate", "--whitespace=nowarn")
_COMMITTER = {"GIT_COMMITTER_NAME": "wtmesh", "GIT_COMMITTER_EMAIL": "wtmesh@localhost"}
_SHOWN_PATHS = 5  # how many differing files a note names


def undelivered(git: Git, scratch: Path, parent: Sha, commit: Sha,
                patch: Path | None = None) -> str | None:
    """None when ``git am`` of ``commit``'s patch (or of the mail in ``patch``) onto
    ``parent``, in a worktree made at ``scratch`` for the check, gives the tree of
    ``commit``; else what it gives instead."""
    git.worktree_remove(scratch)  # a check cut off by a crash
    mail = scratch.with_name(f"{scratch.name}.patch")
    try:
        if patch is None:
            with open(mail, "wb") as out:  # on disk: a patch is as large as its diff
                git.format_patch(commit, out)
            patch = mail
        return _check(git, scratch, parent, commit, patch)
    except (CommandError, OSError) as exc:  # not shown to reproduce: not delivered
        return f"its patch could not be checked: {exc}"
    finally:
        git.worktree_remove(scratch)
        mail.unlink(missing_ok=True)


def _check(git: Git, scratch: Path, parent: Sha, commit: Sha, patch: Path) -> str | None:
    scratch.mkdir(parents=True)
    git.private.make_admin(scratch, parent)
    git.run("read-tree", parent, cwd=scratch)
    # What the patch changes and the parent has (the old side of a change): apply reads
    # those files; added paths must not be there.
    present = [c.paths[0] for c in git.changes(parent, commit) if c.old_mode != "000000"]
    if present:
        listing = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in present)
        git.run("checkout-index", "-q", "-f", "-u", "-z", "--stdin", cwd=scratch,
                input=listing)
    applied = git.run("am", *_AM_OPTIONS, str(patch), cwd=scratch, env=_COMMITTER,
                      check=False)
    made = git.run("rev-list", f"{parent}..HEAD", "--", cwd=scratch).text.split()
    if applied.returncode != 0 or len(made) != 1:
        why = [line for line in applied.stderr.decode("utf-8", "replace").splitlines()
               if line.strip()]
        return (f"git am of its patch onto {parent[:12]} fails: "
                f"{why[0] if why else f'it made {len(made)} commits, not one'}")
    got, want = git.tree_of(made[0]), git.tree_of(commit)
    if got == want:
        return None
    differ = [decode_path(p) for p in git.run_on_objects(
        "diff-tree", "-r", "-z", "--name-only", "--no-renames", want, got).stdout.split(b"\0")
        if p]
    shown = ", ".join(differ[:_SHOWN_PATHS]) + (", ..." if differ[_SHOWN_PATHS:] else "")
    return (f"git am of its patch onto {parent[:12]} does not give the unit's tree: "
            f"{shown or 'the trees differ'}")
