"""Bad input through the real CLI: the documented exit code, a message naming the problem and
the file or setting, and nothing applied."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Database

GOOD = "CREATE TABLE IF NOT EXISTS good (id int);\n"
# Root reads any file; without these capabilities it cannot, so unreadable really means unreadable.
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def nothing_applied(db: Database) -> bool:
    return db.query("SELECT to_regclass('good'), to_regclass('migration_history')") == [(None, None)] or db.query(
        "SELECT to_regclass('good')"
    ) == [(None,)]


CASES = {
    "non-UTF-8 bytes": ({"002_bad.sql": b"SELECT 'caf\xe9';\n"}, 3, "002_bad.sql: not valid UTF-8 at byte offset 11"),
    "empty file": ({"002_bad.sql": b""}, 3, "002_bad.sql: file is empty"),
    "comment-only file": ({"002_bad.sql": b"-- nothing\n/* here */\n"}, 3, "002_bad.sql: has no SQL statement"),
    "binary garbage": ({"002_bad.sql": bytes(range(256)) * 4}, 3, "002_bad.sql: NUL byte at byte offset 0"),
    "name with a space": ({"002 bad.sql": b"SELECT 1;"}, 3, "002 bad.sql: name must match"),
    "upper-case name": ({"002_Bad.sql": b"SELECT 1;"}, 3, "002_Bad.sql: name must match"),
    "unknown directive": (
        {"002_bad.sql": b"-- runner: turbo\nSELECT 1;\n"},
        3,
        "002_bad.sql:1: unknown directive 'turbo'",
    ),
    "transaction control": ({"002_bad.sql": b"SELECT 1;\nCOMMIT;\n"}, 3, "002_bad.sql:2: transaction control (COMMIT)"),
    "psql meta-command": ({"002_bad.sql": b"\\set x 1\nSELECT 1;\n"}, 3, "002_bad.sql:1: psql meta-command"),
    "gap in versions": ({"003_bad.sql": b"SELECT 1;"}, 3, "002 is missing before 003_bad.sql"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_files(db: Database, case: str) -> None:
    """Each bad file: exit 3, the file named, nothing applied (not even the good file before it)."""
    files, code, message = CASES[case]
    db.write("001_good.sql", GOOD)
    for name, content in files.items():
        (db.migrations / name).write_bytes(content)
    result = db.run("migrate")
    assert result.code == code
    assert message in result.one("run_failed")["error"]
    assert nothing_applied(db)


def test_bom_is_accepted(db: Database) -> None:
    """A UTF-8 byte-order mark is accepted and applied."""
    (db.migrations / "001_good.sql").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert db.run("migrate").code == 0
    assert db.query("SELECT to_regclass('good')::text") == [("good",)]


def test_fifty_megabyte_file(db: Database) -> None:
    """A 50 MB file is refused by size, named, before anything runs."""
    db.write("001_good.sql", GOOD)
    with (db.migrations / "002_huge.sql").open("wb") as f:
        f.write(b"-- " + b"x" * (50 * 1024 * 1024) + b"\nSELECT 1;\n")
    result = db.run("migrate")
    assert result.code == 3
    assert "002_huge.sql: 52428814 bytes is over the" in result.one("run_failed")["error"]
    assert nothing_applied(db)


def test_symlink_outside_directory(db: Database, tmp_path: Path) -> None:
    """A migration symlinked to a file outside the directory is refused."""
    db.write("001_good.sql", GOOD)
    outside = tmp_path / "elsewhere.sql"
    outside.write_text("DROP TABLE IF EXISTS everything;")
    (db.migrations / "002_link.sql").symlink_to(outside)
    result = db.run("migrate")
    assert result.code == 3
    assert "002_link.sql: resolves outside the migrations directory" in result.one("run_failed")["error"]
    assert nothing_applied(db)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_unreadable_file_and_directory(db: Database) -> None:
    """An unreadable file (exit 3) and an unreadable directory (exit 2) are named."""
    db.write("001_good.sql", GOOD)
    db.write("002_secret.sql", "SELECT 1;").chmod(0)
    env = db.env()
    as_plain_root = [*NO_DAC, *db.command()]
    result = db.run_argv([*as_plain_root, "migrate"], env=env)
    assert result.code == 3, result.stdout + result.stderr
    assert "002_secret.sql: cannot read: Permission denied" in result.one("run_failed")["error"]
    (db.migrations / "002_secret.sql").chmod(0o644)
    db.migrations.chmod(0)
    try:
        result = db.run_argv([*as_plain_root, "migrate"], env=env)
    finally:
        db.migrations.chmod(0o755)
    assert result.code == 2
    assert "cannot list: Permission denied" in result.one("run_failed")["error"]
    assert nothing_applied(db)


def test_missing_directory(db: Database) -> None:
    """A missing migrations directory: exit 2, the directory named."""
    result = db.run("migrate", "--migrations-dir", "/nonexistent/migrations")
    assert result.code == 2
    assert "/nonexistent/migrations does not exist" in result.one("run_failed")["error"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lock-wait-timeout", "soon", "--lock-wait-timeout: 'soon' is not a duration"),
        ("--ddl-lock-retries", "many", "--ddl-lock-retries: 'many' is not a whole number"),
        ("--log-format", "xml", "--log-format: 'xml' is not json or console"),
    ],
)
def test_bad_settings_name_the_setting(db: Database, flag: str, value: str, message: str) -> None:
    """A malformed setting: exit 2 and the setting named on stderr."""
    db.write("001_good.sql", GOOD)
    result = db.run("migrate", flag, value)
    assert result.code == 2
    assert message in result.stderr
    assert nothing_applied(db)
