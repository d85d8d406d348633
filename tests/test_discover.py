"""Discovery and analysis of migration files: names, numbering, encoding, statements."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runner.discover import analyse, discover
from runner.errors import ConfigError, ValidationError


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def discover_and_analyse(directory: Path) -> None:
    for migration in discover(directory):
        analyse(migration)


def problems(directory: Path) -> str:
    with pytest.raises(ValidationError) as info:
        discover_and_analyse(directory)
    return "; ".join(map(str, info.value.problems))


def test_orders_by_version_and_ignores_other_files(tmp_path: Path) -> None:
    """Migrations come back in version order; README, dot files and sub-directories are ignored."""
    write(tmp_path, "002_b.sql", "SELECT 2;")
    write(tmp_path, "001_a.sql", "SELECT 1;")
    write(tmp_path, "README.md", "notes")
    write(tmp_path, ".#001_a.sql", "editor lock")
    (tmp_path / "archive").mkdir()
    write(tmp_path / "archive", "999_old.sql", "SELECT 0;")
    assert [(m.version, m.name) for m in discover(tmp_path)] == [(1, "001_a.sql"), (2, "002_b.sql")]


@pytest.mark.parametrize(
    "name",
    ["fix-amm-reserves.sql", "1_short.sql", "0001_long.sql", "003_Upper.sql", "004 space.sql", "005_dash-name.sql"],
)
def test_bad_sql_names_are_errors(tmp_path: Path, name: str) -> None:
    """A .sql file that does not match NNN_[a-z0-9_]+.sql is named in the error."""
    write(tmp_path, "001_a.sql", "SELECT 1;")
    write(tmp_path, name, "SELECT 1;")
    assert name in problems(tmp_path)


def test_duplicate_version_names_both_files(tmp_path: Path) -> None:
    """Two files with the same number: the error names both."""
    write(tmp_path, "001_a.sql", "SELECT 1;")
    write(tmp_path, "001_b.sql", "SELECT 1;")
    assert "duplicate version 001: 001_a.sql, 001_b.sql" in problems(tmp_path)


def test_gap_and_missing_start_are_errors(tmp_path: Path) -> None:
    """Versions must start at 001 and be contiguous."""
    write(tmp_path, "002_a.sql", "SELECT 1;")
    write(tmp_path, "004_b.sql", "SELECT 1;")
    found = problems(tmp_path)
    assert "001 is missing before 002_a.sql" in found
    assert "003 is missing before 004_b.sql" in found


def test_invalid_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    """Non-UTF-8 bytes: the error gives the byte offset."""
    write(tmp_path, "001_a.sql", b"SELECT 'caf\xe9';")
    assert "001_a.sql: not valid UTF-8 at byte offset 11" in problems(tmp_path)


def test_bom_accepted_and_checksum_unaffected(tmp_path: Path) -> None:
    """A UTF-8 BOM is dropped; CRLF is normalised; the checksum is SHA-256 of the LF text."""
    write(tmp_path, "001_a.sql", b"\xef\xbb\xbfSELECT 1;\r\nSELECT 2;\r\n")
    (migration,) = discover(tmp_path)
    assert migration.sql == "SELECT 1;\nSELECT 2;\n"
    assert migration.checksum == hashlib.sha256(b"SELECT 1;\nSELECT 2;\n").hexdigest()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("  \n\n", "file is empty"),
        ("-- only a comment\n/* and another */\n", "has no SQL statement"),
        (b"\x00\x01\x02binary", "NUL byte at byte offset 0"),
    ],
)
def test_empty_comment_only_and_binary_files(tmp_path: Path, content: str | bytes, expected: str) -> None:
    """Empty, comment-only and binary files are validation errors."""
    write(tmp_path, "001_a.sql", content)
    assert expected in problems(tmp_path)


@pytest.mark.parametrize(
    ("sql", "line", "word"),
    [
        ("CREATE TABLE t (id int);\nBEGIN;\nSELECT 1;\n", 2, "BEGIN"),
        ("SELECT 1;\n\nCOMMIT;\n", 3, "COMMIT"),
        ("START TRANSACTION;\nSELECT 1;\n", 1, "START"),
        ("SELECT 1;\nEND;\n", 2, "END"),
        ("SELECT 1;\nROLLBACK;\n", 2, "ROLLBACK"),
    ],
)
def test_transaction_control_is_refused_with_line(tmp_path: Path, sql: str, line: int, word: str) -> None:
    """Top-level transaction control is an error naming file and line."""
    write(tmp_path, "001_a.sql", sql)
    assert f"001_a.sql:{line}: transaction control ({word})" in problems(tmp_path)


def test_psql_meta_command_is_refused_with_line(tmp_path: Path) -> None:
    """A line starting with a backslash is a psql meta-command, refused with its line."""
    write(tmp_path, "001_a.sql", "SELECT 1;\n\\i other.sql\nSELECT 2;\n")
    assert "001_a.sql:2: psql meta-command" in problems(tmp_path)


def test_do_blocks_with_begin_end_are_fine(tmp_path: Path) -> None:
    """BEGIN/END inside a DO body and a function body are not transaction control."""
    write(
        tmp_path,
        "001_a.sql",
        """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'x') THEN
    RAISE NOTICE 'would add';
  END IF;
