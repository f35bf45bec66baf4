#!/usr/bin/env bash
# The plain-git baseline for scripts/bench: the work of `wtmesh run`, done the way a
# person would do it with git alone.
#
#   bench-baseline.sh REPO UNITS_TSV PROOF_COMMAND [JOBS] [WORKDIR]
#
# UNITS_TSV has one unit a line: `id<TAB>objective<TAB>edit command` (the command runs
# through /bin/sh in the unit's worktree). For every unit, JOBS at a time (default 2,
# like wtmesh's max_active): `git worktree add` at the target's tip, run the edit,
# take `git diff`, `git worktree remove`. Then, one unit after another in file order,
# on the branch checked out in REPO: `git apply --index` the diff, run PROOF_COMMAND,
# commit when it passes, throw the change away when it fails.
#
# Prints one line per unit, `<id> integrated|proof_failed|apply_failed|no_diff`, and
# exits 0 when every unit integrated (or had nothing to change), 1 otherwise.
# Worktrees and diffs go to WORKDIR (default: a new temporary directory), never in REPO.
# It runs whatever git is on PATH with the caller's environment: scripts/bench makes
# that environment hermetic.
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 5 ]; then
    echo "usage: $0 REPO UNITS_TSV PROOF_COMMAND [JOBS] [WORKDIR]" >&2
    exit 2
fi
repo=$(cd "$1" && pwd)
units=$2
proof=$3
jobs=${4:-2}
workdir=${5:-$(mktemp -d "${TMPDIR:-/tmp}/bench-baseline.XXXXXX")}
mkdir -p "$workdir/diffs"
base=$(git -C "$repo" rev-parse HEAD)

# `git worktree add` racing a `git worktree remove` can fail: when remove empties
# .git/worktrees/ it deletes that directory while add is making its entry in it
# ("fatal: could not create directory of '.git/worktrees/wt-u-076'", git 2.39, seen at
# 200 units). A person would run it again, so we do, up to 3 times. Each retry is
# logged to stderr.
worktree_add() {
    local wt=$1 try
    for try in 1 2 3; do
        if git -C "$repo" worktree add -q --detach "$wt" "$base"; then
            return 0
        fi
        echo "bench-baseline: worktree add $wt failed (try $try), retrying" >&2
        rm -rf "$wt"
    done
    return 1
}

# One unit's worktree part: a fresh worktree, the edit, its diff, the worktree gone.
# `git add -A` first so new files would be in the diff too, as in wtmesh's.
unit_diff() {
    local id=$1 cmd=$2 wt="$workdir/wt-$1"
    worktree_add "$wt"
    (cd "$wt" && /bin/sh -c "$cmd" </dev/null)
    git -C "$wt" add -A
    git -C "$wt" diff --cached --binary --full-index >"$workdir/diffs/$id.diff"
    git -C "$repo" worktree remove --force "$wt"
}

# Phase 1: JOBS worktrees at a time. `wait -n` returns as soon as any one job ends,
# so a slot is refilled at once, as wtmesh's scheduler does; with `set -e` a failed
# job's status stops the script.
running=0
while IFS=$'\t' read -r id _objective cmd; do
    [ -n "$id" ] || continue
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    unit_diff "$id" "$cmd" &
    running=$((running + 1))
done <"$units"
while [ "$running" -gt 0 ]; do
    wait -n
    running=$((running - 1))
done

# Phase 2: integrate in order on the checked-out branch, one commit per unit whose
# proof passed. A failing proof takes the unit's change back completely.
failed=0
while IFS=$'\t' read -r id objective _cmd; do
    [ -n "$id" ] || continue
    diff="$workdir/diffs/$id.diff"
    if [ ! -s "$diff" ]; then
        echo "$id no_diff"
        continue
    fi
    if ! git -C "$repo" apply --index "$diff"; then
        echo "$id apply_failed"
        failed=1
        continue
    fi
    if (cd "$repo" && /bin/sh -c "$proof" </dev/null); then
        git -C "$repo" commit -q --no-verify -m "$id: $objective"
        echo "$id integrated"
    else
        git -C "$repo" reset -q --hard HEAD
        echo "$id proof_failed"
        failed=1
    fi
done <"$units"
exit "$failed"
