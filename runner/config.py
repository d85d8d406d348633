"""Settings: built once from flags and environment into a frozen ``Settings``; redaction.

Invariants:
- A flag beats its ``RUNNER_*`` variable, which beats the legacy variable (``DATABASE_URL``,
  ``MIGRATIONS_DIR``), which beats the default. ``OPTIONS`` is the single list of options;
  the CLI and the README table are derived from it.
- Every password the runner can know of (URL, ``PGPASSWORD``, the passfile) is in
  ``Settings.secrets`` and is removed by ``redact`` from anything shown to a person.
- The database URL itself never appears in ``repr(settings)``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from runner import __version__
from runner.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its variables (first wins) and its default."""

    name: str
    env: tuple[str, ...]
    default: str | None
    help: str
    flag_only_value: bool = False  # a switch: present means "true"


OPTIONS: tuple[Option, ...] = (
    Option(
        "database-url",
        ("RUNNER_DATABASE_URL", "DATABASE_URL"),
        None,
        "libpq URI or key=value string; prefer the variable or a file to a flag",
    ),
    Option(
        "database-url-file",
        ("RUNNER_DATABASE_URL_FILE", "DATABASE_URL_FILE"),
        None,
        "read the database URL from this file (a mounted Secret)",
    ),
    Option(
        "migrations-dir",
        ("RUNNER_MIGRATIONS_DIR", "MIGRATIONS_DIR"),
        "./migrations",
        "directory holding NNN_description.sql files",
    ),
    Option(
        "history-table",
        ("RUNNER_HISTORY_TABLE",),
        "migration_history",
        "history table, optionally schema-qualified (ops.migration_history)",
    ),
    Option(
        "lock-key",
        ("RUNNER_LOCK_KEY",),
        None,
        "advisory lock key (signed 64-bit); default: derived from database and table",
    ),
    Option(
        "lock-wait-timeout",
        ("RUNNER_LOCK_WAIT_TIMEOUT",),
        "600s",
        "give up waiting for the advisory lock after this long (exit 4)",
    ),
    Option(
        "connect-timeout", ("RUNNER_CONNECT_TIMEOUT",), "60s", "keep retrying the first connection this long (exit 5)"
    ),
    Option(
        "ddl-lock-timeout", ("RUNNER_DDL_LOCK_TIMEOUT",), "5s", "SET LOCAL lock_timeout for each migration transaction"
    ),
    Option(
        "ddl-lock-retries", ("RUNNER_DDL_LOCK_RETRIES",), "10", "retries of a migration that hit lock_timeout (55P03)"
    ),
    Option(
        "statement-timeout",
        ("RUNNER_STATEMENT_TIMEOUT",),
        "0",
        "SET LOCAL statement_timeout for each migration; 0 disables",
    ),
    Option(
        "deadline",
        ("RUNNER_DEADLINE",),
        "0",
        "overall time limit of the run; on expiry behave as on SIGTERM; 0 disables",
    ),
    Option("target", ("RUNNER_TARGET",), None, "migrate: stop after this version"),
    Option(
        "strict",
        ("RUNNER_STRICT",),
        "false",
        "treat applied migrations with no file as an error (exit 3)",
        flag_only_value=True,
    ),
    Option("wait-timeout", ("RUNNER_WAIT_TIMEOUT",), "600s", "wait: give up after this long (exit 6)"),
    Option(
        "pushgateway-url",
        ("RUNNER_PUSHGATEWAY_URL",),
        None,
        "push metrics to this Pushgateway (when the lock wait starts, and at the end)",
    ),
    Option("metrics-job", ("RUNNER_METRICS_JOB",), "migration-runner", "the job label of pushed metrics"),
    Option("metrics-port", ("RUNNER_METRICS_PORT",), None, "serve /metrics on this port while the run lasts"),
    Option("metrics-linger", ("RUNNER_METRICS_LINGER",), "0", "keep serving /metrics this long after the run ends"),
    Option(
        "metrics-file",
        ("RUNNER_METRICS_FILE",),
        None,
        "write metrics in the textfile-collector format to this path (atomically)",
    ),
    Option(
        "scratch-url",
        ("RUNNER_SCRATCH_URL",),
        None,
        "verify/rehearse: server for the scratch database (default: the database URL's server)",
    ),
    Option("from-url", ("RUNNER_FROM_URL",), None, "rehearse: the database to copy (pg_dump)"),
    Option(
        "schema-only", ("RUNNER_SCHEMA_ONLY",), "false", "rehearse: copy the schema without data", flag_only_value=True
    ),
    Option("pg-bin", ("RUNNER_PG_BIN",), None, "rehearse: directory holding pg_dump and pg_restore"),
    Option("format", ("RUNNER_FORMAT",), "human", "lint/verify/rehearse report: human or json"),
    Option("log-format", ("RUNNER_LOG_FORMAT",), None, "json or console; default: json unless stdout is a terminal"),
    Option("log-level", ("RUNNER_LOG_LEVEL",), "info", "debug, info, warning or error"),
)

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?\s*$")
DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)[^@\s]*@")
PASSWORD_PAIR = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'"]+)""", re.IGNORECASE)
KEY_VALUE = re.compile(r"""(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""")
# In a key=value string a password runs to the next "key=": libpq echoes stray words of an
# unquoted password with spaces in its parse errors, so every word of it is a secret.
LOOSE_PASSWORD = re.compile(r"""password\s*=\s*('(?:[^'\\]|\\.)*'|.*?)(?=\s+[A-Za-z_]+\s*=|\s*$)""", re.IGNORECASE)
MIN_SECRET_LENGTH = 4  # shorter secrets would mangle ordinary words; the patterns still apply


