"""Lint files: read, parse, walk PL/pgSQL bodies, run the rules, apply waivers and the selection.

Invariants:
- A finding names the file as given (``a/up.sql``, not ``up.sql``) and a 1-based line.
- Every rule runs on whatever parsed: a ``structure`` problem (transaction control, COPY, a
  bad directive) is reported beside the other findings, never instead of them.
- Waivers: ``-- runner: allow=RULE[,RULE] reason="why"`` in the file's leading comment block
  waives for the file (the runner reads it there too); the same comment anywhere else waives
  for the statement that starts on the next line that is neither blank nor a comment. RULE
  may be a squawk rule name or a family. A waiver without a reason, or naming no rule, is a
  ``structure`` error. Other ``-- runner:`` comments outside the leading block are reported:
  the runner ignores them.
- ``header`` applies only to files named like the runner's own (``NNN_name.sql``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from runner.discover import DIRECTIVE, MIGRATION_NAME, Migration, Statement, batch_target, leading_block, parse
from runner.errors import Problem, ValidationError
from runner.lint import checks, plpgsql, source
from runner.lint.rules import RULES, resolve

HEADER_FIELDS = ("Migration", "Author", "Date", "Description")
HEADER_LINE = re.compile(r"^--\s*(Migration|Author|Date|Description):\s*(.*)$", re.MULTILINE)
LEAD = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DIRECTIVES = 'no-transaction, lock-timeout=, statement-timeout=, allow=RULE reason="..."'
# Statements some rule looks at inside a function body (DDL); DO blocks are always parsed.
FUNCTION_KEYWORDS = ("alter", "create", "drop", "reindex", "vacuum", "cluster", "refresh")
STATEMENT_START = ("then", "else", "loop", "begin", "$$")
# A true fix for each kind of problem discover reports (its ``Problem.kind``).
STRUCTURE_HINTS = {
    "syntax": "fix the statement: PostgreSQL's parser rejects it (rules still ran on nothing after it)",
    "psql-meta": "the runner sends SQL only: replace \\i, \\set, \\c ... with SQL, or split the file",
    "transaction-control": "remove BEGIN/COMMIT/ROLLBACK: the runner runs the file as one transaction (or each "
    "statement in autocommit with -- runner: no-transaction)",
    "unservable": "use INSERT ... VALUES, or COPY from a file on the database server",
    "empty": "add the migration's SQL, or delete the file",
    "directive": f"known directives: {DIRECTIVES}",
    "file": "a migration is a regular, readable file inside the migrations directory",
    "encoding": "save the file as UTF-8 text",
    "name": "name it NNN_description.sql (three or more digits, lower-case letters, digits, underscores)",
    "duplicate": "give each migration its own version number",
    "gap": "number migrations contiguously from 001",
    "plpgsql": "fix the body: PostgreSQL rejects it when the DO block runs or the function is created",
    "waiver": 'write -- runner: allow=RULE reason="why" with a rule id, a squawk rule name or a family',
    "misplaced": "directives only count in the leading comment block: move it to the top of the file",
    "batch": "a batch file holds one UPDATE, DELETE or INSERT ... SELECT of one table that key ranges can split "
    "(README: Batched data files)",
}


class Finding(NamedTuple):
    """One rule broken at one place, with the fix that is true for this runner."""

    rule: str
    severity: str
    file: str
    line: int
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity} {self.rule}: {self.message} (hint: {self.hint})"


class Linter:
    """Lints files one by one; column types carry over between NNN_name.sql files of one directory."""

    def __init__(self, severities: dict[str, str]) -> None:
        self.severities = severities
        self.columns: dict[Path, checks.Columns] = {}
        self.findings: list[Finding] = []

    def lint(self, path: Path, shown: str | None = None) -> list[Finding]:
        """Every finding for the file at ``path``, shown as ``shown`` (default: the path as given)."""
        name = shown or str(path)
        match = MIGRATION_NAME.match(path.name)
        migration, problems = source.read(path, int(match.group(1)) if match else 0)
        raw = [structure(problem) for problem in problems]
        statements: list[Statement] = []
        if migration is not None:
            more, statements = self.migration(migration, path, project=match is not None)
            raw += more
        found = self.select(raw, migration, name, statements)
        self.findings += found
        return found

    def migration(self, migration: Migration, path: Path, *, project: bool) -> tuple[list[checks.Raw], list[Statement]]:
        """The file's raw findings, and its statements (for waivers)."""
        units, problems = source.units(migration)
        raw = [structure(problem) for problem in problems]
        if migration.directives.batch is not None and not problems:
            raw += batch_problems(migration)
        if project:
            raw += header(migration)
        items, body_problems = expand(units)
        raw += body_problems
        transactional = not migration.directives.no_transaction and all(u.statement.transactional for u in units)
        # Column types carry over only along the runner's own linear sequence (NNN_name.sql);
        # other layouts may be upgrade graphs (a.sql and b.sql both from version 1).
        columns = self.columns.setdefault(path.parent, {}) if project else {}
        raw += checks.FileChecks(transactional, columns, items).run()
        return raw, [u.statement for u in units]

    def select(
        self, raw: list[checks.Raw], migration: Migration | None, shown: str, statements: list[Statement]
    ) -> list[Finding]:
        """Waivers applied, rules not selected dropped, severities set; sorted by line.

        A statement's waiver covers every line of that statement, the body of a DO block or
        function included.
        """
        file_waived: set[str] = set()
        statement_waived: dict[int, set[str]] = {}
        if migration is not None:
            waiver_problems, file_waived, statement_waived = waivers(migration)
            raw += waiver_problems
        covered: dict[int, set[str]] = {}
        spans = {s.line: last_line(s) for s in statements} if statement_waived else {}  # first line -> last
        for first, rules in statement_waived.items():
            for line in range(first, spans.get(first, first) + 1):
                covered.setdefault(line, set()).update(rules)
        found = [
            Finding(r.rule, self.severities[r.rule], shown, r.line, r.message, r.hint or RULES[r.rule].hint)
            for r in raw
            if r.rule in self.severities and r.rule not in file_waived and r.rule not in covered.get(r.line, set())
        ]
        return sorted(found, key=lambda f: (f.line, f.rule, f.message))


