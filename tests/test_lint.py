"""lint: every rule provoked and passed, PL/pgSQL bodies, type-change precision, waivers, configuration, reports."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lint import PARALLEL_FROM, RULES, lint_all, lint_group, lint_paths, source, targets
from runner.lint import configuration as lint_configuration
from runner.lint.engine import Finding
from runner.lint.report import render
from runner.lint.rules import ALIASES

REPO = Path(__file__).resolve().parent.parent
HEADER = "-- Migration: {name}\n-- Author: test\n-- Date: 2026-11-25\n-- Description: test\n"
GUARD = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ck' AND conrelid = 'users'::regclass)"
    " THEN {} END IF; END $$;"
)

# rule -> (SQL that breaks it, SQL that must not). ``users`` is an existing table (not created here).
RULE_CASES = {
    "create-not-idempotent": ("CREATE TABLE t (id int);", "CREATE TABLE IF NOT EXISTS t (id int);"),
    "add-column-not-idempotent": (
        "ALTER TABLE users ADD COLUMN nick text;",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
    ),
    "drop-not-idempotent": (
        "DROP TABLE old_stuff;\nCREATE TABLE IF NOT EXISTS old_stuff (id int);",
        "DROP TABLE IF EXISTS old_stuff;\nCREATE TABLE IF NOT EXISTS old_stuff (id int);",
    ),
    "replace-missing": ("CREATE VIEW v AS SELECT 1;", "CREATE OR REPLACE VIEW v AS SELECT 1;"),
    "add-constraint-unguarded": (
        "ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;",
        GUARD.format("ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;"),
    ),
    "mixed-schema-data": (
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS active boolean;\nUPDATE users SET active = true;",
        "CREATE TABLE IF NOT EXISTS kinds (id int);\nINSERT INTO kinds VALUES (1);",
    ),
    "index-not-concurrent": (
        "CREATE INDEX IF NOT EXISTS users_email ON users (email);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
    ),
    "constraint-builds-index": (
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx;",
    ),
    "constraint-validates": (
        "ALTER TABLE users ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES users (id);",
        "ALTER TABLE users ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES users (id) NOT VALID;",
    ),
    "validate-same-transaction": (
        "ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;\nALTER TABLE users VALIDATE CONSTRAINT ck;",
        (
            "CREATE TABLE IF NOT EXISTS t (id int);\nALTER TABLE t ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;\n"
            "ALTER TABLE t VALIDATE CONSTRAINT ck;"
        ),
    ),
    "add-column-required": (
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS org bigint NOT NULL;",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS org bigint NOT NULL DEFAULT 0;",
    ),
    "add-column-rewrite": (
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS token uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS seen timestamptz DEFAULT now();",
    ),
    "column-type-rewrite": (
        "ALTER TABLE users ALTER COLUMN id TYPE bigint;",
        "CREATE TABLE IF NOT EXISTS t (id int);\nALTER TABLE t ALTER COLUMN id TYPE bigint;",
    ),
    "set-not-null-scan": (
        "ALTER TABLE users ALTER COLUMN id SET NOT NULL;",
        "CREATE TABLE IF NOT EXISTS t (id int);\nALTER TABLE t ALTER COLUMN id SET NOT NULL;",
    ),
    "drop-index-not-concurrent": (
        "DROP INDEX IF EXISTS users_email;",
        "DROP INDEX CONCURRENTLY IF EXISTS users_email;",
    ),
    "reindex-not-concurrent": ("REINDEX INDEX users_email;", "REINDEX INDEX CONCURRENTLY users_email;"),
    "non-transactional-in-plpgsql": (
        "DO $$ BEGIN CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email); END $$;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);",
    ),
    "identifier-too-long": (
        f"CREATE TABLE IF NOT EXISTS {'t' * 64} (id int);",
        f"CREATE TABLE IF NOT EXISTS {'t' * 63} (id int);",
    ),
    "drop-column": ("ALTER TABLE users DROP COLUMN IF EXISTS legacy;", "SELECT 1;"),
    "rename-column": ("ALTER TABLE users RENAME COLUMN a TO b;", "ALTER TABLE users ADD COLUMN IF NOT EXISTS b int;"),
    "rename-table": (
        "ALTER TABLE users RENAME TO people;",
        "ALTER TABLE users RENAME TO users_old;\nCREATE TABLE IF NOT EXISTS users (LIKE users_old);",
    ),
    "drop-table": (
        "DROP TABLE IF EXISTS sessions;",
        "CREATE TABLE IF NOT EXISTS scratch (id int);\nDROP TABLE IF EXISTS scratch;",
    ),
    "drop-schema": ("DROP SCHEMA IF EXISTS reporting;", "CREATE SCHEMA IF NOT EXISTS reporting;"),
    "drop-object": (
        "DROP FUNCTION IF EXISTS f(integer);\nCREATE OR REPLACE FUNCTION f(bigint) RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "DROP FUNCTION IF EXISTS f(integer);\nCREATE OR REPLACE FUNCTION f(int) RETURNS int LANGUAGE sql AS 'SELECT 1';",
    ),
    "drop-constraint": (
        "ALTER TABLE users DROP CONSTRAINT IF EXISTS ck;",
        "ALTER TABLE users DROP CONSTRAINT IF EXISTS ck;\n"
        + GUARD.format("ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 1) NOT VALID;"),
    ),
    "drop-not-null": ("ALTER TABLE users ALTER COLUMN email DROP NOT NULL;", "SELECT 1;"),
    "drop-default": (
        "ALTER TABLE users ALTER COLUMN email DROP DEFAULT;",
        "ALTER TABLE users ALTER COLUMN email SET DEFAULT '';",
    ),
    "rename-object": (
        "ALTER SEQUENCE users_id_seq RENAME TO people_id_seq;",
        "CREATE SEQUENCE IF NOT EXISTS s;\nALTER SEQUENCE s RENAME TO s2;",
    ),
    "alter-identity": ("ALTER TABLE users ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;", "SELECT 1;"),
    "prefer-bigint": ("CREATE TABLE IF NOT EXISTS t (id integer);", "CREATE TABLE IF NOT EXISTS t (id bigint);"),
    "prefer-text": ("CREATE TABLE IF NOT EXISTS t (n varchar(40));", "CREATE TABLE IF NOT EXISTS t (n text);"),
    "prefer-timestamptz": (
        "CREATE TABLE IF NOT EXISTS t (at timestamp);",
        "CREATE TABLE IF NOT EXISTS t (at timestamptz);",
    ),
    "prefer-identity": (
        "CREATE TABLE IF NOT EXISTS t (id bigserial);",
        "CREATE TABLE IF NOT EXISTS t (id bigint GENERATED BY DEFAULT AS IDENTITY);",
    ),
    "ban-char": ("CREATE TABLE IF NOT EXISTS t (c char(3));", "CREATE TABLE IF NOT EXISTS t (c text);"),
    "structure": ("SELECT 1;\nCOMMIT;", "SELECT 1;"),
}


def lint_one(tmp_path: Path, body: str, *, header: bool = True, select: str = "ALL") -> list[str]:
    path = tmp_path / "001_case.sql"
    path.write_text((HEADER.format(name=path.name) if header else "") + body + "\n")
    return [f.rule for f in lint_paths([path], severities(select))]


def severities(select: str = "ALL") -> dict[str, str]:
    return lint_configuration.severities({}, "test", select=[select], ignore=None)


def findings(tmp_path: Path, body: str, name: str = "001_case.sql") -> list[tuple[str, int, str]]:
    path = tmp_path / name
    path.write_text(body)
    return [(f.rule, f.line, f.message) for f in lint_paths([path])]


def test_every_rule_has_a_case() -> None:
    """Each lint rule (but the header rule, tested apart) is provoked below."""
    assert set(RULE_CASES) | {"header"} == set(RULES)


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_rule_fires_and_fix_passes(tmp_path: Path, rule: str) -> None:
    """The bad SQL triggers this rule; the fixed SQL does not."""
    bad, good = RULE_CASES[rule]
    assert rule in lint_one(tmp_path, bad)
    assert rule not in lint_one(tmp_path, good)


def test_catalogue_is_complete() -> None:
    """Every rule has a severity, a family, a hint and an example; squawk aliases resolve to it."""
    for rule in RULES.values():
        assert rule.severity in {"error", "warning", "off"}
        assert rule.hint
        assert rule.example
        for alias in rule.aliases:
            assert rule.id in ALIASES[alias]
    assert {r.id for r in RULES.values() if r.family == "advice"} == {
        r.id for r in RULES.values() if r.severity == "off"
    }


def test_header_rule(tmp_path: Path) -> None:
    """A missing or malformed template header is an error; the template passes."""
    assert lint_one(tmp_path, "SELECT 1;", header=False).count("header") == 4
    path = tmp_path / "001_case.sql"
    path.write_text("-- Migration: 999_other.sql\n-- Author: a\n-- Date: 25.11.2026\n-- Description: d\nSELECT 1;\n")
    messages = [f.message for f in lint_paths([path])]
    assert "'-- Migration: 999_other.sql' does not name this file" in messages
    assert "'-- Date: 25.11.2026' is not YYYY-MM-DD" in messages
    assert lint_one(tmp_path, "SELECT 1;") == []


def test_header_only_for_the_runners_layout(tmp_path: Path) -> None:
    """A file not named NNN_name.sql (another tool's layout) is not asked for the header."""
    assert findings(tmp_path, "SELECT 1;\n", name="V2__add.sql") == []
    assert "header" in {rule for rule, _, _ in findings(tmp_path, "SELECT 1;\n", name="002_add.sql")}


def test_findings_name_file_as_given_line_and_hint(tmp_path: Path) -> None:
    """A finding carries the path as given, the statement's line, the severity and a fix hint."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "up.sql").write_text("SELECT 1;\n\nDROP TABLE IF EXISTS gone;\n")
    found = lint_paths([tmp_path / "a" / "up.sql", tmp_path / "b" / "up.sql"])
    assert [(f.file, f.line, f.severity, f.rule) for f in found] == [
        (str(tmp_path / "a" / "up.sql"), 3, "error", "drop-table"),
        (str(tmp_path / "b" / "up.sql"), 3, "error", "drop-table"),
    ]
    assert "later one" in found[0].hint


def test_rules_keep_running_after_a_structure_finding(tmp_path: Path) -> None:
    """Own BEGIN/COMMIT is reported with its own hint, and the statements between are still checked."""
    found = findings(tmp_path, "BEGIN;\nALTER TABLE users ALTER COLUMN id TYPE bigint;\nCOMMIT;\n", "up.sql")
    assert [(rule, line) for rule, line, _ in found] == [
        ("structure", 1),
        ("column-type-rewrite", 2),
        ("structure", 3),
    ]
    path = tmp_path / "up.sql"
    (structure, *_) = lint_paths([path])
    assert "remove BEGIN/COMMIT" in structure.hint


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ("SELEC 1;\n", "PostgreSQL's parser rejects it"),
        ("-- only a comment\n", "add the migration's SQL"),
        ("-- runner: no-transacton\nSELECT 1;\n", "known directives"),
        ("\\i other.sql\n", "SQL only"),
        ("COPY users FROM STDIN;\n", "COPY from a file on the database server"),
    ],
)
def test_structure_hints_fit_the_problem(tmp_path: Path, body: str, hint: str) -> None:
    """Each kind of structure problem gets its own hint, not the BEGIN/COMMIT one."""
    path = tmp_path / "x:y.sql"
    path.write_text(body)
    (finding,) = [f for f in lint_paths([path]) if f.rule == "structure"]
    assert hint in finding.hint
    assert "BEGIN" not in finding.hint


def test_misspelled_directive_is_reported_where_it_is(tmp_path: Path) -> None:
    """A misspelled directive or an unknown waived rule is reported at its own line."""
    body = '-- a comment\n-- runner: allow=no-such-rule reason="x"\n-- runner: no-transacton\nSELECT 1;\n'
    assert [(rule, line) for rule, line, _ in findings(tmp_path, body, "up.sql")] == [
        ("structure", 2),
        ("structure", 3),
    ]


def test_new_tables_however_created(tmp_path: Path) -> None:
    """CREATE TABLE AS, SELECT INTO, materialized views and partitions are new tables: no lock findings on them."""
    body = (
        "CREATE TABLE IF NOT EXISTS a AS SELECT 1 AS id;\n"
        "CREATE MATERIALIZED VIEW IF NOT EXISTS b AS SELECT 1 AS id;\n"
        "SELECT 1 AS id INTO c;\n"
        "CREATE TABLE IF NOT EXISTS d PARTITION OF parent DEFAULT;\n"
        + "".join(
            f"CREATE INDEX IF NOT EXISTS {t}_id ON {t} (id);\n"
            f"ALTER TABLE {t} ADD CONSTRAINT {t}_fk FOREIGN KEY (id) REFERENCES users (id);\n"
            f"ALTER TABLE {t} ALTER COLUMN id TYPE bigint;\n"
            for t in "abcd"
        )
    )
    rules = {rule for rule, _, _ in findings(tmp_path, body, "up.sql")}
    assert not rules & {"index-not-concurrent", "constraint-validates", "column-type-rewrite"}


@pytest.mark.parametrize(
    ("before", "after", "rewrites"),
    [
        ("varchar(10)", "text", False),
        ("varchar(10)", "varchar(20)", False),
        ("varchar(20)", "varchar(10)", True),
        ("text", "varchar(10)", True),
        ("numeric(10,2)", "numeric(12,2)", False),
        ("numeric(10,2)", "numeric(12,3)", True),
        ("int", "bigint", True),
        ("timestamp", "timestamptz", True),
        ("char(5)", "text", True),
        ("cidr", "inet", False),
        ("timestamp(3)", "timestamp(6)", False),
    ],
)
def test_type_changes_rewrite_by_postgresql_rules(tmp_path: Path, before: str, after: str, rewrites: bool) -> None:
    """Whether ALTER COLUMN TYPE is flagged follows PostgreSQL's rewrite rules, the old type read from an earlier file."""
    (tmp_path / "001_a.sql").write_text(
        HEADER.format(name="001_a.sql") + f"CREATE TABLE IF NOT EXISTS t (c {before});\n"
    )
    (tmp_path / "002_b.sql").write_text(
        HEADER.format(name="002_b.sql") + f"ALTER TABLE t ALTER COLUMN c TYPE {after};\n"
    )
    found = [f for f in lint_paths([tmp_path / "001_a.sql", tmp_path / "002_b.sql"]) if f.rule == "column-type-rewrite"]
    assert bool(found) is rewrites
    if found:
        assert f"{after.replace(' ', '')}" in found[0].message.replace(" ", "") or "->" in found[0].message


def test_timestamptz_in_a_utc_session_does_not_rewrite(tmp_path: Path) -> None:
    """timestamp -> timestamptz is flagged unless the file sets TimeZone to UTC first (PostgreSQL 12+)."""
    create = "CREATE TABLE IF NOT EXISTS t (at timestamp);\n"
    (tmp_path / "001_a.sql").write_text(create)
    (tmp_path / "002_b.sql").write_text(
        "SET LOCAL TimeZone = 'UTC';\nALTER TABLE t ALTER COLUMN at TYPE timestamptz;\n"
    )
    (tmp_path / "003_c.sql").write_text("ALTER TABLE t ALTER COLUMN at TYPE timestamp;\n")
    found = lint_paths([tmp_path / "001_a.sql", tmp_path / "002_b.sql", tmp_path / "003_c.sql"])
    assert [(Path(f.file).name, f.rule) for f in found if f.rule == "column-type-rewrite"] == [
        ("003_c.sql", "column-type-rewrite")
    ]
    assert "TimeZone is UTC" in next(f.message for f in found if f.rule == "column-type-rewrite")


def test_unknown_old_type_says_so(tmp_path: Path) -> None:
    """Without the old type in the linted files, the finding says what it depends on."""
    (finding,) = list(findings(tmp_path, "ALTER TABLE users ALTER COLUMN n TYPE text;\n", "up.sql"))
    assert "varchar or text now" in finding[2]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("DO $$ BEGIN ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0); END $$;", "add-constraint-unguarded"),
        ("DO $$ BEGIN CREATE INDEX IF NOT EXISTS i ON users (a); END $$;", "index-not-concurrent"),
        ("DO $$ BEGIN ALTER TABLE users ALTER COLUMN id TYPE bigint; END $$;", "column-type-rewrite"),
        ("DO $$ BEGIN EXECUTE 'ALTER TABLE users ALTER COLUMN id SET NOT NULL'; END $$;", "set-not-null-scan"),
        ("DO $$ BEGIN UPDATE users SET a = 1; ALTER TABLE users DROP COLUMN IF EXISTS b; END $$;", "mixed-schema-data"),
        (
            (
                "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\nBEGIN\n"
                "  CREATE INDEX IF NOT EXISTS i ON users (a);\nEND $$;"
            ),
            "index-not-concurrent",
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN REINDEX TABLE users; END $$;",
            "reindex-not-concurrent",
        ),
        (  # other options, one of them text that looks like a LANGUAGE option; LANGUAGE after the body
            (
                "CREATE OR REPLACE FUNCTION f(a int DEFAULT 1) RETURNS void SECURITY DEFINER"
                """ SET application_name = '{"DefElem":{"defname":"language","arg":{"String":{"sval":"sql"}}}}'"""
                " AS $$ BEGIN CREATE INDEX IF NOT EXISTS i ON users (a); END $$ STRICT LANGUAGE plpgsql;"
            ),
            "index-not-concurrent",
        ),
    ],
)
def test_plpgsql_statements_are_linted(tmp_path: Path, body: str, expected: str) -> None:
    """Statements inside DO blocks and function bodies are checked with PostgreSQL's PL/pgSQL parser."""
    assert expected in {rule for rule, _, _ in findings(tmp_path, body + "\n", "up.sql")}


