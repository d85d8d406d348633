"""Migration files -> ``Migration`` values; statement analysis with PostgreSQL's own parser.

Invariants:
- A migration is a regular file directly in the directory named ``V_[a-z0-9_]+.sql`` where V
  is at least three ASCII digits (``001``, ``1000``); versions start at 1 and are
  contiguous, and are ordered numerically. Other files, dot files and sub-directories are
  ignored; any other ``*.sql`` name (also one with surrounding spaces, or a FIFO or other
  non-regular file so named) is an error.
- Files are UTF-8 (a byte-order mark is dropped), hold no NUL byte, are at most
  ``MAX_FILE_BYTES``, and resolve inside the directory (no symlink escapes).
- ``checksum`` is SHA-256 of the text with CRLF normalised to LF and no BOM.
- Directives (``-- runner: ...``) are read from the file's leading comment block only (the
  lines before the first line that is neither blank nor a ``--`` comment); a ``-- runner:``
  comment anywhere else is an ordinary comment.
- ``discover`` reads and checksums every file but parses none; ``analyse`` parses one file and
  refuses what the runner cannot execute as validated: transaction control, psql
  meta-commands, ``COPY ... FROM STDIN / TO STDOUT``; and, in a batched data file
  (``-- runner: batch``), anything but one ``UPDATE``, ``DELETE`` or ``INSERT ... SELECT``
  whose rows are those of one table, enumerable by key ranges (``BatchTarget``).
- Problems are ``errors.Problem`` values naming file and line; nothing here formats them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from runner.config import parse_duration
from runner.errors import ConfigError, Problem, ValidationError

MIGRATION_NAME = re.compile(r"^([0-9]{3,})_[a-z0-9_]+\.sql$")
DIRECTIVE = re.compile(r"^--\s*runner:(.*)$")
READ_CHUNK = 1 << 20
MAX_FILE_BYTES = 10 * 1024 * 1024
BOM = b"\xef\xbb\xbf"
COMMENT_TOKENS = {"SQL_COMMENT", "C_COMMENT"}
KNOWN_DIRECTIVES = (
    "no-transaction, lock-timeout=, statement-timeout=, allow= reason=, "
    "batch [batch-size= pause= batch-time= max-replica-lag= max-blocking=]"
)
BATCH_KEYS = {  # directive -> BatchOptions field
    "batch-size": "size",
    "pause": "pause",
    "batch-time": "time",
    "max-replica-lag": "max_replica_lag",
    "max-blocking": "max_blocking",
}
BATCH_SIZE_RANGE = (1, 1_000_000)
# PostgreSQL's own aggregate and window functions (pg_catalog, 18): a batch cannot split them by
# key ranges. Others (an extension's, a user's) are found in the catalog at run time.
# fmt: off
AGGREGATES = frozenset((
    "any_value", "array_agg", "avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "corr", "count",
    "covar_pop", "covar_samp", "cume_dist", "dense_rank", "every", "first_value", "json_agg", "json_agg_strict",
    "json_object_agg", "json_object_agg_strict", "json_object_agg_unique", "json_object_agg_unique_strict",
    "jsonb_agg", "jsonb_agg_strict", "jsonb_object_agg", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict", "lag", "last_value", "lead", "max", "min", "mode", "nth_value", "ntile",
    "percent_rank", "percentile_cont", "percentile_disc", "range_agg", "range_intersect_agg", "rank", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy",
    "row_number", "stddev", "stddev_pop", "stddev_samp", "string_agg", "sum", "var_pop", "var_samp", "variance",
    "xmlagg",
))
# fmt: on
AGGREGATE_MARKS = ("agg_star", "agg_distinct", "agg_order", "agg_filter", "agg_within_group", "over")
PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")

# Statements PostgreSQL refuses inside a transaction block (by parse-tree node type).
NON_TRANSACTIONAL_NODES = {
    "AlterSystemStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
}


@dataclass(frozen=True)
class BatchOptions:
    """``-- runner: batch ...``: how a batched data file is applied (``runner.batch``).

    ``size`` keys make the first batch (every batch when ``time`` is None); ``pause`` seconds
    pass between batches; ``time`` is the target seconds per batch the size adapts towards;
    the ceilings (None: none) hold the next batch back while the replicas' replay lag exceeds
    ``max_replica_lag`` seconds, and shrink and space the batches while other sessions waited
    for a batch's locks longer than ``max_blocking`` (a share of its time, 0..1).
    """

    size: int = 1000
    pause: float = 0.0
    time: float | None = None
    max_replica_lag: float | None = None
    max_blocking: float | None = None


@dataclass(frozen=True)
class Directives:
    """``-- runner: ...`` settings of one file (from its leading comment block)."""

    no_transaction: bool = False
    lock_timeout: float | None = None  # seconds
    statement_timeout: float | None = None
    allow: tuple[tuple[str, str], ...] = ()  # (lint rule id, reason)
    batch: BatchOptions | None = None


@dataclass(frozen=True)
class Migration:
    """One file, read and checksummed but not parsed."""

    version: int
    name: str
    path: Path
    sql: str
    checksum: str
    directives: Directives

    @property
    def label(self) -> str:
        """The version as shown to people and used as a metric label: at least three digits."""
        return f"{self.version:03d}"


@dataclass(frozen=True)
class Statement:
    """One top-level statement: the exact text the parser delimited, and where it stands.

    ``text`` is the file's own slice (leading comments and whitespace included, the
    terminating semicolon excluded): what the autocommit path sends, byte for byte.
    """

    text: str
    offset: int  # character offset of ``text`` in the file
    file_line: int  # 1-based line of ``offset``
    transactional: bool
    concurrent_index: bool = False  # CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY
    concurrently: bool = False  # any ... CONCURRENTLY statement (see ``_concurrently``)
    node: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # {"Kind": {...}}

    @cached_property
    def lead(self) -> int:
        """Characters of leading whitespace and comments before the first token.

        pglast 8's slices start at the first token already; older ones include the comments and
        whitespace before it, which only the scanner can skip reliably.
        """
        if self.text[:1].isspace() or self.text.startswith(("--", "/*")):
            from pglast.parser import scan  # noqa: PLC0415 - only for slices that need it

            return next((token.start for token in scan(self.text) if token.name not in COMMENT_TOKENS), 0)
        return 0

    @property
    def line(self) -> int:
        """The 1-based file line of the statement's first token."""
        return self.file_line + self.text.count("\n", 0, self.lead)

    def line_at(self, offset: int) -> int:
        """The 1-based file line of character ``offset`` into ``text``."""
        return self.file_line + self.text.count("\n", 0, offset)

    @property
    def kind(self) -> str:
        return next(iter(self.node))


