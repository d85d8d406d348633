"""Migration files -> ``Migration`` values; statement analysis with PostgreSQL's own parser.

Invariants:
- A migration is a regular file directly in the directory named ``NNN_[a-z0-9_]+.sql``;
  versions start at 001 and are contiguous. Other files, dot files and sub-directories are
  ignored; any other ``*.sql`` name is an error.
- Files are UTF-8 (a byte-order mark is dropped), hold no NUL byte, are at most
  ``MAX_FILE_BYTES``, and resolve inside the directory (no symlink escapes).
- ``checksum`` is SHA-256 of the text with CRLF normalised to LF and no BOM.
- ``discover`` reads and checksums every file but parses none; ``analyse`` parses one file
  (only pending files need it) and rejects transaction control and psql meta-commands.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import ConfigError, ValidationError

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
DIRECTIVE_LINE = re.compile(r"^--\s*runner:(.*)$", re.MULTILINE)
PG_DURATION = re.compile(r"^\d+(ms|s|min|h|d)?$")
MAX_FILE_BYTES = 10 * 1024 * 1024
BOM = b"\xef\xbb\xbf"

# Statements PostgreSQL refuses inside a transaction block (by parse-tree node type).
NON_TRANSACTIONAL_NODES = {
    "AlterSystemStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
}


@dataclass(frozen=True)
class Directives:
    """``-- runner: ...`` header settings of one file."""

    no_transaction: bool = False
    lock_timeout: str | None = None
    statement_timeout: str | None = None
    allow: tuple[tuple[str, str], ...] = ()  # (lint rule id, reason)


@dataclass(frozen=True)
class Migration:
    """One file, read and checksummed but not parsed."""

    version: int
    name: str
    path: Path
    sql: str
    checksum: str
    directives: Directives


@dataclass(frozen=True)
class Statement:
    """One top-level statement: its text and the 1-based line it starts on."""

    text: str
    line: int
    transactional: bool
    concurrent_index: str | None = None  # name built by CREATE INDEX CONCURRENTLY
    node: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # {"Kind": {...}}: for lint


@dataclass(frozen=True)
class Analysis:
    """A parsed migration: its statements, and whether it runs in one transaction."""

    statements: tuple[Statement, ...]
    transactional: bool


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_directives(name: str, sql: str) -> tuple[Directives, list[str]]:
    """The file's directives, and a problem for each unknown or malformed one.

    ``allow=RULE`` must come with ``reason="..."`` on the same line (lint checks the rule id).
    """
    values: dict[str, object] = {}
    allowed: list[tuple[str, str]] = []
    problems: list[str] = []
    for match in DIRECTIVE_LINE.finditer(sql):
        line = line_of(sql, match.start())
        try:
            words = shlex.split(match.group(1))
        except ValueError as exc:
            problems.append(f"{name}:{line}: directive line does not parse: {exc}")
            continue
        pairs = [word.partition("=") for word in words]
        reason = next((value for key, _, value in pairs if key == "reason"), "")
        for key, _, value in pairs:
            if key == "no-transaction" and not value:
                values["no_transaction"] = True
            elif key in {"lock-timeout", "statement-timeout"} and PG_DURATION.match(value):
                values[key.replace("-", "_")] = value
            elif key in {"lock-timeout", "statement-timeout"}:
                problems.append(f"{name}:{line}: directive {key}={value!r} needs a duration like 2s or 30min")
            elif key == "allow" and value and reason:
                allowed += [(rule, reason) for rule in value.split(",")]
            elif key == "allow":
                problems.append(f'{name}:{line}: allow={value} needs a rule id and reason="why" on the same line')
            elif key != "reason":
                problems.append(
                    f"{name}:{line}: unknown directive {key + ('=' + value if value else '')!r} "
                    "(known: no-transaction, lock-timeout=, statement-timeout=, allow= reason=)"
                )
    return Directives(**values, allow=tuple(allowed)), problems  # type: ignore[arg-type]


def read_migration(directory: Path, path: Path, version: int) -> tuple[Migration | None, list[str]]:
    name = path.name
    if not path.resolve().is_relative_to(directory.resolve()):
        return None, [f"{name}: resolves outside the migrations directory ({path.resolve()})"]
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [f"{name}: {path.stat().st_size} bytes is over the {MAX_FILE_BYTES}-byte limit"]
        raw = path.read_bytes()
    except OSError as exc:
        return None, [f"{name}: cannot read: {exc.strerror}"]
    skipped = len(BOM) if raw.startswith(BOM) else 0
    raw = raw[skipped:]
    if b"\x00" in raw:
        offset = raw.index(b"\x00") + skipped
        return None, [f"{name}: NUL byte at byte offset {offset}: not a text file"]
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        return None, [f"{name}: not valid UTF-8 at byte offset {exc.start + skipped}"]
    if not text.strip():
        return None, [f"{name}: file is empty"]
    directives, problems = parse_directives(name, text)
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return Migration(version, name, path, text, checksum, directives), problems


def discover(directory: Path) -> list[Migration]:
    """Every migration in ``directory``, in version order; raises on any rule broken."""
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        raise ConfigError(f"migrations directory {directory} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(f"migrations directory {directory} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"migrations directory {directory}: cannot list: {exc.strerror}") from None
    problems: list[str] = []
    by_version: dict[int, list[Path]] = {}
    for path in entries:
        if path.name.startswith(".") or (path.is_dir() and not path.is_symlink()):
            continue
        match = MIGRATION_NAME.match(path.name)
        if match:
            by_version.setdefault(int(match.group(1)), []).append(path)
        elif path.suffix.lower() == ".sql":
            problems.append(
                f"{path.name}: name must match NNN_description.sql "
                "(three digits, lower-case letters, digits, underscores)"
            )
    migrations: list[Migration] = []
    for version in sorted(by_version):
        paths = by_version[version]
        if len(paths) > 1:
            problems.append(f"duplicate version {version:03d}: " + ", ".join(p.name for p in paths))
            continue
        migration, file_problems = read_migration(directory, paths[0], version)
        problems += file_problems
        if migration:
            migrations.append(migration)
    expected = 1
    for version in sorted(by_version):
        if version != expected:
            problems.append(f"gap in versions: {expected:03d} is missing before {by_version[version][0].name}")
        expected = version + 1
    if problems:
        raise ValidationError(problems)
    return migrations


def _non_transactional(kind: str, body: dict[str, Any]) -> bool:
    if kind in NON_TRANSACTIONAL_NODES:
        return True
    if kind in {"IndexStmt", "DropStmt"}:
        return bool(body.get("concurrent"))
    if kind == "VacuumStmt":
        return bool(body.get("is_vacuumcmd"))
    if kind == "ReindexStmt":
        return any(p.get("DefElem", {}).get("defname") == "concurrently" for p in body.get("params", ()))
    return False


def analyse(migration: Migration) -> Analysis:
    """Parse one migration; raises ``ValidationError`` naming file and line on any problem.

    The parse tree comes as JSON built in C (several times faster than pglast's Python
    objects); its statement locations are byte offsets into the UTF-8 text.
    """
    from pglast.parser import ParseError, parse_sql_json  # noqa: PLC0415 - loaded only to parse

    sql, name = migration.sql, migration.name
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError as exc:
        message, offset = exc.args[0], exc.args[1]  # a character offset
        line = line_of(sql, offset)
        if sql.splitlines()[line - 1].lstrip().startswith("\\"):
            message = "psql meta-command: the runner sends SQL only (no \\i, \\set, \\c ...)"
        raise ValidationError([f"{name}:{line}: {message}"]) from None
    encoded = sql.encode()
    statements: list[Statement] = []
    problems: list[str] = []
    for raw in tree.get("stmts", ()):
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else len(encoded)
        text = encoded[start:end].decode().strip()
        line = encoded.count(b"\n", 0, start) + 1
        kind, body = next(iter(raw["stmt"].items()))
        if kind == "TransactionStmt":
            problems.append(
                f"{name}:{line}: transaction control ({text.split()[0].upper()}) is not "
                "allowed: the runner wraps each migration in its own transaction"
            )
            continue
        is_cic = kind == "IndexStmt" and bool(body.get("concurrent"))
        statements.append(
            Statement(
                text, line, not _non_transactional(kind, body), body.get("idxname") if is_cic else None, raw["stmt"]
            )
        )
    if not statements and not problems:
        problems.append(f"{name}: has no SQL statement (only comments)")
    if problems:
        raise ValidationError(problems)
    transactional = not migration.directives.no_transaction and all(s.transactional for s in statements)
    return Analysis(tuple(statements), transactional)