@dataclass(frozen=True)
class Settings:
    """Everything a command needs; built by ``load`` and never changed."""

    command: str
    database_url: str | None = field(repr=False)
    migrations_dir: Path
    history_schema: str | None
    history_table: str
    lock_key: int | None
    lock_wait_timeout: float
    connect_timeout: float
    ddl_lock_timeout: float
    ddl_lock_retries: int
    statement_timeout: float
    deadline: float
    target: int | None
    strict: bool
    wait_timeout: float
    pushgateway_url: str | None
    metrics_job: str
    metrics_port: int | None
    metrics_linger: float
    metrics_file: str | None
    scratch_url: str | None = field(repr=False)
    from_url: str | None = field(repr=False)
    schema_only: bool
    pg_bin: str | None
    report_format: str
    log_format: str | None
    log_level: str
    application_name: str
    database_label: str
    secrets: frozenset[str] = field(repr=False)


def parse_duration(name: str, value: str) -> float:
    """Seconds from ``90``, ``90s``, ``500ms``, ``5m``, ``5min``, ``1h``."""
    match = DURATION.match(value)
    if not match:
        raise ConfigError(f"--{name}: {value!r} is not a duration (e.g. 30s, 500ms, 5min)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not a whole number") from None


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"--{name}: {value!r} is not true or false")