def batch_problems(migration: Migration) -> list[checks.Raw]:
    """Why the runner would refuse this batched data file (the same check as ``discover.analyse``)."""
    statements, problems = parse(migration)
    try:
        batch_target(migration, list(statements))
    except ValidationError as exc:
        problems += exc.problems
    return [structure(problem) for problem in problems]


def structure(problem: Problem) -> checks.Raw:
    """A problem discover reports, as a ``structure`` finding with the hint for its kind."""
    return checks.Raw("structure", problem.line or 1, problem.message, STRUCTURE_HINTS.get(problem.kind, ""))


def expand(units: Iterable[source.Unit]) -> tuple[list[checks.Item], list[checks.Raw]]:
    """The file's statements in order, each DO block and PL/pgSQL body followed by its own."""
    items: list[checks.Item] = []
    problems: list[checks.Raw] = []
    for unit in units:
        statement = unit.statement
        line = statement.file_line + lead_lines(statement.text)
        header = statement.text[: unit.body[0]] if unit.body else statement.text  # names live before the body
        items.append(checks.Item(statement.node, line, "top", text=header))
        where = body_of(unit)
        if where is None:
            continue
        scope, owner = where
        first_line = statement.file_line + statement.text.count("\n", 0, unit.body[0]) if unit.body else line
        try:
            embedded = plpgsql.statements(statement.text, first_line)
        except plpgsql.BodyError as exc:
            # Only a syntax error is certain without a database: other complaints of the parser
            # (record fields, %TYPE of schema-qualified names) need the catalog. Then the body is
            # not inspected.
            if str(exc.args[0]).startswith("syntax error"):
                message = f"PL/pgSQL body does not parse: {exc.args[0]}"
                problems.append(checks.Raw("structure", line, message, STRUCTURE_HINTS["plpgsql"]))
            continue
        items += [
            checks.Item(e.node, e.line, scope, e.guarded, owner or f"DO block at line {line}", e.text) for e in embedded
        ]
    return items, problems


def last_line(statement: Statement) -> int:
    """The file line of the statement's last character that is not whitespace (no copy of the text)."""
    text = statement.text
    end = len(text)
    while end and text[end - 1].isspace():
        end -= 1
    return statement.line_at(end)


def lead_lines(text: str) -> int:
    """Newlines before the first token (whitespace and comments skipped; nested comments are rare)."""
    lead = LEAD.match(text)
    return text.count("\n", 0, lead.end()) if lead else 0


def starts_statement(code: str, keywords: tuple[str, ...]) -> bool:
    """Whether a keyword opens a statement in a lower-cased PL/pgSQL body.

    First on its line, or after ``;``, THEN, ELSE, LOOP or BEGIN (so not inside
    ``format('CREATE ...')``). A fast filter (str.find), not a parser: a false match only costs
    a parse.
    """
    for keyword in keywords:
        size = len(keyword)
        at = code.find(keyword)
        while at >= 0:
            after = code[at + size : at + size + 1]
            if not after or after.isspace():  # a whole word (most are not: "dropped", "created_at")
                before = code[max(0, at - 8) : at].rstrip(" \t")
                if not before or before[-1] in "\n;" or before.rstrip().endswith(STATEMENT_START):
                    return True
            at = code.find(keyword, at + size)
    return False


