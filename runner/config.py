"""Settings: built once from flags and environment into a frozen ``Settings``; redaction.

Invariants:
- A flag beats its ``RUNNER_*`` variable, which beats the legacy variable (``DATABASE_URL``,
  ``MIGRATIONS_DIR``), which beats the default. ``OPTIONS`` is the single list of options,
  each with the commands that use it; the CLI, its per-command ``--help`` and the README
  table are derived from it. An option is read only for the commands that use it.
- Every password the runner can know of (URL, ``PGPASSWORD``, the passfile) is in
  ``Settings.secrets`` and is removed by ``redact`` from anything shown to a person.
- A connection string libpq cannot parse, or whose numeric options are not numbers, is a
  ``ConfigError`` (exit 2) before anything connects; it is parsed with psycopg's own
  ``conninfo`` functions.
- The database URL itself never appears in ``repr(settings)``.
- ``parse_duration`` is the one duration grammar (flags, variables and file directives).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from runner import __version__
from runner.errors import ConfigError

DATABASE = frozenset({"migrate", "status", "validate", "baseline", "repair", "wait", "verify", "rehearse", "fleet"})
LOCKING = frozenset({"migrate", "baseline", "repair", "fleet"})
EXECUTING = frozenset({"migrate", "verify", "rehearse", "fleet"})
MIGRATING = frozenset({"migrate", "fleet"})
FLEET = frozenset({"fleet"})
EVERY = frozenset({*DATABASE, "new", "lint"})


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its variables (first wins), its default and the commands using it."""

    name: str
    env: tuple[str, ...]
    default: str | None
    help: str
    commands: frozenset[str]
    flag_only_value: bool = False  # a switch: present means "true"


def _option(
    name: str, default: str | None, help_text: str, commands: frozenset[str], *legacy: str, switch: bool = False
) -> Option:
    return Option(name, (f"RUNNER_{name.upper().replace('-', '_')}", *legacy), default, help_text, commands, switch)


OPTIONS: tuple[Option, ...] = (
    _option(
        "database-url",
        None,
        "libpq URI or key=value string; prefer the variable or a file to a flag",
        DATABASE,
        "DATABASE_URL",
    ),
    _option(
        "database-url-file",
        None,
        "read the database URL from this file (a mounted Secret)",
        DATABASE,
        "DATABASE_URL_FILE",
    ),
    _option("migrations-dir", "./migrations", "directory holding NNN_description.sql files", EVERY, "MIGRATIONS_DIR"),
    _option(
        "history-table",
        "migration_history",
        "history table, optionally schema-qualified (ops.migration_history)",
        DATABASE,
    ),
    _option(
        "lock-key", None, "advisory lock key (signed 64-bit); default: derived from the resolved history table", LOCKING
    ),
    _option(
        "lock-wait-timeout",
        "600s",
        "give up waiting for the advisory lock, or a lock on the history table, after this long (exit 4)",
        LOCKING | {"status", "validate"},
    ),
    _option("connect-timeout", "60s", "keep retrying the first connection this long (exit 5)", DATABASE),
    _option("ddl-lock-timeout", "5s", "lock_timeout of each migration (SET LOCAL)", EXECUTING),
    _option("ddl-lock-retries", "10", "retries of a migration that hit lock_timeout (55P03)", EXECUTING),
    _option("statement-timeout", "0", "statement_timeout of each migration (SET LOCAL); 0 disables", EXECUTING),
    _option("role", None, "run every migration as this role (SET ROLE): it owns what they create", EXECUTING),
    _option("deadline", "0", "overall time limit of the run; on expiry behave as on SIGTERM; 0 disables", DATABASE),
    _option("target", None, "stop after this version", MIGRATING),
    _option(
        "strict",
        "false",
        "treat applied migrations with no file as an error (exit 3)",
        frozenset({"migrate", "validate", "status", "wait", "fleet"}),
        switch=True,
    ),
    _option("targets", None, "file of targets: a libpq URL or key=value string a line, optionally after a name", FLEET),
    _option("targets-query", None, "SQL run on the database URL's database; its rows are (name, url) targets", FLEET),
    _option("targets-match", None, "every database of the database URL's server whose name is LIKE this", FLEET),
    _option("parallel", "4", "migrate this many targets at once", FLEET),
    _option("canary", "0", "run the first K targets alone first; if one is not done, start no other", FLEET),
    _option("on-error", "stop", "after a target fails: stop (start no new target) or continue", FLEET),
    _option("shards", "1", "split the targets into this many shards (stable hash of the name)", FLEET),
    _option(
        "shard-index",
        None,
        "the shard this process migrates, 0..shards-1 (Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX)",
        FLEET,
        "JOB_COMPLETION_INDEX",
    ),
    _option("wait-timeout", "600s", "give up after this long (exit 6)", frozenset({"wait"})),
    _option(
        "pushgateway-url",
        None,
        "push metrics to this Pushgateway (when the lock wait starts, and at the end)",
        MIGRATING,
    ),
    _option("metrics-job", "migration-runner", "the job label of pushed metrics", MIGRATING),
    _option("metrics-port", None, "serve /metrics on this port while the run lasts", frozenset({"migrate"})),
    _option("metrics-linger", "0", "keep serving /metrics this long after the run ends", frozenset({"migrate"})),
    _option(
        "metrics-file",
        None,
        "write metrics in the textfile-collector format to this path (atomically)",
        frozenset({"migrate"}),
    ),
    _option(
        "scratch-url",
        None,
        "server for the scratch database (default: the database URL's server)",
        frozenset({"verify", "rehearse"}),
    ),
    _option("from-url", None, "the database to copy (pg_dump)", frozenset({"rehearse"})),
    _option("schema-only", "false", "copy the schema without data", frozenset({"rehearse"}), switch=True),
    _option("pg-bin", None, "directory holding pg_dump and pg_restore", frozenset({"rehearse"})),
    _option("format", "human", "report format: human or json", frozenset({"verify", "rehearse"})),
    _option("log-format", None, "json or console; default: json unless stderr is a terminal", EVERY),
    _option("log-level", "info", "debug, info, warning or error", EVERY),
)
BY_NAME = {option.name: option for option in OPTIONS}

DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)[^@\s]*@")
PASSWORD_PAIR = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'"]+)""", re.IGNORECASE)
# In a key=value string a password runs to the next "key=": libpq echoes stray words of an
# unquoted password with spaces in its parse errors, so every word of it is a secret.
LOOSE_PASSWORD = re.compile(r"""password\s*=\s*('(?:[^'\\]|\\.)*'|.*?)(?=\s+[A-Za-z_]+\s*=|\s*$)""", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^:/?#@\s]*:([^@\s]*)@")
MIN_SECRET_LENGTH = 4  # shorter secrets would mangle ordinary words; the patterns still apply
INTEGER_CONNINFO = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")
LOCK_KEY_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class FleetSettings:
    """``fleet``'s own settings: one target source, the rollout, the shard (``0 <= shard_index < shards``)."""

    targets_file: Path | None
    targets_query: str | None
    targets_match: str | None
    parallel: int
    canary: int
    on_error: str  # stop or continue
    shards: int
    shard_index: int


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
    role: str | None
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
    fleet: FleetSettings | None = None  # for the fleet command only


def parse_duration(name: str, value: str) -> float:
    """Seconds from ``90``, ``90s``, ``500ms``, ``5m``, ``5min``, ``1h``, ``1d``."""
    match = DURATION.match(value)
    if not match:
        raise ConfigError(f"--{name}: {value!r} is not a duration (e.g. 30s, 500ms, 5min)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_int(name: str, value: str, bounds: tuple[int, int] | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not a whole number") from None
    if bounds and not bounds[0] <= number <= bounds[1]:
        raise ConfigError(f"--{name}: {number} is outside {bounds[0]}..{bounds[1]}")
    return number


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"--{name}: {value!r} is not true or false")