@pytest.mark.parametrize(
    "body",
    [
        GUARD.format("ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;"),
        (
            "DO $$ BEGIN IF to_regclass('t') IS NOT NULL THEN RETURN; END IF;"
            " CREATE TABLE t (id int); ALTER TABLE t ADD CONSTRAINT t_pk PRIMARY KEY (id); END $$;"
        ),
        (
            "DO $$ BEGIN ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        ),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN CREATE TABLE t (id int);"
            " CREATE INDEX i ON t (id); DROP TABLE old_t; END $$;"
        ),
    ],
)
def test_plpgsql_guards_and_new_tables_pass(tmp_path: Path, body: str) -> None:
    """The seed's catalog guard, an early RETURN after a catalog check, a duplicate_object handler pass;
    a function's own tables are new, and idempotency and breaking rules do not apply to function bodies."""
    assert findings(tmp_path, body + "\n", "up.sql") == []


def test_plpgsql_finding_lines_are_file_lines(tmp_path: Path) -> None:
    """A statement inside a body is reported at its own line in the file, naming the body."""
    body = "SELECT 1;\nDO $$\nBEGIN\n  NULL;\n  CREATE INDEX IF NOT EXISTS i ON users (a);\nEND $$;\n"
    ((rule, line, message),) = findings(tmp_path, body, "up.sql")
    assert (rule, line) == ("index-not-concurrent", 5)
    assert "DO block at line 2" in message


