"""Apply a patch in the "apply_patch" format of OpenAI Codex to a worktree directory.

Lanes may answer with such a patch instead of editing files. Parsing and context matching
follow Codex (codex-rs/apply-patch) so patches written for Codex apply the same way here;
on top of that every path is confined to the root, and the patch is all-or-nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

BEGIN, END = "*** Begin Patch", "*** End Patch"
ADD, DELETE, UPDATE = "*** Add File: ", "*** Delete File: ", "*** Update File: "
MOVE, EOF_MARK = "*** Move to: ", "*** End of File"
# Codex's lenient mode accepts the patch still wrapped in the heredoc a shell would have eaten.
HEREDOC_OPENERS = ("<<EOF", "<<'EOF'", '<<"EOF"')


class PatchFormatError(ValueError):
    """The patch cannot be parsed or applied; nothing was written. The message is one line."""


@dataclass
class _Chunk:
    hint: str | None  # the text after "@@ ": a line to find before the old lines
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    eof: bool = False  # "*** End of File": the old lines must end the file


@dataclass
class _Hunk:
    kind: str  # "add" | "delete" | "update"
    path: str
    line: int
    content: str = ""
    move_to: str | None = None
    chunks: list[_Chunk] = field(default_factory=list)


def _lines(text: str) -> tuple[list[str], int]:
    """The stripped text's lines and the line number of the first one in the original text."""
    first = text[: len(text) - len(text.lstrip())].count("\n") + 1
    return [line.removesuffix("\r") for line in text.strip().split("\n")], first


def is_apply_patch(text: str) -> bool:
    """True when text (after stripping leading whitespace / a heredoc wrapper) starts with
    '*** Begin Patch'."""
    lines, _ = _lines(text)
    if lines[0].rstrip() in HEREDOC_OPENERS:
        lines = lines[1:]
    return bool(lines) and lines[0].strip() == BEGIN


def _body(text: str) -> tuple[list[str], int]:
    """The lines between the Begin/End markers and the line number of the first of them."""
    lines, first = _lines(text)
    if lines[0].rstrip() in HEREDOC_OPENERS and lines[-1].endswith("EOF") and len(lines) >= 4:
        lines, first = lines[1:-1], first + 1
    if lines[0].strip() != BEGIN:
        raise PatchFormatError(f"line {first}: expected '{BEGIN}'")
    if len(lines) < 2 or lines[-1].strip() != END:
        raise PatchFormatError(f"line {first + len(lines) - 1}: expected '{END}'")
    return lines[1:-1], first + 1


def _parse(text: str) -> list[_Hunk]:
    body, first = _body(text)
    hunks: list[_Hunk] = []
    i = 0
    while i < len(body):
        number, head = first + i, body[i].strip()
        i += 1
        if head.startswith(ADD):
            added: list[str] = []
            while i < len(body) and body[i].startswith("+"):
                added.append(body[i][1:] + "\n")
                i += 1
            hunks.append(_Hunk("add", head[len(ADD) :], number, content="".join(added)))
        elif head.startswith(DELETE):
            hunks.append(_Hunk("delete", head[len(DELETE) :], number))
        elif head.startswith(UPDATE):
            hunk = _Hunk("update", head[len(UPDATE) :], number)
            if i < len(body) and body[i].strip().startswith(MOVE):
                hunk.move_to = body[i].strip()[len(MOVE) :]
                i += 1
            while i < len(body):
                if not body[i].strip():  # blank lines may separate chunks
                    i += 1
                elif body[i].startswith("*"):  # the next hunk (or a stray marker)
                    break
                else:
                    i = _parse_chunk(body, i, first, hunk)
            if not hunk.chunks:
                raise PatchFormatError(f"line {number}: update of '{hunk.path}' has no changes")
            hunks.append(hunk)
        else:
            msg = f"expected '*** Add/Delete/Update File: <path>', got {head!r}"
            raise PatchFormatError(f"line {number}: {msg}")
    return hunks


