"""One file as lint sees it: its text, directives and top-level statements, parsed where a rule looks.

Invariants:
- Statements are delimited by PostgreSQL's parser (``pglast.parser.split``); each parsed one
  gets the runner's own facts from ``discover.make_statement`` (runs in a transaction or not,
  refused like ``BEGIN`` or ``COPY ... FROM STDIN``), so lint and the runner agree.
- Statements no rule looks at (GRANT, COMMENT, SELECT without INTO, ALTER FUNCTION without
  RENAME, ...) get no parse tree; a data change gets a minimal one naming its target table, a
  view one with its name and OR REPLACE;
  the body of a DO block or function is kept as ``Unit.body`` (the PL/pgSQL parser reads the
  statement's own text), and the SQL parser never copies it into its output: long
  dollar-quoted bodies are emptied in the text it reads (``mask``; that parse is kept only if
  each emptied literal is a body), the rest are blanked in the JSON before decoding. This is
  what makes lint fast: most of a real corpus is function bodies and statements no rule reads.
- On a syntax error the parser stops: ``discover.parse`` names it, and there are no statements.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from runner.discover import Migration, Statement, make_statement, parse, parse_directives, read_text
from runner.errors import Problem

STMT = '{"stmt":'
STMT_LOCATION = ',"stmt_location":'
STMT_LEN = ',"stmt_len":'
KIND = re.compile(r'\{"(\w+)":')
JSON_STRING = r'"((?:[^"\\]|\\.)*)"'
RELATION = re.compile(  # a data change's target table, a view's name
    rf'\{{"(relation|view)":\{{(?:"catalogname":{JSON_STRING},)?(?:"schemaname":{JSON_STRING},)?"relname":{JSON_STRING}'
)
LEADING = re.compile(r"(?:[ \t]*(?:--[^\n]*)?(?:\n|$))*")  # the leading comment block, all discover reads
DOLLAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
AS_KEYWORD = re.compile(r"[Aa][Ss][ \t\n\r\f\v]+")  # a function's AS and the whitespace after it
AS_KEYWORD_BYTES = re.compile(AS_KEYWORD.pattern.encode())
BODY_KEY = '"defname":"as","arg":'
PARAMETERS = ',"parameters":['
RETURN_TYPE = ',"returnType":'
OPTIONS = ',"options":['
SQL_BODY = '"sql_body":'
READ_OPTION = re.compile(r'\{"DefElem":\{"defname":"(?:language|as)",')  # the function options lint reads
PARAMETERS_AT = "parameters at"  # (JSON text, offset) of a function's undecoded parameters; no parser key has a space
JSON = json.JSONDecoder()
SVAL = '"sval":"'
MASK_FROM = 256  # bytes: a shorter body costs the parser's JSON output less than a second parse risks
DML = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
# Statement kinds no rule reads and that never change how the runner runs the file.
SKIPPED = {
    "GrantStmt",
    "GrantRoleStmt",
    "CommentStmt",
    "AlterFunctionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "AlterDefaultPrivilegesStmt",
    "AlterOwnerStmt",
    "AlterObjectSchemaStmt",
    "NotifyStmt",
    "ListenStmt",
    "VariableShowStmt",
    "ExplainStmt",
    "CallStmt",
    "SecLabelStmt",
    "RuleStmt",
    "CreateCastStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "AlterOpFamilyStmt",
    "CreateConversionStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "CreateRoleStmt",
    "AlterRoleStmt",
    "CreateEventTrigStmt",
    "CreateFdwStmt",
    "CreateForeignServerStmt",
    "CreateUserMappingStmt",
    "AlterTSConfigurationStmt",
    "AlterTSDictionaryStmt",
    "CreateTransformStmt",
    "CreatePublicationStmt",
    "AlterPublicationStmt",
    "CreateStatsStmt",
    "LockStmt",
    "CheckPointStmt",
    "DiscardStmt",
    "LoadStmt",
}


# A NamedTuple, like checks.Item: immutable and cheap to create.
class Unit(NamedTuple):
    """A top-level statement; ``body`` is the (start, end) of its DO or function body in its text."""

    statement: Statement
    body: tuple[int, int] | None = None


def read(path: Path, version: int) -> tuple[Migration | None, list[Problem]]:
    """The file as a migration (directives read; lint computes no checksum), or its problems."""
    text, problems = read_text(path, path.name)
    if text is None:
        return None, problems
    leading = LEADING.match(text)
    directives, problems = parse_directives(path.name, text[: leading.end() if leading else len(text)])
    return Migration(version, path.name, path, text, "", directives), problems


def units(migration: Migration) -> tuple[list[Unit], list[Problem]]:
    """The file's statements (refused ones reported, not returned) and its problems.

    The file is parsed with its long dollar-quoted literals emptied (``mask``); if each of them
    turns out to be the body of a DO block or function, that parse is the file's own but for
    the bodies' text, which lint takes from the file. Otherwise (a ``$$`` in a comment, a long
    literal that is not a body) the file is parsed again as it is.
    """
    from pglast.parser import ParseError, parse_sql_json  # noqa: PLC0415 - loaded only to parse

    masked = mask(migration.sql)
    if masked.at:
        try:
            found, problems, bodies = statements(migration, parse_sql_json(masked.sql), masked)
        except ParseError:
            bodies = -1
        if bodies == len(masked.at):
            return found, problems
    try:
        output = parse_sql_json(migration.sql)
    except ParseError:
        return [], parse(migration)[1]
    found, problems, _ = statements(migration, output, UNMASKED)
    return found, problems


class Masked(NamedTuple):
    """A file's text with literals emptied.

    ``at``: their byte offsets in it; ``removed``: the bytes removed up to and with each;
    ``contents``: the file's (start, end) characters of each one's text, by its offset here.
    """

    sql: str
    at: list[int]
    removed: list[int]
    contents: dict[int, tuple[int, int]]

    def original(self, offset: int) -> int:
        """The file's byte offset for this offset of the masked text (at or before a masked literal)."""
        index = bisect.bisect_left(self.at, offset)
        return offset + self.removed[index - 1] if index else offset