def test_lines_and_names_survive_multibyte_text(tmp_path: Path) -> None:
    """Non-ASCII text before a statement or a body does not shift lines; quoted names keep their case."""
    body = (
        "-- Ä comment äöü\nSELECT 'ü';\nDO $$\nBEGIN\n  -- ö\n  CREATE INDEX IF NOT EXISTS i ON users (a);\nEND $$;\n"
        'INSERT INTO "Ü"."Täble" VALUES (1);\n'
    )
    assert [(rule, line) for rule, line, _ in findings(tmp_path, body, "up.sql")] == [
        ("index-not-concurrent", 6),
        ("mixed-schema-data", 8),
    ]
    assert "INSERT Täble" in findings(tmp_path, body, "up.sql")[1][2]


def test_plpgsql_syntax_error_is_a_structure_finding(tmp_path: Path) -> None:
    """A DO block PostgreSQL would reject at run time is reported."""
    assert [rule for rule, _, _ in findings(tmp_path, "DO $$ BEGIN IF true THEN END $$;\n", "up.sql")] == ["structure"]


def test_statement_waiver_needs_reason_and_known_rule(tmp_path: Path) -> None:
    """A -- runner: allow= comment before a statement waives it (squawk names too); without a reason it is an error."""
    drop = "ALTER TABLE users DROP COLUMN IF EXISTS legacy;\n"
    waived = 'SELECT 1;\n-- runner: allow=ban-drop-column reason="phase 2"\n-- more words\n' + drop + drop
    assert [(rule, line) for rule, line, _ in findings(tmp_path, waived, "up.sql")] == [("drop-column", 5)]
    unreasoned = "SELECT 1;\n-- runner: allow=drop-column\n" + drop
    assert ("structure", 2) in [(rule, line) for rule, line, _ in findings(tmp_path, unreasoned, "up.sql")]
    misplaced = "SELECT 1;\n-- runner: no-transaction\nSELECT 2;\n"
    ((rule, line, message),) = findings(tmp_path, misplaced, "up.sql")
    assert (rule, line) == ("structure", 2)
    assert "ignored by the runner" in message


