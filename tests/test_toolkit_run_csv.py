"""`wtmesh run-csv` without --execute: the checks on a wave CSV and the prepared output."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from conftest import MESH_HEADER, Result, one_error_line, wtmesh


def run_csv(tmp_path: Path, *args: str | Path) -> Result:
    return wtmesh("run-csv", *args, cwd=tmp_path)


def wave_csv(tmp_path: Path, text: str, name: str = "wave.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


GOOD = (MESH_HEADER + "\r\nu1,one,src/,,,,commit_first,1,baseline,unknown\r\n"
        "u2,two,docs/,,,,commit_first,1,baseline,unknown\r\n")


def test_prepares_queued_pending_rows(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, GOOD)
    res = run_csv(tmp_path, "--csv-path", source, "--output-csv-path", tmp_path / "out.csv")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert res.json() == {"command": "run_csv", "row_count": 2, "csv_path": str(source),
                          "output_csv_path": str(tmp_path / "out.csv"), "status": "prepared"}
    assert (tmp_path / "out.csv").read_bytes() == (
        b"id,decision,proof_status,failure_code,notes\r\n"
        b"u1,queued,pending,,\r\nu2,queued,pending,,\r\n")
    assert source.read_bytes() == GOOD.encode()  # the input is untouched


def test_quotes_commas_quotes_and_newlines(tmp_path: Path) -> None:
    ids = ['a,b', 'say "hi"', "line1\nline2", "plain"]
    with open(tmp_path / "wave.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MESH_HEADER.split(","))
        for uid in ids:
            writer.writerow([uid, f"objective, of {uid}", "**", "", "", "", "", "", "", ""])
    res = run_csv(tmp_path, "--csv-path", "wave.csv", "--output-csv-path", "out.csv")
    assert res.returncode == 0, res.stderr
    assert res.json()["row_count"] == 4
    raw = (tmp_path / "out.csv").read_bytes()
    assert b'\r\n"a,b",queued,pending,,\r\n' in raw
    assert b'\r\n"say ""hi""",queued,pending,,\r\n' in raw
    assert b'\r\n"line1\nline2",queued,pending,,\r\n' in raw
    assert b"\r\nplain,queued,pending,,\r\n" in raw
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ids


def test_extra_columns_and_blank_lines_and_lf_endings_are_fine(tmp_path: Path) -> None:
    text = "note," + MESH_HEADER + "\nx,u1,o,,,,,,,,\n\n  \ny,u2,o,,,,,,,,\n"
    source = wave_csv(tmp_path, text)
    res = run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv")
    assert res.returncode == 0, res.stderr
    assert res.json()["row_count"] == 2


def test_a_header_without_rows_prepares_an_empty_output(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, MESH_HEADER + "\r\n")
    res = run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv")
    assert res.json()["row_count"] == 0
    assert (tmp_path / "o.csv").read_bytes() == b"id,decision,proof_status,failure_code,notes\r\n"


def test_execute_needs_rows(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, MESH_HEADER + "\r\n")
    assert "no rows to run" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv", "--execute",
                "--coder", "true"))
    assert not (tmp_path / "o.csv").exists()


def test_refuses_the_same_path_after_resolving(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, GOOD)
    (tmp_path / "sub").mkdir()
    os.symlink(source, tmp_path / "link.csv")
    os.link(source, tmp_path / "hard.csv")
    for output in (source, "wave.csv", "./wave.csv", tmp_path / "sub" / ".." / "wave.csv",
                   tmp_path / "link.csv", "hard.csv"):
        line = one_error_line(run_csv(tmp_path, "--csv-path", source, "--output-csv-path",
                                      output))
        assert "name the same file" in line, output
    assert source.read_bytes() == GOOD.encode()
    # A symlinked directory on the way is resolved too.
    os.symlink(tmp_path, tmp_path / "alias")
    line = one_error_line(run_csv(tmp_path, "--csv-path", "alias/wave.csv",
                                  "--output-csv-path", "wave.csv"))
    assert "name the same file" in line