UNMASKED = Masked("", [], [], {})


def mask(sql: str) -> Masked:
    """``sql`` with the text of each dollar-quoted literal of ``MASK_FROM`` bytes or more removed.

    ``$tag$...$tag$`` becomes ``$tag$$tag$``: the same kind of token, ending where the file's
    does. A guess at where literals are (a ``$`` in a comment or a string misleads it), so
    ``statements`` keeps the masked parse only if the parser puts a body literal at each
    masked offset. Then the masked text lexes as the file does, token for token, but for those
    literals' values: before the first one the text is the same, and each ends, as
    PostgreSQL's lexer ends it, at the first repeat of its opening tag.
    """
    pieces: list[str] = []
    at: list[int] = []
    removed: list[int] = []
    contents: dict[int, tuple[int, int]] = {}
    ascii_only = sql.isascii()
    copied = copied_bytes = gone = 0  # sql[:copied] is in pieces; it is copied_bytes long in UTF-8
    dollar = sql.find("$")
    while dollar >= 0:
        literal = dollar_literal(sql, dollar) if not dollar or not identifier_char(sql[dollar - 1]) else None
        if literal is None:
            dollar = sql.find("$", dollar + 1)
            continue
        start, closing = literal
        tag = sql[dollar:start]
        end = closing + len(tag)
        inside = closing - start if ascii_only else len(sql[start:closing].encode())
        if inside >= MASK_FROM:
            before = dollar - copied if ascii_only else len(sql[copied:dollar].encode())
            at.append(copied_bytes + before - gone)
            contents[at[-1]] = literal
            gone += inside
            removed.append(gone)
            pieces += (sql[copied:start], tag)
            copied, copied_bytes = end, copied_bytes + before + len(tag) * 2 + inside
        dollar = sql.find("$", end)
    if not at:
        return UNMASKED
    pieces.append(sql[copied:])
    return Masked("".join(pieces), at, removed, contents)


def identifier_char(char: str) -> bool:
    """Whether a ``$`` after this character continues a word (PostgreSQL identifiers may hold ``$``)."""
    return char.isalnum() or char in "_$" or not char.isascii()


