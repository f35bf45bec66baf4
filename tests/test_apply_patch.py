"""apply_patch: Codex's patch format applied to a real directory, safely and all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from worktree_mesh.apply_patch import PatchFormatError, apply, is_apply_patch


def patch(*body: str) -> str:
    return "\n".join(["*** Begin Patch", *body, "*** End Patch"]) + "\n"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under root, to prove nothing changed."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def test_is_apply_patch() -> None:
    assert is_apply_patch("*** Begin Patch\n*** End Patch\n")
    assert is_apply_patch("\n  *** Begin Patch\n")
    assert is_apply_patch("<<'EOF'\n*** Begin Patch\n*** End Patch\nEOF\n")
    assert not is_apply_patch("diff --git a/x b/x\n")
    assert not is_apply_patch("")


def test_add_file_creates_parents(tmp_path: Path) -> None:
    touched = apply(patch("*** Add File: pkg/new.txt", "+line one", "+line two"), tmp_path)
    assert touched == ["pkg/new.txt"]
    assert (tmp_path / "pkg" / "new.txt").read_bytes() == b"line one\nline two\n"


def test_delete_file(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("bye\n")
    assert apply(patch("*** Delete File: old.txt"), tmp_path) == ["old.txt"]
    assert not (tmp_path / "old.txt").exists()


def test_update_with_hint_and_context(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "def g():\n    x = 0\n    return 1\n\ndef f():\n    x = 0\n    return 1\n"
    )
    text = patch(
        "*** Update File: m.py",
        "@@ def f():",
        "     x = 0",
        "-    return 1",
        "+    return 2",
    )
    assert apply(text, tmp_path) == ["m.py"]
    # The hint skips g's identical lines; only f's are replaced.
    assert (tmp_path / "m.py").read_text() == (
        "def g():\n    x = 0\n    return 1\n\ndef f():\n    x = 0\n    return 2\n"
    )


def test_first_chunk_may_omit_its_header(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("import foo\n")
    apply(patch("*** Update File: a.txt", " import foo", "+bar"), tmp_path)
    assert (tmp_path / "a.txt").read_text() == "import foo\nbar\n"


def test_multiple_chunks(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a\nb\nc\nd\ne\nf\n")
    text = patch(
        "*** Update File: m.txt",
        "@@",
        " a",
        "-b",
        "+B",
        "@@",
        " d",
        "-e",
        "+E",
    )
    apply(text, tmp_path)
    assert (tmp_path / "m.txt").read_text() == "a\nB\nc\nd\nE\nf\n"


def test_chunks_must_be_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a\nb\nc\n")
    text = patch("*** Update File: m.txt", "@@", "-c", "+C", "@@", "-a", "+A")
    with pytest.raises(PatchFormatError, match="context not found: 'a'"):
        apply(text, tmp_path)


def test_end_of_file_anchor(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("x\nend\nmid\nend\n")
    text = patch("*** Update File: e.txt", "@@", "-end", "+END", "*** End of File")
    apply(text, tmp_path)
    # Without the anchor the first "end" would be the one replaced.
    assert (tmp_path / "e.txt").read_text() == "x\nend\nmid\nEND\n"


def test_end_of_file_anchor_requires_the_end(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("end\ntail\n")
    text = patch("*** Update File: e.txt", "@@", "-end", "+END", "*** End of File")
    with pytest.raises(PatchFormatError, match="context not found"):
        apply(text, tmp_path)


def test_pure_addition_appends_at_end(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a\nb")  # no final newline: one is added, as Codex does
    apply(patch("*** Update File: p.txt", "@@", "+c", "*** End of File"), tmp_path)
    assert (tmp_path / "p.txt").read_text() == "a\nb\nc\n"


def test_move_and_update(tmp_path: Path) -> None:
    src = tmp_path / "src" / "old.py"
    src.parent.mkdir()
    src.write_text("value = 1\n")
    src.chmod(0o755)
    text = patch(
        "*** Update File: src/old.py",
        "*** Move to: lib/new.py",
        "@@",
        "-value = 1",
        "+value = 2",
    )
    assert apply(text, tmp_path) == ["src/old.py", "lib/new.py"]
    assert not src.exists()
    dest = tmp_path / "lib" / "new.py"
    assert dest.read_text() == "value = 2\n"
    assert dest.stat().st_mode & 0o777 == 0o755


def test_move_onto_existing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    before = snapshot(tmp_path)
    text = patch("*** Update File: a.txt", "*** Move to: b.txt", "@@", "-a", "+A")
    with pytest.raises(PatchFormatError, match="b.txt: cannot move a.txt there"):
        apply(text, tmp_path)
    assert snapshot(tmp_path) == before


def test_whitespace_tolerant_matching(tmp_path: Path) -> None:
    (tmp_path / "w.py").write_text("if x:   \n\tcall()\t\n")
    # Trailing spaces missing from the patch, and different indentation. As in Codex, the
    # matched region (context lines included) is replaced by the patch's own lines.
    text = patch("*** Update File: w.py", "@@", " if x:", "-    call()", "+    done()")
    apply(text, tmp_path)
    assert (tmp_path / "w.py").read_text() == "if x:\n    done()\n"


def test_unicode_punctuation_is_normalised(tmp_path: Path) -> None:
    (tmp_path / "u.py").write_text("x = 1  # local import \u2013 avoids top\u2011level dep\n")
    text = patch(
        "*** Update File: u.py",
        "@@",
        "-x = 1  # local import - avoids top-level dep",
        "+x = 2",
    )
    apply(text, tmp_path)
    assert (tmp_path / "u.py").read_text() == "x = 2\n"


def test_non_utf8_bytes_in_untouched_lines_survive(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"caf\xe9 latin-1\nold\n\xff\xfe tail\n")
    apply(patch("*** Update File: bin.txt", "@@", "-old", "+new"), tmp_path)
    assert (tmp_path / "bin.txt").read_bytes() == b"caf\xe9 latin-1\nnew\n\xff\xfe tail\n"


def test_crlf_file_stays_crlf(tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_bytes(b"a\r\nb\r\n")
    apply(patch("*** Update File: w.txt", "@@", " a", "-b", "+B", "+c"), tmp_path)
    assert (tmp_path / "w.txt").read_bytes() == b"a\r\nB\r\nc\r\n"


def test_lenient_wrapper_and_whitespace(tmp_path: Path) -> None:
    text = "<<'EOF'\n  *** Begin Patch \n*** Add File: h.txt\n+hi\n *** End Patch\nEOF\n"
    assert apply(text, tmp_path) == ["h.txt"]
    assert (tmp_path / "h.txt").read_text() == "hi\n"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute"),
        ("C:/x.txt", "absolute"),
        ("../outside.txt", "'..'"),
        ("a/../../outside.txt", "'..'"),
        (".git/config", ".git"),
        ("sub/.GIT/hooks/pre-commit", ".git"),
    ],
)
def test_unsafe_paths_are_refused(tmp_path: Path, path: str, message: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(PatchFormatError, match=message):
        apply(patch(f"*** Add File: {path}", "+x"), root)
    assert snapshot(tmp_path) == before


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("keep\n")
    (root / "link").symlink_to(outside)
    before = snapshot(tmp_path)
    for text in (
        patch("*** Add File: link/new.txt", "+x"),
        patch("*** Update File: link/secret.txt", "@@", "-keep", "+gone"),
        patch("*** Delete File: link/secret.txt"),
    ):
        with pytest.raises(PatchFormatError, match="outside the root"):
            apply(text, root)
    assert snapshot(tmp_path) == before


def test_symlink_into_git_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "g").symlink_to(tmp_path / ".git")
    with pytest.raises(PatchFormatError, match="into .git"):
        apply(patch("*** Add File: g/config", "+x"), tmp_path)
    assert not (tmp_path / ".git" / "config").exists()


def test_add_onto_existing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("mine\n")
    with pytest.raises(PatchFormatError, match="a.txt: cannot add, it already exists"):
        apply(patch("*** Add File: a.txt", "+theirs"), tmp_path)
    assert (tmp_path / "a.txt").read_text() == "mine\n"


def test_update_or_delete_of_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PatchFormatError, match="nope.txt: cannot update, no such file"):
        apply(patch("*** Update File: nope.txt", "@@", "-a", "+b"), tmp_path)
    with pytest.raises(PatchFormatError, match="nope.txt: cannot delete, no such file"):
        apply(patch("*** Delete File: nope.txt"), tmp_path)


def test_context_not_found(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("def f():\n    return 3\n")
    with pytest.raises(PatchFormatError, match=r"^f.py: context not found: '    return 1'$"):
        apply(patch("*** Update File: f.py", "@@", "-    return 1", "+    return 2"), tmp_path)
    with pytest.raises(PatchFormatError, match="context not found: '@@ def g\\(\\):'"):
        apply(patch("*** Update File: f.py", "@@ def g():", "-    return 3", "+x"), tmp_path)
    assert (tmp_path / "f.py").read_text() == "def f():\n    return 3\n"


def test_missing_end_patch(tmp_path: Path) -> None:
    text = "*** Begin Patch\n*** Add File: a.txt\n+a\n"
    with pytest.raises(PatchFormatError, match=r"^line 3: expected '\*\*\* End Patch'$"):
        apply(text, tmp_path)
    assert not (tmp_path / "a.txt").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            ["*** Frobnicate File: a"],
            r"line 2: expected '\*\*\* Add/Delete/Update File: <path>', got '\*\*\* Frob",
        ),
        (["*** Update File: a"], "line 2: update of 'a' has no changes"),
        (["*** Update File: a", "@@", " x", "junk"], "line 5: expected '@@', got 'junk'"),
        (["*** Update File: a", "@@", " x", "@@"], "line 5: empty chunk"),
        (["*** Update File: a", "@@", "*** End of File"], "line 4: expected ' ', '-' or '\\+'"),
        (
            ["*** Add File: b", "oops"],
            r"line 3: expected '\*\*\* Add/Delete/Update File: <path>', got 'oops'",
        ),
        ([], "changes no files"),
    ],
)
def test_malformed_patches(tmp_path: Path, body: list[str], message: str) -> None:
    (tmp_path / "a").write_text("x\n")
    with pytest.raises(PatchFormatError, match=message):
        apply(patch(*body), tmp_path)
    assert (tmp_path / "a").read_text() == "x\n"


def test_missing_begin_patch(tmp_path: Path) -> None:
    with pytest.raises(PatchFormatError, match=r"^line 1: expected '\*\*\* Begin Patch'$"):
        apply("*** Add File: a\n+a\n*** End Patch\n", tmp_path)


def test_failure_in_second_hunk_leaves_everything_unchanged(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("first\n")
    (tmp_path / "two.txt").write_text("second\n")
    before = snapshot(tmp_path)
    text = patch(
        "*** Update File: one.txt",
        "@@",
        "-first",
        "+FIRST",
        "*** Add File: dir/three.txt",
        "+three",
        "*** Update File: two.txt",
        "@@",
        "-not there",
        "+x",
    )
    with pytest.raises(PatchFormatError, match="two.txt: context not found"):
        apply(text, tmp_path)
    assert snapshot(tmp_path) == before


def test_hunks_see_earlier_hunks(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("file\n")
    text = patch(
        "*** Delete File: a",
        "*** Add File: a/b.txt",  # a file makes way for a directory of the same name
        "+one",
        "*** Update File: a/b.txt",
        "@@",
        "-one",
        "+two",
    )
    assert apply(text, tmp_path) == ["a", "a/b.txt"]
    assert (tmp_path / "a" / "b.txt").read_text() == "two\n"


def test_add_below_an_existing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("file\n")
    with pytest.raises(PatchFormatError, match="parent a is a file"):
        apply(patch("*** Add File: a/b.txt", "+x"), tmp_path)
    assert (tmp_path / "a").read_text() == "file\n"


def test_write_error_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "gone.txt").write_text("gone\n")
    before = snapshot(tmp_path)
    real_write = Path.write_bytes

    def failing_write(self: Path, data: bytes) -> int:
        if self.name == "c.txt":
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    text = patch(
        "*** Delete File: gone.txt",
        "*** Update File: a.txt",
        "@@",
        "-a",
        "+A",
        "*** Add File: new/b.txt",
        "+b",
        "*** Add File: new/deeper/c.txt",
        "+c",
    )
    with pytest.raises(PatchFormatError, match="new/deeper/c.txt: cannot write: No space left"):
        apply(text, tmp_path)
    assert snapshot(tmp_path) == before