@dataclass(frozen=True)
class BatchTarget:
    """What a batched data file's one statement enumerates, as written (resolved at run time).

    ``table`` (``(schema, name)`` or ``(name,)``) is the table whose key ranges make the
    batches: the UPDATE/DELETE target, or the one table INSERT ... SELECT reads;
    ``qualifier`` is how the statement refers to it (its alias, else its name). What only the
    catalog can tell is checked at run time: ``written`` (INSERT's target) must not be the
    enumerated table, ``assigned`` (UPDATE's SET columns) must not hold a key column, and no
    name in ``functions`` (called at the SELECT's top level) may be an aggregate.
    """

    kind: str  # "update", "delete" or "insert"
    table: tuple[str, ...]
    qualifier: str
    written: tuple[str, ...]
    assigned: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """A parsed migration: its statements, whether it runs in one transaction, its batch target."""

    statements: tuple[Statement, ...]
    transactional: bool
    batch: BatchTarget | None = None  # a batched data file (``-- runner: batch``)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def leading_block(sql: str) -> list[tuple[int, str]]:
    """(line number, text) of the file's leading comment block: blank and ``--`` lines."""
    block = []
    for number, line in enumerate(sql.split("\n"), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            break
        block.append((number, stripped))
    return block


def parse_directives(name: str, sql: str) -> tuple[Directives, list[Problem]]:
    """The file's directives, and a problem for each unknown or malformed one.

    ``allow=RULE`` must come with ``reason="..."`` on the same line (lint checks the rule id).
    """
    values: dict[str, object] = {}
    allowed: list[tuple[str, str]] = []
    problems: list[Problem] = []
    batch: dict[str, object] = {}
    batch_line = 0  # where a batch option was given

    def problem(line: int, message: str) -> None:
        problems.append(Problem("directive", message, name, line))

    for line, text in leading_block(sql):
        match = DIRECTIVE.match(text)
        if not match:
            continue
        try:
            words = shlex.split(match.group(1))
        except ValueError as exc:
            problem(line, f"directive line does not parse: {exc}")
            continue
        pairs = [word.partition("=") for word in words]
        reason = next((value for key, _, value in pairs if key == "reason"), "")
        for key, _, value in pairs:
            if key == "no-transaction" and not value:
                values["no_transaction"] = True
            elif key == "batch" and not value:
                values["batch"] = True
            elif key in BATCH_KEYS:
                batch_line = batch_line or line
                try:
                    batch[BATCH_KEYS[key]] = _batch_value(key, value)
                except ConfigError as exc:
                    problem(line, str(exc))
            elif key in {"lock-timeout", "statement-timeout"}:
                try:
                    values[key.replace("-", "_")] = parse_duration(key, value)
                except ConfigError:
                    problem(line, f"directive {key}={value!r} needs a duration like 2s, 500ms or 30min")
            elif key == "allow" and value and reason:
                allowed += [(rule, reason) for rule in value.split(",")]
            elif key == "allow":
                problem(line, f'allow={value} needs a rule id and reason="why" on the same line')
            elif key != "reason":
                shown = key + ("=" + value if value else "")
                problem(line, f"unknown directive {shown!r} (known: {KNOWN_DIRECTIVES})")
    if values.pop("batch", False):
        values["batch"] = BatchOptions(**batch)  # type: ignore[arg-type]
    elif batch_line:
        names = ", ".join(f"{key}=" for key, field_name in BATCH_KEYS.items() if field_name in batch)
        problem(batch_line, f"{names} only go with the batch directive (-- runner: batch ...)")
    return Directives(**values, allow=tuple(allowed)), problems  # type: ignore[arg-type]


def _batch_value(key: str, value: str) -> float | int:
    """A batch option's value; ``ConfigError`` saying what it needs."""
    if key == "batch-size":
        low, high = BATCH_SIZE_RANGE
        if not value.isdigit() or not low <= int(value) <= high:
            raise ConfigError(f"directive batch-size={value!r} needs a whole number of rows from {low} to {high:,}")
        return int(value)
    if key == "max-blocking":
        match = PERCENT.match(value)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise ConfigError(f"directive max-blocking={value!r} needs a share like 20% (above 0%, at most 100%)")
        return float(match.group(1)) / 100
    try:
        seconds = parse_duration(key, value)
    except ConfigError:
        seconds = -1.0
    if seconds < 0 or (seconds == 0 and key != "pause"):
        above = "" if key == "pause" else " (above 0)"
        raise ConfigError(f"directive {key}={value!r} needs a duration like 2s, 200ms or 1min{above}")
    return seconds


def read_migration(directory: Path, path: Path, version: int) -> tuple[Migration | None, list[Problem]]:
    """``path`` (an entry of ``directory``) as a migration; only a symlink can lead outside the directory."""
    name = path.name
    if path.is_symlink() and not (target := path.resolve()).is_relative_to(directory.resolve()):
        return None, [Problem("file", f"resolves outside the migrations directory ({target})", name)]
    text, problems = read_text(path, name)
    if text is None:
        return None, problems
    directives, problems = parse_directives(name, text)
    import hashlib  # noqa: PLC0415 - lint reads files without a checksum, and starts faster without OpenSSL

    checksum = hashlib.sha256(text.encode()).hexdigest()
    return Migration(version, name, path, text, checksum, directives), problems


def read_text(path: Path, name: str) -> tuple[str | None, list[Problem]]:
    """A file's text (UTF-8, no BOM, LF line ends), or None and the problem.

    Problems: not a regular file, too large, unreadable, a NUL byte, not UTF-8, empty.
    ``read_migration`` adds the directory check, directives and checksum; ``lint`` reads any
    file it is given with this alone.
    """

    def problem(kind: str, message: str) -> tuple[None, list[Problem]]:
        return None, [Problem(kind, message, name)]

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return problem("file", "not a regular file (a FIFO, socket or device cannot be a migration)")
        if info.st_size > MAX_FILE_BYTES:
            return problem("file", f"{info.st_size} bytes is over the {MAX_FILE_BYTES}-byte limit")
        raw = read_bytes(path, info.st_size)
    except OSError as exc:
        return problem("file", f"cannot read: {exc.strerror}")
    skipped = len(BOM) if raw.startswith(BOM) else 0
    raw = raw[skipped:]
    nul = raw.find(b"\x00")
    if nul >= 0:
        return problem("encoding", f"NUL byte at byte offset {nul + skipped}: not a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem("encoding", f"not valid UTF-8 at byte offset {exc.start + skipped}")
    if "\r" in text:  # neither check copies the text when there is nothing to do (most files)
        text = text.replace("\r\n", "\n")
    if not text or text.isspace():
        return problem("empty", "file is empty")
    return text, []


def read_bytes(path: Path, size: int) -> bytes:
    """A file of about ``size`` bytes, with the fewest system calls (no buffer layer, no tty check)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_all(fd, size + 1)  # one read for a file that did not grow since its stat
    finally:
        os.close(fd)


def read_all(fd: int, first: int = READ_CHUNK) -> bytes:
    """Everything left to read from ``fd`` (a file or a pipe), the first read asking for ``first`` bytes."""
    chunks = [os.read(fd, first)]
    while chunks[-1]:
        chunks.append(os.read(fd, READ_CHUNK))
    return b"".join(chunks)


def version_of(name: str) -> int | None:
    """The version of a migration file name, or None if it is not one."""
    match = MIGRATION_NAME.match(name)
    return int(match.group(1)) if match else None


def discover(directory: Path) -> list[Migration]:
    """Every migration in ``directory``, in version order; raises on any rule broken."""
    try:
        entries = sorted(directory.iterdir(), key=lambda entry: entry.name)
    except FileNotFoundError:
        raise ConfigError(f"migrations directory {directory} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(f"migrations directory {directory} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"migrations directory {directory}: cannot list: {exc.strerror}") from None
    problems: list[Problem] = []
    by_version: dict[int, list[Path]] = {}
    for path in entries:
        if path.name.startswith(".") or (path.is_dir() and not path.is_symlink()):
            continue
        version = version_of(path.name)
        if version is not None:
            by_version.setdefault(version, []).append(path)
        elif path.name.strip().lower().endswith(".sql"):
            problems.append(
                Problem(
                    "name",
                    "name must match NNN_description.sql (at least three ASCII digits, then lower-case "
                    "letters, digits and underscores)",
                    path.name,
                )
            )
    migrations: list[Migration] = []
    for version in sorted(by_version):
        paths = by_version[version]
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(Problem("duplicate", f"duplicate version {version:03d}: {names}"))
            continue
        migration, file_problems = read_migration(directory, paths[0], version)
        problems += file_problems
        if migration:
            migrations.append(migration)
    expected = 1
    for version in sorted(by_version):
        if version != expected:
            first = by_version[version][0].name
            problems.append(Problem("gap", f"gap in versions: {expected:03d} is missing before {first}"))
        expected = version + 1
    if problems:
        raise ValidationError(problems)
    return migrations


def _concurrently(kind: str, body: dict[str, Any]) -> bool:
    """Whether the statement is CREATE/DROP INDEX, REINDEX or DETACH PARTITION ... CONCURRENTLY.

    Such a statement waits for other transactions to end, blocking no reader or writer meanwhile.
    """
    if kind in {"IndexStmt", "DropStmt"}:
        return bool(body.get("concurrent"))
    if kind == "ReindexStmt":
        return _reindex_concurrently(body)
    if kind == "AlterTableStmt":
        return any(
            cmd.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {}).get("concurrent")
            for cmd in body.get("cmds", ())
        )
    return False


def _non_transactional(kind: str, body: dict[str, Any]) -> bool:
    if kind in NON_TRANSACTIONAL_NODES:
        return True
    if kind == "VacuumStmt":
        return bool(body.get("is_vacuumcmd"))
    return _concurrently(kind, body)


def _reindex_concurrently(body: dict[str, Any]) -> bool:
    return any(p.get("DefElem", {}).get("defname") == "concurrently" for p in body.get("params", ()))


def _unservable(statement: Statement) -> tuple[str, str] | None:
    """(problem kind, why) when the runner cannot serve this statement as validated."""
    kind, body = statement.kind, statement.node[statement.kind]
    if kind == "TransactionStmt":
        word = statement.text[statement.lead :].split(maxsplit=1)[0].upper()
        return "transaction-control", (
            f"transaction control ({word}) is not allowed: the runner wraps each migration in its own transaction"
        )
    if kind == "CopyStmt" and not body.get("filename") and not body.get("is_program"):
        direction = "FROM STDIN" if body.get("is_from") else "TO STDOUT"
        return "unservable", (
            f"COPY ... {direction} needs a client that streams the data; the runner sends SQL only "
            "(use INSERT, or COPY from a file on the server)"
        )
    return None


def make_statement(
    text: str, offset: int, file_line: int, node: dict[str, Any]
) -> tuple[Statement, tuple[str, str] | None]:
    """A statement with its transaction facts read from its parse tree.

    Also (problem kind, why) if the runner cannot serve it, else None.
    """
    kind, body = next(iter(node.items()))
    statement = Statement(
        text,
        offset,
        file_line,
        not _non_transactional(kind, body),
        (kind == "IndexStmt" and bool(body.get("concurrent")))
        or (kind == "ReindexStmt" and _reindex_concurrently(body)),
        _concurrently(kind, body),
        node,
    )
    return statement, _unservable(statement)


def analyse(migration: Migration) -> Analysis:
    """Parse one migration; raises ``ValidationError`` naming file and line on any problem."""
    statements, problems = parse(migration)
    if problems:
        raise ValidationError(problems)
    transactional = not migration.directives.no_transaction and all(s.transactional for s in statements)
    if migration.directives.batch is None:
        return Analysis(statements, transactional)
    return Analysis(statements, transactional, batch_target(migration, list(statements)))


def parse(migration: Migration) -> tuple[tuple[Statement, ...], list[Problem]]:
    """The statements the runner can serve, and a problem for each one it cannot.

    ``analyse`` without raising: ``lint`` goes on with the statements. The parse tree comes as
    JSON built in C (several times faster than pglast's Python objects); its statement
    locations are byte offsets into the UTF-8 text. A syntax error stops the parser: then
    there are no statements and one problem.
    """
    from pglast.parser import ParseError, parse_sql_json  # noqa: PLC0415 - loaded only to parse

    sql, name = migration.sql, migration.name
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError as exc:
        message, offset = exc.args[0], exc.args[1]  # a character offset
        line = line_of(sql, offset)
        kind = "syntax"
        if sql.splitlines()[line - 1].lstrip().startswith("\\"):
            kind, message = "psql-meta", "psql meta-command: the runner sends SQL only (no \\i, \\set, \\c ...)"
        return (), [Problem(kind, message, name, line)]
    encoded = sql.encode()
    statements: list[Statement] = []
    problems: list[Problem] = []
    byte_end = char_end = line_end = 0  # where the previous slice ended, in bytes, characters, newlines
    for raw in tree.get("stmts", ()):
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else len(encoded)
        gap, text = encoded[byte_end:start].decode(), encoded[start:end].decode()
        offset = char_end + len(gap)
        file_line = line_end + gap.count("\n") + 1
        byte_end, char_end, line_end = end, offset + len(text), file_line - 1 + text.count("\n")
        statement, refusal = make_statement(text, offset, file_line, raw["stmt"])
        if refusal:
            problems.append(Problem(refusal[0], refusal[1], name, statement.line))
            continue
        statements.append(statement)
    if not statements and not problems:
        problems.append(Problem("empty", "has no SQL statement (only comments)", name))
    return tuple(statements), problems


def batch_target(migration: Migration, statements: list[Statement]) -> BatchTarget:
    """What a batched data file enumerates; ``ValidationError`` (kind ``batch``) saying why not."""

    def refuse(message: str, line: int | None = None) -> ValidationError:
        return ValidationError([Problem("batch", f"batch file: {message}", migration.name, line)])

    if migration.directives.no_transaction:
        raise refuse("no-transaction does not go with batch: each batch is one transaction with its progress")
    if len(statements) != 1:
        lines = ", ".join(str(s.line) for s in statements)
        raise refuse(f"needs exactly one statement, found {len(statements)} (lines {lines})")
    (statement,) = statements
    try:
        return _target(statement)
    except ValueError as exc:
        raise refuse(str(exc), statement.line) from None


def _target(statement: Statement) -> BatchTarget:
    """The statement's ``BatchTarget``; ``ValueError`` naming what cannot be split by key ranges."""
    kind, body = statement.kind, statement.node[statement.kind]
    if kind not in {"UpdateStmt", "DeleteStmt", "InsertStmt"}:
        word = statement.text[statement.lead :].split(maxsplit=1)[0].upper()
        raise ValueError(f"{word} is not one of the data statements UPDATE, DELETE, INSERT ... SELECT")
    if body.get("withClause"):
        raise ValueError("a WITH clause is not split by key ranges (put the query in the statement itself)")
    if body.get("returningList") or body.get("returningClause"):
        raise ValueError("RETURNING: the rows it returns would be discarded by the runner")
    if _has(body, "ParamRef"):
        raise ValueError("a parameter ($1) has no value in a migration")
    if kind == "InsertStmt":
        return _insert_target(body)
    where = body.get("whereClause") or {}
    if "CurrentOfExpr" in where:
        raise ValueError("WHERE CURRENT OF names a cursor's row, not rows the runner can enumerate")
    relation = body["relation"]
    table = _relation(relation)
    assigned = tuple(t["ResTarget"]["name"] for t in body.get("targetList", ()))
    return BatchTarget(kind.removesuffix("Stmt").lower(), table, _qualifier(relation), table, assigned)


def _insert_target(body: dict[str, Any]) -> BatchTarget:
    select = (body.get("selectStmt") or {}).get("SelectStmt")
    if select is None:
        raise ValueError("INSERT ... DEFAULT VALUES has no rows to enumerate: use INSERT ... SELECT ... FROM a table")
    if select.get("valuesLists"):
        raise ValueError("INSERT ... VALUES has no table whose rows the runner can enumerate: use INSERT ... SELECT")
    if select.get("op", "SETOP_NONE") != "SETOP_NONE":
        raise ValueError("a set operation (UNION, INTERSECT, EXCEPT) reads more than one table")
    if select.get("withClause"):
        raise ValueError("a WITH clause is not split by key ranges (put the query in the statement itself)")
    sources = select.get("fromClause", ())
    if len(sources) != 1 or "RangeVar" not in sources[0]:
        raise ValueError(
            "INSERT ... SELECT must read exactly one table (no join, subquery or function in FROM): "
            "its key ranges make the batches"
        )
    whole = {
        "distinctClause": "DISTINCT",
        "groupClause": "GROUP BY",
        "havingClause": "HAVING",
        "windowClause": "WINDOW",
        "sortClause": "ORDER BY",
        "limitCount": "LIMIT",
        "limitOffset": "OFFSET",
        "lockingClause": "FOR UPDATE/SHARE",
    }
    for clause, words in whole.items():
        if select.get(clause):
            raise ValueError(f"{words} works on the whole result, which batches of key ranges would split")
    functions = []
    for node, call in _nodes(select.get("targetList", ()), subqueries=False):  # a subquery's aggregate is whole
        name = {"JsonArrayAgg": "json_arrayagg", "JsonObjectAgg": "json_objectagg"}.get(node)
        if node == "FuncCall":
            name = call["funcname"][-1]["String"]["sval"]
            functions.append(name)
            if not any(call.get(mark) for mark in AGGREGATE_MARKS) and name not in AGGREGATES:
                continue
        if name:
            raise ValueError(f"{name}() aggregates over rows, which batches of key ranges would split")
    relation = sources[0]["RangeVar"]
    return BatchTarget(
        "insert", _relation(relation), _qualifier(relation), _relation(body["relation"]), (), tuple(functions)
    )


def _relation(relation: dict[str, Any]) -> tuple[str, ...]:
    return tuple(part for part in (relation.get("schemaname"), relation["relname"]) if part)


def _qualifier(relation: dict[str, Any]) -> str:
    return str((relation.get("alias") or {}).get("aliasname") or relation["relname"])


def _nodes(tree: object, *, subqueries: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (node type, body) in a JSON parse tree; without ``subqueries``, not below a SubLink."""
    if isinstance(tree, list | tuple):
        for item in tree:
            yield from _nodes(item, subqueries=subqueries)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if key == "SubLink" and not subqueries:
                continue
            if isinstance(value, dict) and key[:1].isupper():
                yield key, value
            yield from _nodes(value, subqueries=subqueries)


def _has(tree: object, kind: str) -> bool:
    return any(found == kind for found, _ in _nodes(tree))