def statements(migration: Migration, output: str, masked: Masked) -> tuple[list[Unit], list[Problem], int]:
    """The statements of the parser's ``output`` (of ``masked.sql``), problems, and how many masked literals are bodies.

    Top-level statements are delimited by ``{"stmt":`` in libpg_query's output (nested nodes
    never use that key, and quotes inside strings are escaped); the JSON of a statement is
    decoded only if some rule reads that kind of statement.
    """
    sql = migration.sql
    ascii_only = sql.isascii()
    encoded = b"" if ascii_only else sql.encode()

    @functools.cache
    def parsed() -> str | bytes:  # what the parser read, for body_location; encoded once at most
        return (masked.sql or sql) if ascii_only else (masked.sql.encode() if masked.at else encoded)

    found: list[Unit] = []
    problems: list[Problem] = []
    bodies = 0  # masked literals found to be bodies
    # Where the last kept statement ended: byte and character offsets, and its last line.
    char_end = line_end = byte_end = 0
    at = output.find(STMT)
    any_statement = at >= 0
    while at >= 0:  # the statement's JSON is output[begin:stop]: its tree, then its location and length
        begin = at + len(STMT)
        at = output.find(STMT, begin)
        stop = at if at >= 0 else len(output)
        kind = KIND.match(output, begin)
        name = kind.group(1) if kind else ""
        if name in SKIPPED or (name == "SelectStmt" and output.find('"intoClause"', begin, stop) < 0):
            continue
        if name == "VariableSetStmt" and output.find('"timezone"', begin, stop) < 0:
            continue
        tree_end, start, length = tail(output, stop)
        end = masked.original(start + length) if length else len(sql if ascii_only else encoded)
        start = masked.original(start)
        if ascii_only:
            offset, text = start, sql[start:end]
            first = line_end + sql.count("\n", byte_end, start) + 1
        else:
            gap, text = encoded[byte_end:start].decode(), encoded[start:end].decode()
            offset = char_end + len(gap)
            first = line_end + gap.count("\n") + 1
        byte_end, char_end, line_end = end, offset + len(text), first - 1 + text.count("\n")
        node = decode(name, output, begin, tree_end, kind.end() if kind else begin)
        body = None
        if name in {"CreateFunctionStmt", "DoStmt"} and (literal := body_location(node[name], parsed)) >= 0:
            if content := masked.contents.get(literal):
                bodies += 1
                body = (content[0] - offset, content[1] - offset)
            else:
                literal = masked.original(literal)
                body = dollar_body(sql, literal if ascii_only else len(encoded[:literal].decode()), offset)
        statement, refusal = make_statement(text, offset, first, node)
        if refusal:
            problems.append(Problem(refusal[0], refusal[1], migration.name, statement.line))
        else:
            found.append(Unit(statement, body))
    if not any_statement and not problems:
        problems.append(Problem("empty", "has no SQL statement (only comments)", migration.name))
    return found, problems, bodies


def tail(output: str, stop: int) -> tuple[int, int, int]:
    """(end of the tree, ``stmt_location``, ``stmt_len``) of the statement whose JSON ends at ``stop``.

    The JSON ends ``{tree}[,"stmt_location":N][,"stmt_len":N]}`` and then ``,`` or, for the
    last statement, ``]}``; a key is left out when its value is 0 (a length of 0: to the end).
    """
    close = stop - 2 if output[stop - 1] == "," else stop - 3  # the statement object's closing brace
    if output[close] != "}":
        raise ValueError("unexpected parser output")  # libpg_query's JSON layout changed
    end = close
    length = location = 0
    at = output.rfind(STMT_LEN, max(0, end - 32), end)  # each number has at most 10 digits
    if at >= 0:
        length, end = int(output[at + len(STMT_LEN) : end]), at
    at = output.rfind(STMT_LOCATION, max(0, end - 32), end)
    if at >= 0:
        location, end = int(output[at + len(STMT_LOCATION) : end]), at
    return end, location, length


def decode(name: str, output: str, begin: int, end: int, after_kind: int) -> dict[str, Any]:
    """A statement's tree (``output[begin:end]``), decoded from libpg_query's JSON as far as some rule reads it.

    For a data change only its target table; for a view its name and whether it replaces
    (``"replace":true`` cannot occur inside its query, and quotes in strings are escaped);
    for a DO block or function all but its body (decoding megabytes of bodies costs more than
    the rest of a file), and of a function less again (``function_tree``). Any other tree is
    decoded where it stands (``after_kind``: the offset after its ``{"Kind":``).
    """
    relation = RELATION.match(output, after_kind, end) if name in DML or name == "ViewStmt" else None
    if relation:
        key, table = relation.group(1), relation.group(4)
        fields: dict[str, Any] = {key: {"relname": JSON.decode(f'"{table}"') if "\\" in table else table}}
        if name == "ViewStmt" and output.find('"replace":true', begin, end) >= 0:
            fields["replace"] = True
        return {name: fields}
    if name == "CreateFunctionStmt":
        return function_tree(output, begin, end)
    if name == "DoStmt":
        return tree_of(without_body(output[begin:end]))
    return tree_of(output, begin)