@pytest.mark.parametrize("text, needle", [
    ("", "empty CSV (no header)"),
    ("\r\n  \n", "empty CSV (no header)"),
    ("id,objective\r\nu1,o\r\n", ("header lacks the mesh column(s) unit_scope, constraints, "
                                  "invariants, proof_command, delivery_mode, attempt, "
                                  "variant, budget_tier")),
    (MESH_HEADER.replace("variant,", "") + "\r\n", "header lacks the mesh column(s) variant"),
    (MESH_HEADER + ",id\r\n", "header names column(s) twice: id"),
    (MESH_HEADER + "\r\nu1,o,,,,,,,,\r\nu1,p,,,,,,,,\r\n",
     "line 3: duplicate id 'u1' (also line 2)"),
    (MESH_HEADER + "\r\nu1,o,,,,,,,,\r\n,p,,,,,,,,\r\n", "line 3: empty id"),
    (MESH_HEADER + "\r\nu1,o,,,\r\n", "line 2: 5 fields, the header has 10"),
    (MESH_HEADER + '\r\nu1,"unterminated,,,,,,,,\r\n', "malformed CSV"),
    (MESH_HEADER + '\r\nu1,"a"b,,,,,,,,\r\n', "malformed CSV"),
])
def test_refusals_are_one_line_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    source = wave_csv(tmp_path, text)
    line = one_error_line(run_csv(tmp_path, "--csv-path", source, "--output-csv-path",
                                  tmp_path / "out.csv"))
    assert needle in line and str(source) in line
    assert not (tmp_path / "out.csv").exists()


def test_duplicate_ids_across_quoted_newlines_name_the_right_line(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, MESH_HEADER + '\r\nu1,"two\nlines",,,,,,,,\r\nu1,o,,,,,,,,\r\n')
    assert "line 4: duplicate id 'u1' (also line 2)" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "out.csv"))


def test_missing_and_unreadable_inputs(tmp_path: Path) -> None:
    assert "no such CSV file" in one_error_line(
        run_csv(tmp_path, "--csv-path", "nope.csv", "--output-csv-path", "out.csv"))
    (tmp_path / "latin1.csv").write_bytes(MESH_HEADER.encode() + b"\r\nu1,caf\xe9,,,,,,,,\r\n")
    assert "not UTF-8" in one_error_line(
        run_csv(tmp_path, "--csv-path", "latin1.csv", "--output-csv-path", "out.csv"))
    source = wave_csv(tmp_path, GOOD)
    (tmp_path / "outdir").mkdir()
    assert "is a directory" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "outdir"))


def test_option_errors(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, GOOD)
    assert "Missing option '--output-csv-path'" in one_error_line(
        run_csv(tmp_path, "--csv-path", source))
    assert "--coder only go with --execute" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv", "--coder", "x"))
    assert "--execute needs --coder CMD" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv", "--execute"))
    assert "'sideways' is not one of" in one_error_line(
        run_csv(tmp_path, "--csv-path", source, "--output-csv-path", "o.csv", "--execute",
                "--coder", "true", "--delivery", "sideways"))
    assert not (tmp_path / "o.csv").exists()


def test_underscore_alias_is_the_same_command(tmp_path: Path) -> None:
    source = wave_csv(tmp_path, GOOD)
    res = wtmesh("run_csv", "--csv-path", source, "--output-csv-path", "o.csv", cwd=tmp_path)
    assert res.returncode == 0 and res.json()["status"] == "prepared"
    results = [wtmesh(name, "--help", cwd=tmp_path) for name in ("run-csv", "run_csv")]
    assert all(r.returncode == 0 and "--csv-path" in r.stdout for r in results)
    helps = [r.stdout for r in results]
    assert helps[0].replace("run-csv", "X") == helps[1].replace("run_csv", "X")