def body_of(unit: source.Unit) -> tuple[str, str] | None:
    """(scope, owner) of a PL/pgSQL DO block or function, else None.

    None also for a function body without a DDL keyword opening a statement (a keyword test:
    most hold none; an EXECUTE of a constant string is read only in bodies that pass it); DO
    blocks run with the file and are always parsed.
    """
    statement = unit.statement
    kind = statement.kind
    fields = statement.node[kind]
    if kind == "DoStmt":
        options = fields.get("args", ())
        scope, owner = "do", ""
    elif kind == "CreateFunctionStmt" and "sql_body" not in fields:
        options = fields.get("options", ())
        function = checks.last_name(fields.get("funcname", []))
        scope, owner = "function", f"{'procedure' if fields.get('is_procedure') else 'function'} {function}"
    else:
        return None
    language = "plpgsql"
    for option in options:
        element = option.get("DefElem", {})
        if element.get("defname") == "language":
            language = str(element.get("arg", {}).get("String", {}).get("sval", "")).lower()
    if language != "plpgsql":
        return None
    if scope == "function":
        code = statement.text[unit.body[0] : unit.body[1]].lower() if unit.body else statement.text.lower()
        if not starts_statement(code, FUNCTION_KEYWORDS):
            return None
    return scope, owner


def header(migration: Migration) -> list[checks.Raw]:
    fields = {key: value.strip() for key, value in HEADER_LINE.findall(migration.sql)}
    problems = [f"missing '-- {key}:'" for key in HEADER_FIELDS if not fields.get(key)]
    if fields.get("Migration") and fields["Migration"] not in {migration.name, migration.name.removesuffix(".sql")}:
        problems.append(f"'-- Migration: {fields['Migration']}' does not name this file")
    if fields.get("Date") and not DATE.match(fields["Date"]):
        problems.append(f"'-- Date: {fields['Date']}' is not YYYY-MM-DD")
    return [checks.Raw("header", 1, problem) for problem in problems]


def waivers(migration: Migration) -> tuple[list[checks.Raw], set[str], dict[int, set[str]]]:
    """(problems, rules waived for the file, rules waived per statement line)."""
    problems: list[checks.Raw] = []
    file_waived: set[str] = set()
    by_line: dict[int, set[str]] = {}
    if "runner:" not in migration.sql:
        return problems, file_waived, by_line
    lines = migration.sql.split("\n")
    block = {number for number, _ in leading_block(migration.sql)}
    for rule, _reason in migration.directives.allow:
        rules = known(rule)
        if rules is None:
            line = next(
                (n for n, text in enumerate(lines, 1) if n in block and f"allow={rule}" in text.replace(" ", "")), 1
            )
            problems.append(
                checks.Raw("structure", line, f"allow={rule} names no lint rule", STRUCTURE_HINTS["waiver"])
            )
        else:
            file_waived |= rules
    for number, text in enumerate(lines, 1):
        match = DIRECTIVE.match(text.strip())
        if number in block or not match:
            continue
        target = next((n for n in range(number + 1, len(lines) + 1) if not comment_or_blank(lines[n - 1])), number)
        rules, problem = statement_waiver(match.group(1), number)
        if problem:
            problems.append(problem)
        by_line.setdefault(target, set()).update(rules)
    return problems, file_waived, by_line


def statement_waiver(text: str, line: int) -> tuple[set[str], checks.Raw | None]:
    """The rules one ``-- runner: allow=... reason="..."`` comment waives, or the problem with it."""
    try:
        pairs = [word.partition("=") for word in shlex.split(text)]
    except ValueError as exc:
        return set(), checks.Raw("structure", line, f"waiver does not parse: {exc}", STRUCTURE_HINTS["waiver"])
    allowed = [value for key, _, value in pairs if key == "allow"]
    reason = next((value for key, _, value in pairs if key == "reason"), "")
    if not allowed:
        shown = text.strip()
        return set(), checks.Raw(
            "structure",
            line,
            f"'-- runner: {shown}' outside the leading comment block is ignored by the runner",
            STRUCTURE_HINTS["misplaced"],
        )
    if not reason:
        return set(), checks.Raw(
            "structure", line, f'allow={allowed[0]} needs reason="why" on the same line', STRUCTURE_HINTS["waiver"]
        )
    rules: set[str] = set()
    for value in allowed:
        for name in value.split(","):
            found = known(name)
            if found is None:
                return set(), checks.Raw(
                    "structure", line, f"allow={name} names no lint rule", STRUCTURE_HINTS["waiver"]
                )
            rules |= found
    return rules, None


def known(name: str) -> set[str] | None:
    try:
        return set(resolve(name))
    except KeyError:
        return None


def comment_or_blank(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("--")