def tree_of(text: str, at: int = 0) -> dict[str, Any]:
    """The JSON object at ``text[at:]``, by ``raw_decode``: ``json.loads`` checks cost more than a small tree."""
    tree: dict[str, Any] = JSON.raw_decode(text, at)[0]
    return tree


def function_tree(output: str, begin: int, end: int) -> dict[str, Any]:
    """A function's tree (``output[begin:end]``): its name, OR REPLACE, and the options lint reads.

    Of its options only LANGUAGE and AS (the body's language and location) are decoded; its
    parameters (most of what is left) only when ``parameters`` is called: only a file that
    drops functions reads them. libpg_query writes ``parameters``, ``returnType``, ``options``
    after the name, in that order, then ``sql_body`` (a BEGIN ATOMIC body: then all but the
    body is decoded), and keys are quoted (a string's quotes are escaped), so the last
    ``options`` key is the function's own and an option's opening is never inside a string.
    """
    parameters = output.find(PARAMETERS, begin, end)
    head = parameters if parameters >= 0 else output.find(RETURN_TYPE, begin, end)
    options = output.rfind(OPTIONS, begin, end)
    if options < 0 or output.find(SQL_BODY, begin, end) >= 0:
        return tree_of(without_body(output[begin:end]))
    node = tree_of(output[begin : head if head >= 0 else options] + "}}")
    fields = node["CreateFunctionStmt"]
    fields["options"] = [JSON.raw_decode(output, at.start())[0] for at in READ_OPTION.finditer(output, options, end)]
    if parameters >= 0:
        fields[PARAMETERS_AT] = (output, parameters + len(PARAMETERS) - 1)
    return node


def parameters(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``CreateFunctionStmt``'s parameters (``FunctionParameter`` nodes), decoded if need be."""
    undecoded = fields.get(PARAMETERS_AT)
    return list(JSON.raw_decode(*undecoded)[0] if undecoded else fields.get("parameters", ()))


def without_body(tree: str) -> str:
    """The JSON with the statement's body string emptied; unchanged if not found."""
    at = tree.find(BODY_KEY)
    start = tree.find(SVAL, at) if at >= 0 else -1
    if start < 0:
        return tree
    start += len(SVAL)
    end = start
    while (end := tree.find('"', end)) >= 0:
        slashes = 0
        while tree[end - 1 - slashes] == "\\":
            slashes += 1
        if slashes % 2 == 0:
            return tree[:start] + tree[end:]
        end += 1
    return tree


def body_location(fields: dict[str, object], parsed: Callable[[], str | bytes]) -> int:
    """Byte offset, in the text the parser read, of the body literal of a DO block or function (-1 if unknown).

    The option's ``arg_location`` where the parse tree has one (pglast 8.8 does). 8.3 gives only the
    option's ``location``: a DO block's literal itself, or a function's ``AS`` keyword, whose
    argument then starts after the whitespace that follows it (anything else there, a comment,
    and the body stays unknown). ``parsed()`` is that text, as ``str`` when it is ASCII
    (offsets are the same), else as UTF-8 ``bytes``.
    """
    options = fields.get("args", fields.get("options", ()))
    for option in options if isinstance(options, list) else ():
        element = option.get("DefElem", {})
        if element.get("defname") != "as":
            continue
        if "arg_location" in element:
            return int(element["arg_location"])
        location = int(element.get("location", -1))
        if "args" in fields or location < 0:
            return location
        text = parsed()
        after = AS_KEYWORD.match(text, location) if isinstance(text, str) else AS_KEYWORD_BYTES.match(text, location)
        return after.end() if after else -1
    return -1


def dollar_literal(sql: str, at: int) -> tuple[int, int] | None:
    """(start, end) of the text of the dollar-quoted literal opening at ``at``, ending where PostgreSQL's lexer ends it.

    None if no dollar quote opens there or it never closes.
    """
    opening = DOLLAR.match(sql, at)
    if not opening:
        return None
    closing = sql.find(opening.group(0), opening.end())
    return (opening.end(), closing) if closing >= 0 else None


def dollar_body(sql: str, at: int, offset: int) -> tuple[int, int] | None:
    """The body between the dollar quotes opening at file position ``at``, relative to ``offset``.

    None for a single-quoted body: PL/pgSQL lines are then counted from the statement.
    """
    literal = dollar_literal(sql, at)
    return (literal[0] - offset, literal[1] - offset) if literal else None