def test_statement_waiver_covers_the_body_of_its_do_block(tmp_path: Path) -> None:
    """A waiver before a DO block covers findings inside its body, and nothing after it."""
    body = (
        'SELECT 1;\n-- runner: allow=drop-column reason="phase 2"\nDO $$\nBEGIN\n'
        "  ALTER TABLE users DROP COLUMN IF EXISTS legacy;\nEND $$;\n"
        "ALTER TABLE users DROP COLUMN IF EXISTS other;\n"
    )
    assert [(rule, line) for rule, line, _ in findings(tmp_path, body, "up.sql")] == [("drop-column", 7)]


def test_file_waiver_needs_a_reason_and_a_known_rule(tmp_path: Path) -> None:
    """allow=RULE reason="..." in the leading block waives for the file; without a reason, or unknown, it is an error."""
    drop = "ALTER TABLE users DROP COLUMN IF EXISTS legacy;"
    assert lint_one(tmp_path, '-- runner: allow=drop-column reason="phase 2 of the nick rename"\n' + drop) == []
    assert "structure" in lint_one(tmp_path, "-- runner: allow=drop-column\n" + drop)
    assert "structure" in lint_one(tmp_path, '-- runner: allow=no-such-rule reason="x"\nSELECT 1;')


def test_configuration_selects_ignores_and_sets_severity(tmp_path: Path) -> None:
    """select/extend-select/ignore/severity from the configuration; squawk names and families are selectors."""
    table = {"extend-select": ["advice"], "ignore": ["ban-drop-table"], "severity": {"drop-column": "warning"}}
    chosen = lint_configuration.severities(table, "cfg", select=None, ignore=None)
    assert chosen["prefer-text"] == "warning"
    assert "drop-table" not in chosen
    assert chosen["drop-column"] == "warning"
    assert "prefer-text" not in lint_configuration.severities({}, "cfg", select=None, ignore=None)
    only = lint_configuration.severities({}, "cfg", select=["require-concurrent-index-creation"], ignore=None)
    assert set(only) == {"index-not-concurrent"}
    with pytest.raises(lint_configuration.ConfigError, match="unknown rule"):
        lint_configuration.severities({"select": ["nope"]}, "cfg", select=None, ignore=None)