END $$;
CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN RETURN 1; END $f$;
""",
    )
    (migration,) = discover(tmp_path)
    analysis = analyse(migration)
    assert analysis.transactional
    assert [s.line for s in analysis.statements] == [2, 7]


def test_syntax_error_names_line(tmp_path: Path) -> None:
    """A syntax error is reported with the file and line."""
    write(tmp_path, "001_a.sql", "SELECT 1;\nCREATE TABLE (;\n")
    assert "001_a.sql:2: syntax error" in problems(tmp_path)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);",
        "DROP INDEX CONCURRENTLY IF EXISTS i;",
        "REINDEX INDEX CONCURRENTLY i;",
        "VACUUM t;",
        "ALTER SYSTEM SET work_mem = '8MB';",
        "CREATE DATABASE other;",
        "ALTER TABLE trades DETACH PARTITION trades_legacy CONCURRENTLY;",
    ],
)
def test_non_transactional_statements_are_detected(tmp_path: Path, sql: str) -> None:
    """Statements PostgreSQL refuses inside a transaction make the migration run in autocommit."""
    write(tmp_path, "001_a.sql", sql)
    (migration,) = discover(tmp_path)
    assert not analyse(migration).transactional


def test_directives(tmp_path: Path) -> None:
    """Header directives are parsed; unknown or malformed ones are errors with their line."""
    write(tmp_path, "001_a.sql", "-- runner: no-transaction lock-timeout=2s statement-timeout=30min\nSELECT 1;\n")
    (migration,) = discover(tmp_path)
    assert (
        migration.directives.no_transaction,
        migration.directives.lock_timeout,
        migration.directives.statement_timeout,
    ) == (True, 2.0, 1800.0)
    assert not analyse(migration).transactional
    write(tmp_path, "001_a.sql", "-- Migration: 001_a.sql\n-- runner: fast-mode\nSELECT 1;\n")
    assert "001_a.sql:2: unknown directive 'fast-mode'" in problems(tmp_path)
    write(tmp_path, "001_a.sql", "-- runner: lock-timeout=soon\nSELECT 1;\n")
    assert "lock-timeout='soon' needs a duration" in problems(tmp_path)


def test_symlink_outside_directory_is_refused(tmp_path: Path) -> None:
    """A migration that is a symlink resolving outside the directory is refused."""
    outside = write(tmp_path, "secret.sql", "SELECT 1;")
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "001_a.sql").symlink_to(outside)
    assert "001_a.sql: resolves outside the migrations directory" in problems(directory)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    """A 50 MB file is refused by size before it is read."""
    with (tmp_path / "001_big.sql").open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    assert "001_big.sql: 52428800 bytes is over" in problems(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    """An unreadable file is named in the error."""
    write(tmp_path, "001_a.sql", "SELECT 1;").chmod(0)
    assert "001_a.sql: cannot read" in problems(tmp_path)


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    """A missing migrations directory is a configuration error (exit 2)."""
    with pytest.raises(ConfigError, match="does not exist"):
        discover(tmp_path / "nope")


def test_statements_after_multibyte_text_keep_their_text_and_line(tmp_path: Path) -> None:
    """Multi-byte UTF-8 before and inside statements: each statement's text and line are exact."""
    write(
        tmp_path,
        "001_a.sql",
        "-- Müller's trädes, ünïcode\nSELECT 'ééé', 'ß';\n\nCREATE TABLE IF NOT EXISTS b (x text DEFAULT 'ø');\n",
    )
    (migration,) = discover(tmp_path)
    statements = analyse(migration).statements
    assert [(s.text, s.line) for s in statements] == [
        ("SELECT 'ééé', 'ß'", 2),
        ("CREATE TABLE IF NOT EXISTS b (x text DEFAULT 'ø')", 4),
    ]


def test_directives_only_in_the_leading_comment_block(tmp_path: Path) -> None:
    """A `-- runner:` comment after the first statement, or inside a function body, is just a comment."""
    body = (
        "-- Migration: 001_a.sql\n\nCREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n"
        "-- runner: no-transaction\nSELECT 1\n$$;\n-- runner: called by the nightly job\nSELECT f();\n"
    )
    write(tmp_path, "001_a.sql", body)
    (migration,) = discover(tmp_path)
    assert migration.directives.no_transaction is False
    assert analyse(migration).transactional


@pytest.mark.parametrize(
    "name", ["\u0660\u0660\u0661_arabic.sql", "\uff10\uff10\uff11_fullwidth.sql", " 001_a.sql", "001_a.sql "]
)
def test_versions_are_ascii_digits_and_names_have_no_spaces(tmp_path: Path, name: str) -> None:
    """Arabic-Indic or fullwidth digits, and surrounding spaces, make a bad name (exit 3), not a version."""
    write(tmp_path, name, "SELECT 1;")
    assert repr(name)[1:-1] in problems(tmp_path) or name in problems(tmp_path)


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO named like a migration is a validation error; discovery never opens it."""
    os.mkfifo(tmp_path / "001_a.sql")
    assert "001_a.sql: not a regular file" in problems(tmp_path)


def test_versions_past_999_sort_numerically(tmp_path: Path) -> None:
    """1000_x.sql follows 999_x.sql: versions are numbers of at least three digits."""
    for version in range(1, 1002):
        write(tmp_path, f"{version:03d}_m.sql", "SELECT 1;")
    found = discover(tmp_path)
    assert [m.name for m in found[-3:]] == ["999_m.sql", "1000_m.sql", "1001_m.sql"]
    assert found[-1].label == "1001"


@pytest.mark.parametrize("copy", ["COPY t FROM STDIN", "COPY t TO STDOUT", "COPY (SELECT 1) TO STDOUT"])
def test_copy_to_or_from_the_client_is_refused(tmp_path: Path, copy: str) -> None:
    """COPY FROM STDIN / TO STDOUT need a streaming client: a validation error naming file and line."""
    write(tmp_path, "001_a.sql", f"SELECT 1;\n{copy};\n")
    assert "001_a.sql:2: COPY ... " in problems(tmp_path)