def _parse_chunk(body: list[str], i: int, first: int, hunk: _Hunk) -> int:
    """Parse one chunk starting at body[i] into hunk; return the index after it."""
    line, head = body[i], i
    chunk = _Chunk(None)
    if line.rstrip() == "@@" or line.startswith("@@ "):
        chunk.hint = line[3:] if line[3:].strip() else None
        i += 1
    elif hunk.chunks:  # only the first chunk may omit its "@@" line
        raise PatchFormatError(f"line {first + i}: expected '@@', got {line!r}")
    start = i
    while i < len(body):
        line = body[i]
        if line.rstrip() == EOF_MARK and i > start:
            chunk.eof = True
            i += 1
            break
        tag, rest = line[:1], line[1:]  # an empty line is an empty context line, as in Codex
        if tag not in ("", " ", "-", "+"):
            if i > start:
                break  # the start of the next chunk or hunk
            raise PatchFormatError(f"line {first + i}: expected ' ', '-' or '+', got {line!r}")
        if tag != "+":
            chunk.old.append(rest)
        if tag != "-":
            chunk.new.append(rest)
        i += 1
    if i == start:
        raise PatchFormatError(f"line {first + head}: empty chunk in '{hunk.path}'")
    hunk.chunks.append(chunk)
    return i


# Codex's last matching pass folds typographic punctuation to ASCII, so a patch typed with
# plain '-' and quotes still finds lines containing en dashes, curly quotes or odd spaces.
_PUNCT = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-")
    | dict.fromkeys("\u2018\u2019\u201a\u201b", "'")
    | dict.fromkeys("\u201c\u201d\u201e\u201f", '"')
    | dict.fromkeys("\u00a0\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a", " ")
    | dict.fromkeys("\u202f\u205f\u3000", " ")
)
_PASSES: tuple[Callable[[str], str], ...] = (
    lambda s: s,
    str.rstrip,
    str.strip,
    lambda s: s.strip().translate(_PUNCT),
)


def _seek(lines: list[str], pattern: list[str], start: int, eof: bool) -> int | None:
    """Index of pattern in lines at or after start, trying ever looser comparisons."""
    if not pattern:
        return start
    last = len(lines) - len(pattern)
    if eof:  # only the end of the file will do (and never before what is already matched)
        start = max(start, last)
    for norm in _PASSES:
        want = [norm(p) for p in pattern]
        for i in range(start, last + 1):
            if all(norm(lines[i + k]) == w for k, w in enumerate(want)):
                return i
    return None


def _show(lines: list[str]) -> str:
    return repr("\n".join(lines))[:200]


def _updated(rel: str, data: bytes, chunks: list[_Chunk]) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    # Keep a file that uses CRLF throughout in CRLF (what Codex does on Windows).
    crlf = "\n" in text and text.count("\r\n") == text.count("\n")
    lines = text.replace("\r\n", "\n").split("\n") if crlf else text.split("\n")
    if lines[-1] == "":
        lines.pop()
    edits: list[tuple[int, int, list[str]]] = []
    pos = 0
    for chunk in chunks:
        if chunk.hint is not None:
            at = _seek(lines, [chunk.hint], pos, False)
            if at is None:
                raise PatchFormatError(f"{rel}: context not found: {('@@ ' + chunk.hint)!r}")
            pos = at + 1
        if not chunk.old:  # Codex appends a chunk without old lines at the end of the file
            end = len(lines) - 1 if lines and lines[-1] == "" else len(lines)
            edits.append((end, 0, chunk.new))
            continue
        old, new = chunk.old, chunk.new
        at = _seek(lines, old, pos, chunk.eof)
        if at is None and old[-1] == "":  # a trailing empty line may stand for the final newline
            old, new = old[:-1], new[:-1] if new and new[-1] == "" else new
            at = _seek(lines, old, pos, chunk.eof)
        if at is None:
            raise PatchFormatError(f"{rel}: context not found: {_show(chunk.old)}")
        edits.append((at, len(old), new))
        pos = at + len(old)
    for at, count, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[at : at + count] = new
    # The result always ends with a newline (as in Codex, which however drops a final blank line).
    out = "".join(line + "\n" for line in lines)
    return (out.replace("\n", "\r\n") if crlf else out).encode("utf-8", "surrogateescape")