def run_lint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "MIGRATIONS_"))}
    return subprocess.run(
        [sys.executable, "-m", "runner", "lint", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exit_codes_formats_and_configuration(tmp_path: Path) -> None:
    """Exit 0 on warnings only, 3 on an error, 2 on a bad flag; json, sarif and github formats; pyproject config."""
    (tmp_path / "migrations").mkdir()
    warn = tmp_path / "migrations" / "001_a.sql"
    warn.write_text(HEADER.format(name="001_a.sql") + "ALTER TABLE users ALTER COLUMN id TYPE bigint;\n")
    result = run_lint("--migrations-dir", "migrations", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [f["rule"] for f in json.loads(result.stdout)] == ["column-type-rewrite"]
    bad = tmp_path / "bad.sql"
    bad.write_text("DROP TABLE gone;\n")
    human = run_lint("bad.sql", cwd=tmp_path)
    assert human.returncode == 3
    assert "bad.sql:1: error drop-not-idempotent" in human.stdout
    assert human.stdout.strip().endswith("1 files, 2 errors, 0 warnings")
    sarif = json.loads(run_lint("bad.sql", "--format", "sarif", cwd=tmp_path).stdout)
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"drop-not-idempotent", "drop-table"}
    assert results[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
    github = run_lint("bad.sql", "--format", "github", cwd=tmp_path).stdout.splitlines()
    assert github[0].startswith("::error file=bad.sql,line=1,title=drop-")
    assert run_lint("bad.sql", "--select", "nope", cwd=tmp_path).returncode == 2
    (tmp_path / "pyproject.toml").write_text(
        '[tool.migration-runner.lint]\nignore = ["drop-table", "prefer-robust-stmts"]\n'
    )
    assert run_lint("bad.sql", cwd=tmp_path).returncode == 0
    (tmp_path / "pyproject.toml").write_text('[tool.migration-runner.lint]\nselect = ["ban-drop-table"]\n')
    assert run_lint("bad.sql", "--format", "json", cwd=tmp_path).stdout.count('"rule"') == 1
    assert run_lint("bad.sql", "--select", "prefer-text", cwd=tmp_path).returncode == 0


def test_a_missing_path_is_a_usage_error_and_a_dangling_link_a_finding(tmp_path: Path) -> None:
    """lint's arguments take one stat each: a path that is not there exits 2; a dangling link is linted and reported."""
    (tmp_path / "ok.sql").write_text("SELECT 1;\n")
    missing = run_lint("ok.sql", "gone.sql", cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert "gone.sql: no such file or directory" in missing.stderr
    (tmp_path / "dangling.sql").symlink_to(tmp_path / "nowhere.sql")
    dangling = run_lint("ok.sql", "dangling.sql", "--format", "json", cwd=tmp_path)
    assert dangling.returncode == 3, dangling.stderr
    (finding,) = json.loads(dangling.stdout)
    assert (finding["file"], finding["rule"]) == ("dangling.sql", "structure")
    assert "cannot read" in finding["message"]


def test_lint_imports_no_database_driver() -> None:
    """The lint path loads neither psycopg nor the executor, nor pglast's Python AST classes."""
    code = (
        "import sys, runner.cli as c\n"
        "try:\n    c.main(['lint', '--migrations-dir', 'migrations'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('psycopg', 'runner.execute', 'runner.migrate', "
        "'pglast.ast', 'pglast.enums'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


def test_large_runs_in_batches_give_the_same_findings(tmp_path: Path) -> None:
    """Two forked workers (from PARALLEL_FROM files on) report exactly what one process reports, in order.

    Column types carry over between a directory's NNN_name.sql files (``ALTER COLUMN ... TYPE``
    of a column an earlier file typed), whichever batch the other files go to.
    """
    files = []
    for index in range(PARALLEL_FROM + 10):
        directory = tmp_path / f"d{index % 3}"
        directory.mkdir(exist_ok=True)
        path = directory / (f"{index:03d}_x.sql" if index % 5 else f"other-{index}.sql")
        path.write_text("ALTER TABLE users ALTER COLUMN id TYPE bigint;\n" if index % 2 else "DROP TABLE gone;\n")
        files.append(path)
    chosen = severities("default")
    given = targets([str(path) for path in files])
    assert lint_all(given, chosen) == lint_group(given, chosen)


def test_json_report_is_json_dumps_byte_for_byte() -> None:
    """The json format's writer gives what json.dumps(indent=2) gives, escapes and the empty list included."""
    found = [
        Finding("structure", "error", 'a "b"\\c.sql', 7, "é\n\t\x00\u2028 ☃ 𝄞", ""),
        Finding("header", "warning", "x.sql", 1, "missing '-- Date:'", "/"),
    ]
    assert render(found, 2, "json") == json.dumps([f._asdict() for f in found], indent=2)
    assert render([], 0, "json") == json.dumps([], indent=2)


def test_readme_lists_every_rule() -> None:
    """The README's lint section names every rule id."""
    readme = (REPO / "README.md").read_text()
    assert [rule for rule in RULES if f"| `{rule}` |" not in readme] == []


def test_a_repeated_do_block_is_reported_at_each_of_its_lines(tmp_path: Path) -> None:
    """A body seen before is not parsed again, but each copy's findings carry its own file lines."""
    block = "DO $$\nBEGIN\n  CREATE INDEX i ON users (id);\nEND $$;\n"
    first = findings(tmp_path, block, "a.sql")
    again = findings(tmp_path, "\n\n" + block + "SELECT 1;\n" + block, "b.sql")
    assert [line for rule, line, _ in first if rule == "index-not-concurrent"] == [3]
    assert [line for rule, line, _ in again if rule == "index-not-concurrent"] == [5, 10]


FILLER = "  -- " + "padding so the body is long enough to be masked " * 8 + "\n"
MASKING_CASES = {
    "bodies": (
        "-- café ☕ before anything\n"
        "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $fn$\nBEGIN\n"
        + FILLER
        + "  -- naïve comment\n  CREATE INDEX fi ON users (id);\nEND $fn$;\n"
        "DO $$\nBEGIN\n" + FILLER + "  ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0);\nEND $$;\n"
        "CREATE INDEX i ON users (id);\n"
    ),
    "a $$ in a comment": (
        "-- costs $$ to run\nCREATE INDEX i ON users (id);\n" + FILLER + "-- and $$ again\nSELECT 1;\n"
    ),
    "a long literal that is no body": (
        "COMMENT ON TABLE users IS $c$" + "x" * 400 + "$c$;\n"
        "DO $$\nBEGIN\n" + FILLER + "  CREATE INDEX i ON users (id);\nEND $$;\n"
        "CREATE INDEX j ON users (id);\n"
    ),
    "a tag inside a string": (
        "SELECT 'not $q$ a literal';\nCREATE INDEX i ON users (id);\n" + FILLER + "SELECT 'nor $q$ this';\n"
    ),
    "a syntax error after a body": (
        "DO $$\nBEGIN\n" + FILLER + "  CREATE INDEX i ON users (id);\nEND $$;\nCREATE TABLE broken (;\n"
    ),
}


@pytest.mark.parametrize("case", sorted(MASKING_CASES))
def test_masked_bodies_give_the_findings_of_the_file_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Long dollar-quoted bodies are emptied before the SQL parse; that never changes a finding or its line.

    Each case is linted with masking and without it (``MASK_FROM`` beyond any literal); the
    misleading ones (a ``$$`` in a comment, a long literal that is not a body, a tag inside a
    string) make the masked parse disagree with the file, which must then be parsed as it is.
    """
    sql = MASKING_CASES[case]
    masked = findings(tmp_path, sql, "a.sql")
    monkeypatch.setattr(source, "MASK_FROM", 1 << 30)
    assert source.mask(sql) == source.UNMASKED
    assert masked == findings(tmp_path, sql, "a.sql")
    expected = "structure" if "syntax error" in case else "index-not-concurrent"
    assert expected in {rule for rule, _, _ in masked}


def test_mask_keeps_offsets_statements_and_bodies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The masked text maps back to the file's bytes, and its parse gives the file's own statements and bodies."""
    sql = MASKING_CASES["bodies"]
    masked = source.mask(sql)
    assert len(masked.at) == 2
    assert masked.sql.count("$fn$$fn$") == 1
    assert masked.sql.count("$$$$") == 1
    for at in masked.at:
        start = masked.original(at)
        assert sql.encode()[start:].startswith(masked.sql.encode()[at : at + 2])
    path = tmp_path / "a.sql"
    path.write_text(sql)
    migration, _ = source.read(path, 1)
    assert migration is not None

    def shown(units: list[source.Unit]) -> list[tuple[int, str, str]]:
        return [
            (u.statement.line, u.statement.text, u.statement.text[u.body[0] : u.body[1]] if u.body else "")
            for u in units
        ]

    with_mask, problems = source.units(migration)
    assert problems == []
    assert [line for line, _, _ in shown(with_mask)] == [2, 8, 13]
    assert shown(with_mask)[0][2].startswith("\nBEGIN\n")
    assert shown(with_mask)[0][2].endswith("END ")
    monkeypatch.setattr(source, "MASK_FROM", 1 << 30)
    assert shown(with_mask) == shown(source.units(migration)[0])


@pytest.mark.parametrize("filler", ["", FILLER], ids=["short body", "long body"])
def test_a_body_opening_on_the_line_after_as_counts_its_lines_from_there(tmp_path: Path, filler: str) -> None:
    """Findings inside a function are reported at their own file line, whichever pglast (8.3 has no arg_location).

    The body's line 1 is the line its opening quote stands on, here the line after ``AS``: a
    body not located would be counted from the statement's first line, one line too early.
    """
    sql = (
        "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS\n$$\nBEGIN\n"
        + filler
        + "  CREATE INDEX i ON users (id);\nEND $$;\n"
    )
    expected = 5 if filler else 4
    assert [line for rule, line, _ in findings(tmp_path, sql, "a.sql") if rule == "index-not-concurrent"] == [expected]


@pytest.mark.skipif(
    not os.environ.get("RUNNER_TEST_COMPILED"), reason="RUNNER_TEST_COMPILED not set (bash .ci/dev test sets it)"
)
def test_the_mypyc_build_is_the_one_under_test() -> None:
    """Under RUNNER_TEST_COMPILED, every module setup.py compiles is an extension module, here and in a subprocess."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (listed,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "COMPILED"
    ]
    modules = [path.removesuffix(".py").replace("/", ".") for path in listed]
    assert "runner.lint.checks" in modules
    shown = "import importlib, sys; print(*(importlib.import_module(m).__file__ for m in sys.argv[1:]))"
    here = [importlib.import_module(module).__file__ for module in modules]
    there = subprocess.run(
        [sys.executable, "-c", shown, *modules], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split()
    for where in (here, there):
        assert all(str(path).endswith(".so") for path in where), where
