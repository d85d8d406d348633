"""A fleet's targets: where the list comes from, and which of them a shard takes.

Three sources, exactly one per run (``config.fleet_settings`` enforces it):
- ``--targets FILE``: one target a line; blank lines and lines starting with ``#`` are
  ignored. If the line's first whitespace-separated word contains ``=`` or ``://`` the whole
  line is the connection string (libpq URI or key=value), otherwise that word is the name and
  the rest of the line the connection string.
- ``--targets-query SQL``: run on the database URL's database in a READ ONLY transaction (the
  tenant registry); each row is ``(name, url)``.
- ``--targets-match PATTERN``: the databases of the database URL's server whose names are
  ``LIKE PATTERN``, except templates and databases that refuse connections; each URL is the
  database URL with ``dbname`` replaced.

Invariants:
- A name left out (or NULL) is the database name libpq would use; names are unique and
  printable. A duplicate, an unparseable connection string or an empty list is a
  ``ConfigError`` (exit 2) naming where it was declared, before any target is touched.
- Connection strings never appear in a message or a ``repr``: errors are redacted with every
  password of the source.
- ``shard_of`` depends on the name alone (SHA-256, not Python's ``hash``), so every process
  assigns every target to the same shard whatever the list's order, and adding a target moves
  no other one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from runner import catalog, config
from runner.config import Settings
from runner.errors import ConfigError, DatabaseUnavailable
from runner.migrate import connect, database_errors


@dataclass(frozen=True)
class Target:
    """One database of a fleet: ``name`` labels its logs and metrics; ``origin`` says where it was declared."""

    name: str
    database: str  # the database name libpq uses (redacted), for logs
    url: str = field(repr=False)
    origin: str


def target(name: object, url: str, origin: str, secrets: frozenset[str], environ: Mapping[str, str]) -> Target:
    """A checked target; ``name`` None means the database name libpq would use."""
    try:
        params = config.conninfo("targets", url, secrets | config.url_secrets(url))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    database = config.database_label(params, environ)
    label = database if name is None else str(name)
    if not label or not label.isprintable():
        raise ConfigError(f"{origin}: the target name {config.redact(label, secrets)!r} is empty or not printable")
    return Target(label, database, url, origin)


def parse_file(path: Path, secrets: frozenset[str], environ: Mapping[str, str]) -> list[Target]:
    """The targets of a ``--targets`` file; see the module docstring for its format."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--targets: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        origin = f"{path.name}:{number}"
        if "=" in words[0] or "://" in words[0]:
            found.append(target(None, line.strip(), origin, secrets, environ))
        elif len(words) == 1:
            raise ConfigError(f"{origin}: the target {words[0]!r} has no connection string after its name")
        else:
            found.append(target(words[0], words[1].strip(), origin, secrets, environ))
    return found


def from_rows(
    columns: list[str], rows: Iterable[tuple[Any, ...]], secrets: frozenset[str], environ: Mapping[str, str]
) -> list[Target]:
    """The targets of ``--targets-query`` rows ``(name, url)``."""
    if len(columns) != 2:
        raise ConfigError(f"--targets-query: the rows must be (name, url); it returned the columns {columns}")
    found = []
    for number, (name, url) in enumerate(rows, 1):
        origin = f"--targets-query row {number}"
        if not isinstance(url, str):
            raise ConfigError(f"{origin}: the url is {'NULL' if url is None else type(url).__name__}, not text")
        found.append(target(name, url, origin, secrets, environ))
    return found


def from_databases(control_url: str, names: Iterable[str]) -> list[Target]:
    """One target per database name, connected like ``control_url`` but for ``dbname``."""
    return [
        Target(name, config.redact(name), make_conninfo(control_url, dbname=name), "--targets-match") for name in names
    ]


def query_registry(settings: Settings, query: str, environ: Mapping[str, str]) -> list[Target]:
    """``--targets-query`` on the control database; an error of the query itself is exit 2."""
    with connect(settings) as conn:
        try:
            columns, rows = catalog.read_only_rows(conn, query)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"--targets-query: {config.redact(str(exc).strip(), settings.secrets)}") from None
        except psycopg.Error as exc:
            state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
            message = config.redact(str(exc).strip(), settings.secrets)
            raise ConfigError(f"--targets-query failed{state}: {message}") from None
    return from_rows(columns, rows, settings.secrets, environ)


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Target]:
    """Every target of the run's source, in the source's order, checked (unique names, non-empty)."""
    env = os.environ if environ is None else environ
    fleet = settings.fleet
    assert fleet is not None
    if fleet.targets_file is not None:
        found = parse_file(fleet.targets_file, settings.secrets, env)
    else:
        config.require_database(settings, env)
        if fleet.targets_query is not None:
            found = query_registry(settings, fleet.targets_query, env)
        else:
            pattern = fleet.targets_match or ""
            with connect(settings) as conn, database_errors("--targets-match", settings):
                names = catalog.databases_like(conn, pattern)
            found = from_databases(settings.database_url or "", names)
    if not found:
        raise ConfigError("fleet: the target source lists no database")
    seen: dict[str, Target] = {}
    for item in found:
        if item.name in seen:
            raise ConfigError(f"{item.origin}: the target name {item.name!r} is taken by {seen[item.name].origin}")
        seen[item.name] = item
    return found


def shard_of(name: str, shards: int) -> int:
    """The shard of a target: the first 8 bytes of SHA-256 of its UTF-8 name, big-endian, modulo ``shards``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % shards


def shard(targets: list[Target], shards: int, index: int) -> list[Target]:
    """The targets of shard ``index``, in list order."""
    return [t for t in targets if shard_of(t.name, shards) == index]


def secrets(targets: Iterable[Target]) -> frozenset[str]:
    """Every password in the targets' connection strings."""
    found: set[str] = set()
    for item in targets:
        found |= config.url_secrets(item.url)
    return frozenset(found)
