"""Settings from flags and environment; redaction of secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import __version__
from runner.config import OPTIONS, application_name, load, parse_duration, redact
from runner.errors import ConfigError


def test_flags_beat_runner_variables_beat_legacy_variables() -> None:
    """--migrations-dir > RUNNER_MIGRATIONS_DIR > MIGRATIONS_DIR > default."""
    env = {"RUNNER_MIGRATIONS_DIR": "/runner", "MIGRATIONS_DIR": "/legacy"}
    assert load("migrate", {"migrations_dir": "/flag"}, env).migrations_dir == Path("/flag")
    assert load("migrate", {}, env).migrations_dir == Path("/runner")
    assert load("migrate", {}, {"MIGRATIONS_DIR": "/legacy"}).migrations_dir == Path("/legacy")
    assert load("migrate", {}, {}).migrations_dir == Path("./migrations")


def test_every_option_has_a_runner_variable() -> None:
    """Each option can be set through RUNNER_<NAME>."""
    for option in OPTIONS:
        assert f"RUNNER_{option.name.upper().replace('-', '_')}" in option.env


def test_durations() -> None:
    """Durations accept plain seconds and ms/s/min/h units; junk is a usage error."""
    assert [parse_duration("x", v) for v in ("90", "1.5s", "500ms", "5min", "2m", "1h")] == [
        90,
        1.5,
        0.5,
        300,
        120,
        3600,
    ]
    with pytest.raises(ConfigError, match="--x: 'soon' is not a duration"):
        parse_duration("x", "soon")


def test_history_table_qualified() -> None:
    """ops.migration_history splits into schema and table."""
    settings = load("migrate", {"history_table": "ops.migration_history"}, {})
    assert (settings.history_schema, settings.history_table) == ("ops", "migration_history")


def test_database_url_file(tmp_path: Path) -> None:
    """DATABASE_URL_FILE is read and its password becomes a secret; a missing file is exit 2."""
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:file-pass-123@db/x\n")
    settings = load("migrate", {}, {"DATABASE_URL_FILE": str(secret)})
    assert settings.database_url == "postgresql://u:file-pass-123@db/x"
    assert "file-pass-123" in settings.secrets
    assert "file-pass-123" not in repr(settings)
    with pytest.raises(ConfigError, match="cannot read"):
        load("migrate", {}, {"DATABASE_URL_FILE": str(tmp_path / "missing")})


def test_passfile_and_pgpassword_are_secrets(tmp_path: Path) -> None:
    """Passwords from PGPASSWORD and the PGPASSFILE lines are known secrets."""
    passfile = tmp_path / "pgpass"
    passfile.write_text("db:5432:*:u:pass\\:with-colon\n")
    settings = load("migrate", {}, {"PGPASSFILE": str(passfile), "PGPASSWORD": "env-pass-456"})
    assert {"pass:with-colon", "env-pass-456"} <= settings.secrets


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://user:hunter2-pw@host:5432/db",
        "host=db password=hunter2-pw user=u",
        "host=db password='hunter2-pw' user=u",
        "postgresql://host/db?password=hunter2-pw",
        'failed: missing "=" after "hunter2-pw" in connection info string',
    ],
)
def test_redact_removes_password(text: str) -> None:
    """URL userinfo, password= pairs and known secrets are all removed."""
    assert "hunter2-pw" not in redact(text, {"hunter2-pw"})


def test_redact_percent_encoded_secret() -> None:
    """A secret is removed also in its percent-encoded form."""
    assert "p%40ss%2Fword" not in redact("url: x?pw=p%40ss%2Fword", {"p@ss/word"})


def test_application_name_is_bounded_ascii() -> None:
    """application_name is printable ASCII under 64 bytes."""
    name = application_name({"HOSTNAME": "pod-é" + "x" * 100})
    assert name.startswith(f"migration-runner/{__version__}/pod-?")
    assert len(name) == 63


def test_readme_lists_every_option() -> None:
    """The README configuration table names every flag and its RUNNER_ variable."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for option in OPTIONS:
        assert f"| `--{option.name}` | `{option.env[0]}`" in readme, option.name