def parse_history_table(value: str) -> tuple[str | None, str]:
    """``table`` or ``schema.table``; each part a plain lower-case SQL identifier."""
    parts = value.split(".")
    if len(parts) > 2 or not all(IDENTIFIER.match(part) for part in parts):
        raise ConfigError(
            f"--history-table: {value!r} is not a plain lower-case SQL identifier "
            "(letters, digits, underscores; optionally schema.table)"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def url_secrets(url: str) -> set[str]:
    """Passwords inside a libpq URI or key=value connection string."""
    found: set[str] = set()
    if "://" in url:
        try:
            parts = urlsplit(url)
            if parts.password:
                found.update({parts.password, unquote(parts.password)})
            found.update(parse_qs(parts.query).get("password", []))
        except ValueError:
            pass
    else:
        for match in LOOSE_PASSWORD.finditer(url):
            password = match.group(1).strip("'")
            found.update({password, *password.split()})
    return found


def passfile_secrets(environ: Mapping[str, str]) -> set[str]:
    """Passwords of the libpq passfile (last field of each line), if readable."""
    path = Path(environ.get("PGPASSFILE") or Path(environ.get("HOME", "/nonexistent")) / ".pgpass")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    fields = (re.split(r"(?<!\\):", line) for line in lines if line and not line.startswith("#"))
    return {parts[-1].replace("\\:", ":").replace("\\\\", "\\") for parts in fields if len(parts) == 5}


@functools.cache
def secrets_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for every secret and its percent-encoded form, longest first."""
    forms = {
        form for secret in secrets if len(secret) >= MIN_SECRET_LENGTH for form in (secret, quote(secret, safe=""))
    }
    return re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True)))) if forms else None


def redact(text: str, secrets: frozenset[str] | set[str] = frozenset()) -> str:
    """``text`` without URL passwords, ``password=`` values, or any known secret.

    Runs on every string of every log line: the secrets are compiled once per set.
    """
    if "@" in text:
        text = URL_USERINFO.sub(r"\1***@", text)
    if "=" in text:
        text = PASSWORD_PAIR.sub(r"\1***", text)
    pattern = secrets_pattern(secrets if isinstance(secrets, frozenset) else frozenset(secrets))
    return pattern.sub("***", text) if pattern else text


def database_label(url: str | None, environ: Mapping[str, str]) -> str:
    """The database name as libpq would pick it (URL, PGDATABASE, user), for logs and metrics."""
    name = user = None
    if url and "://" in url:
        try:
            parts = urlsplit(url)
            name = unquote(parts.path.lstrip("/")) or parse_qs(parts.query).get("dbname", [None])[0]
            user = parts.username
        except ValueError:
            pass
    elif url:
        pairs = dict(KEY_VALUE.findall(url))
        name, user = pairs.get("dbname"), pairs.get("user")
    found = name or environ.get("PGDATABASE") or user or environ.get("PGUSER")
    return redact(found.strip("'")) if found else "unknown"


def application_name(environ: Mapping[str, str]) -> str:
    """``migration-runner/<version>[/<HOSTNAME>]``: printable ASCII, under 64 bytes."""
    name = f"migration-runner/{__version__}"
    if environ.get("HOSTNAME"):
        name += "/" + environ["HOSTNAME"]
    return "".join(ch if " " <= ch <= "~" else "?" for ch in name)[:63]


def _raw(option: Option, flags: Mapping[str, object], environ: Mapping[str, str]) -> str | None:
    flag = flags.get(option.name.replace("-", "_"))
    if flag is not None and flag is not False:
        return "true" if flag is True else str(flag)
    for variable in option.env:
        if environ.get(variable):
            return environ[variable]
    return option.default


def _database_url(flags: Mapping[str, object], environ: Mapping[str, str]) -> str | None:
    by_name = {option.name: option for option in OPTIONS}
    url = _raw(by_name["database-url"], flags, environ)
    if url:
        return url.strip()
    path = _raw(by_name["database-url-file"], flags, environ)
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--database-url-file: cannot read {path}: {exc.strerror}") from None


def load(command: str, flags: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Settings:
    """Build the frozen settings for ``command`` from parsed flags and the environment."""
    env = os.environ if environ is None else environ
    raw = {option.name: _raw(option, flags, env) for option in OPTIONS}
    database_url = _database_url(flags, env)
    secrets = passfile_secrets(env) | url_secrets(database_url or "")
    for extra in (raw["scratch-url"], raw["from-url"]):
        secrets |= url_secrets(extra or "")
    if env.get("PGPASSWORD"):
        secrets.add(env["PGPASSWORD"])
    schema, table = parse_history_table(raw["history-table"] or "")
    log_format = raw["log-format"]
    if log_format not in {None, "json", "console"}:
        raise ConfigError(f"--log-format: {log_format!r} is not json or console")
    report_format = raw["format"] or "human"
    if report_format not in {"human", "json"}:
        raise ConfigError(f"--format: {report_format!r} is not human or json")
    log_level = (raw["log-level"] or "info").lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigError(f"--log-level: {log_level!r} is not debug, info, warning or error")

    def duration(name: str) -> float:
        return parse_duration(name, raw[name] or "0")

    return Settings(
        command=command,
        database_url=database_url,
        migrations_dir=Path(raw["migrations-dir"] or "."),
        history_schema=schema,
        history_table=table,
        lock_key=parse_int("lock-key", raw["lock-key"]) if raw["lock-key"] else None,
        lock_wait_timeout=duration("lock-wait-timeout"),
        connect_timeout=duration("connect-timeout"),
        ddl_lock_timeout=duration("ddl-lock-timeout"),
        ddl_lock_retries=parse_int("ddl-lock-retries", raw["ddl-lock-retries"] or "0"),
        statement_timeout=duration("statement-timeout"),
        deadline=duration("deadline"),
        target=parse_int("target", raw["target"]) if raw["target"] else None,
        strict=parse_bool("strict", raw["strict"] or ""),
        wait_timeout=duration("wait-timeout"),
        pushgateway_url=raw["pushgateway-url"],
        metrics_job=raw["metrics-job"] or "migration-runner",
        metrics_port=parse_int("metrics-port", raw["metrics-port"]) if raw["metrics-port"] else None,
        metrics_linger=duration("metrics-linger"),
        metrics_file=raw["metrics-file"],
        scratch_url=raw["scratch-url"],
        from_url=raw["from-url"],
        schema_only=parse_bool("schema-only", raw["schema-only"] or ""),
        pg_bin=raw["pg-bin"],
        report_format=report_format,
        log_format=log_format,
        log_level=log_level,
        application_name=application_name(env),
        database_label=database_label(database_url, env),
        secrets=frozenset(secrets),
    )


def require_database(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to guess a database: a URL, or at least PGHOST/PGSERVICE, must be given."""
    env = os.environ if environ is None else environ
    given = settings.database_url or settings.scratch_url or env.get("PGHOST") or env.get("PGSERVICE")
    if not given:
        raise ConfigError(
            f"{settings.command}: no database given: set DATABASE_URL (or DATABASE_URL_FILE, "
            "--database-url, PGHOST); the runner never falls back to a local database"
        )