def parse_identifier(name: str, value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ConfigError(f"--{name}: {value!r} is not a plain lower-case SQL identifier (letters, digits, _)")
    return value


def parse_history_table(value: str) -> tuple[str | None, str]:
    """``table`` or ``schema.table``; each part a plain lower-case SQL identifier."""
    parts = value.split(".")
    if len(parts) > 2 or not all(IDENTIFIER.match(part) for part in parts):
        raise ConfigError(
            f"--history-table: {value!r} is not a plain lower-case SQL identifier "
            "(letters, digits, underscores; optionally schema.table)"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def conninfo(name: str, url: str, secrets: frozenset[str]) -> dict[str, str]:
    """Read a connection string the way libpq does of a connection string; exit 2 if libpq cannot use it."""
    from psycopg import ProgrammingError  # noqa: PLC0415 - only commands given a URL pay for psycopg
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise ConfigError(f"--{name}: libpq cannot parse it: {redact(str(exc).strip(), secrets)}") from None
    for key in ("port", *INTEGER_CONNINFO):
        for part in params[key].split(",") if key in params else ():
            valid = part.isascii() and part.isdigit() and (key != "port" or 1 <= int(part) <= 65535)
            if not valid:
                raise ConfigError(f"--{name}: {key}={part!r} is not a valid {'port' if key == 'port' else 'number'}")
    return params


def url_secrets(url: str) -> set[str]:
    """Passwords inside a libpq URI or key=value string, also when libpq cannot parse it."""
    found: set[str] = set()
    if not url:
        return found
    for pattern in (URL_PASSWORD, LOOSE_PASSWORD):
        for match in pattern.finditer(url):
            password = match.group(1).strip("'")
            found.update({password, *password.split()})
    try:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        password = conninfo_to_dict(url).get("password")
    except Exception:  # noqa: BLE001 - an unparseable string: the patterns above found what they could
        password = None
    if password:
        found.add(str(password))
    return found - {""}


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


def database_label(params: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """The database name as libpq would pick it (URL, PGDATABASE, user), for logs and metrics."""
    found = params.get("dbname") or environ.get("PGDATABASE") or params.get("user") or environ.get("PGUSER")
    return redact(found) if found else "unknown"


def application_name(environ: Mapping[str, str]) -> str:
    """``migration-runner/<version>[/<HOSTNAME>]``: printable ASCII, under 64 bytes."""
    name = f"migration-runner/{__version__}"
    if environ.get("HOSTNAME"):
        name += "/" + environ["HOSTNAME"]
    return "".join(ch if " " <= ch <= "~" else "?" for ch in name)[:63]


def _raw(option: Option, command: str, flags: Mapping[str, object], environ: Mapping[str, str]) -> str | None:
    if command not in option.commands:
        return option.default
    flag = flags.get(option.name.replace("-", "_"))
    if flag is not None and flag is not False:
        return "true" if flag is True else str(flag)
    for variable in option.env:
        if environ.get(variable):
            return environ[variable]
    return option.default


def _database_url(command: str, flags: Mapping[str, object], environ: Mapping[str, str]) -> str | None:
    url = _raw(BY_NAME["database-url"], command, flags, environ)
    if url:
        return url.strip()
    path = _raw(BY_NAME["database-url-file"], command, flags, environ)
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--database-url-file: cannot read {path}: {exc.strerror}") from None


def load(command: str, flags: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Settings:
    """Build the frozen settings for ``command`` from parsed flags and the environment."""
    env = os.environ if environ is None else environ
    raw = {option.name: _raw(option, command, flags, env) for option in OPTIONS}
    database_url = _database_url(command, flags, env)
    found = passfile_secrets(env) | url_secrets(database_url or "")
    for extra in (raw["scratch-url"], raw["from-url"]):
        found |= url_secrets(extra or "")
    if env.get("PGPASSWORD"):
        found.add(env["PGPASSWORD"])
    secrets = frozenset(found)
    params = conninfo("database-url", database_url, secrets) if database_url else {}
    for name in ("scratch-url", "from-url"):
        if raw[name]:
            conninfo(name, raw[name] or "", secrets)
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
        lock_key=parse_int("lock-key", raw["lock-key"], LOCK_KEY_RANGE) if raw["lock-key"] else None,
        lock_wait_timeout=duration("lock-wait-timeout"),
        connect_timeout=duration("connect-timeout"),
        ddl_lock_timeout=duration("ddl-lock-timeout"),
        ddl_lock_retries=parse_int("ddl-lock-retries", raw["ddl-lock-retries"] or "0", (0, 1000)),
        statement_timeout=duration("statement-timeout"),
        role=parse_identifier("role", raw["role"]) if raw["role"] else None,
        deadline=duration("deadline"),
        target=parse_int("target", raw["target"], (0, 2**31 - 1)) if raw["target"] else None,
        strict=parse_bool("strict", raw["strict"] or ""),
        wait_timeout=duration("wait-timeout"),
        pushgateway_url=raw["pushgateway-url"],
        metrics_job=raw["metrics-job"] or "migration-runner",
        metrics_port=parse_int("metrics-port", raw["metrics-port"], (0, 65535)) if raw["metrics-port"] else None,
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
        database_label=database_label(params, env),
        secrets=secrets,
        fleet=fleet_settings(raw) if command == "fleet" else None,
    )


def fleet_settings(raw: Mapping[str, str | None]) -> FleetSettings:
    """Exactly one target source; a shard index in range, required when there is more than one shard."""
    sources = [name for name in ("targets", "targets-query", "targets-match") if raw[name]]
    if len(sources) != 1:
        given = f" (given: {', '.join('--' + name for name in sources)})" if sources else ""
        raise ConfigError(f"fleet: give exactly one of --targets, --targets-query, --targets-match{given}")
    on_error = raw["on-error"] or ""
    if on_error not in {"stop", "continue"}:
        raise ConfigError(f"--on-error: {on_error!r} is not stop or continue")
    shards = parse_int("shards", raw["shards"] or "", (1, 100000))
    index = raw["shard-index"]
    if index is None and shards > 1:
        raise ConfigError(f"--shards {shards}: say which shard this is (--shard-index, or JOB_COMPLETION_INDEX)")
    return FleetSettings(
        targets_file=Path(raw["targets"]) if raw["targets"] else None,
        targets_query=raw["targets-query"],
        targets_match=raw["targets-match"],
        parallel=parse_int("parallel", raw["parallel"] or "", (1, 128)),
        canary=parse_int("canary", raw["canary"] or "", (0, 2**31 - 1)),
        on_error=on_error,
        shards=shards,
        shard_index=parse_int("shard-index", index or "0", (0, shards - 1)),
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