class _Tree:
    """The root's files with the patch's pending changes laid over them; written by commit()."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files: dict[str, bytes | None] = {}  # pending content; None = deleted
        self.saved: dict[str, tuple[bytes, int] | None] = {}  # what was on disk, for rollback
        self.modes: dict[str, int] = {}  # permissions carried over by a move

    def check(self, raw: str, line: int) -> str:
        """The normalised root-relative form of a patch path, refusing anything unsafe."""
        if not raw.strip():
            raise PatchFormatError(f"line {line}: empty path")
        if raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive:
            raise PatchFormatError(f"{raw}: absolute paths are not allowed")
        names = raw.replace("\\", "/").split("/")  # backslashes count as separators here
        if ".." in names:
            raise PatchFormatError(f"{raw}: '..' is not allowed in paths")
        if any(name.lower() == ".git" for name in names):
            raise PatchFormatError(f"{raw}: paths inside .git are not allowed")
        rel = "/".join(p for p in raw.split("/") if p not in ("", "."))
        if not rel:
            raise PatchFormatError(f"{raw}: does not name a file")
        try:
            real = (self.root / rel).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise PatchFormatError(f"{raw}: cannot resolve: {exc}") from exc
        if real == self.root or not real.is_relative_to(self.root):
            raise PatchFormatError(f"{raw}: resolves outside the root directory")
        if any(p.lower() == ".git" for p in real.relative_to(self.root).parts):
            raise PatchFormatError(f"{raw}: resolves into .git")
        return rel

    def read(self, rel: str) -> bytes | None:
        if rel in self.files:
            return self.files[rel]
        path = self.root / rel
        return path.read_bytes() if path.is_file() else None

    def occupied(self, rel: str) -> bool:
        """Something (a file, a directory, a dangling link, a pending file) is at rel."""
        if rel in self.files:
            return self.files[rel] is not None
        path = self.root / rel
        if path.exists() or path.is_symlink():
            return True
        return any(k.startswith(rel + "/") and v is not None for k, v in self.files.items())

    def mode(self, rel: str) -> int | None:
        """Permissions of the file now at rel (None for one added by this patch)."""
        if rel not in self.saved:
            return (self.root / rel).stat().st_mode
        return self.modes.get(rel) or (self.saved[rel] or (b"", None))[1]

    def write(self, rel: str, data: bytes | None, mode: int | None = None) -> None:
        if data is not None:
            parts = rel.split("/")
            for k in range(1, len(parts)):
                if self.read("/".join(parts[:k])) is not None:
                    raise PatchFormatError(f"{rel}: parent {'/'.join(parts[:k])} is a file")
        if rel not in self.saved:
            path = self.root / rel
            self.saved[rel] = (path.read_bytes(), path.stat().st_mode) if path.is_file() else None
        self.files[rel] = data
        if mode is not None:
            self.modes[rel] = mode

    def commit(self) -> None:
        """Write every pending change; on an OS error put back what was already written."""
        done: list[str] = []
        made: list[Path] = []
        try:
            # Deletions first, so a file may make way for a directory of the same name.
            for rel in sorted(self.files, key=lambda r: self.files[r] is not None):
                data, path = self.files[rel], self.root / rel
                done.append(rel)
                if data is None:
                    if self.saved[rel] is not None:
                        path.unlink()
                    continue
                dirs = [self.root / d for d in reversed(PurePosixPath(rel).parents)][1:]
                made += [d for d in dirs if not d.exists()]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                if rel in self.modes:
                    os.chmod(path, self.modes[rel] & 0o7777)
        except OSError as exc:
            for rel in reversed(done):
                with contextlib.suppress(OSError):
                    saved, path = self.saved[rel], self.root / rel
                    if saved is None:
                        path.unlink(missing_ok=True)
                    else:
                        path.write_bytes(saved[0])
                        os.chmod(path, saved[1] & 0o7777)
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise PatchFormatError(f"{done[-1]}: cannot write: {exc.strerror or exc}") from exc


def apply(text: str, root: Path) -> list[str]:
    """Apply the patch under root; return the repo-relative paths touched (for a move: both
    old and new), in patch order. Raises PatchFormatError (nothing written) when it cannot be
    parsed or applied."""
    hunks = _parse(text)
    if not hunks:
        raise PatchFormatError("the patch changes no files")
    if not Path(root).is_dir():
        raise PatchFormatError(f"{root}: not a directory")
    tree = _Tree(Path(root))
    touched: list[str] = []
    for hunk in hunks:
        rel = tree.check(hunk.path, hunk.line)
        touched.append(rel)
        if hunk.kind == "add":
            if tree.occupied(rel):
                raise PatchFormatError(f"{rel}: cannot add, it already exists")
            tree.write(rel, hunk.content.encode("utf-8", "surrogateescape"))
            continue
        old = tree.read(rel)
        if old is None:
            raise PatchFormatError(f"{rel}: cannot {hunk.kind}, no such file")
        if hunk.kind == "delete":
            tree.write(rel, None)
            continue
        new = _updated(rel, old, hunk.chunks)
        if hunk.move_to is None:
            tree.write(rel, new)
            continue
        dest = tree.check(hunk.move_to, hunk.line + 1)
        if tree.occupied(dest):
            raise PatchFormatError(f"{dest}: cannot move {rel} there, it already exists")
        tree.write(dest, new, tree.mode(rel))
        tree.write(rel, None)
        touched.append(dest)
    tree.commit()
    return list(dict.fromkeys(touched))
