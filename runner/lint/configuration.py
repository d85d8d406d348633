"""Which rules run, at which severity: defaults, a repository's configuration, then the flags.

Invariants:
- The configuration is ``[tool.migration-runner.lint]`` in the nearest ``pyproject.toml``, or
  a ``migration-runner-lint.toml`` of its own (same keys at the top level), whichever is met
  first walking up from the current directory; ``--config`` names one explicitly.
- Keys: ``select`` (replaces the default set), ``extend-select`` (adds), ``ignore`` (removes,
  last), ``severity`` (rule -> ``error``/``warning``). A selector is a rule id, a squawk rule
  name, a family, ``default`` (every rule not ``off``) or ``ALL``. ``--select`` replaces the
  file's ``select``; ``--ignore`` adds to its ``ignore``.
- Anything unknown is a ``ConfigError`` (exit 2), never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.errors import ConfigError
from runner.lint.rules import RULES, SEVERITIES, resolve

OWN_FILE_NAME = "migration-runner-lint.toml"
KEYS = {"select", "extend-select", "ignore", "severity"}


def find(start: Path) -> Path | None:
    """The configuration file that applies in ``start``, if any."""
    for directory in (start, *start.parents):
        own = directory / OWN_FILE_NAME
        if own.is_file():
            return own
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and b"migration-runner" in pyproject.read_bytes():
            return pyproject
    return None


def read(path: Path) -> dict[str, Any]:
    """The lint table of a configuration file (empty if a pyproject.toml has none)."""
    import tomllib  # noqa: PLC0415 - only when a configuration file exists

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the lint configuration: {exc}") from None
    table = data.get("tool", {}).get("migration-runner", {}).get("lint", {}) if path.name == "pyproject.toml" else data
    unknown = set(table) - KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown lint setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(KEYS))})"
        )
    return dict(table)


def expand(selectors: list[str], where: str) -> set[str]:
    rules: set[str] = set()
    for selector in selectors:
        if selector == "default":
            rules |= {rule.id for rule in RULES.values() if rule.severity != "off"}
            continue
        try:
            rules |= set(resolve(selector))
        except KeyError:
            raise ConfigError(
                f"{where}: unknown rule {selector!r} (a rule id, a squawk rule name, a family, default or ALL)"
            ) from None
    return rules


def split(values: list[str] | None) -> list[str] | None:
    """Comma-separated flag values (repeatable) as one list; None when the flag was not given."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def severities(
    table: dict[str, Any], where: str, *, select: list[str] | None, ignore: list[str] | None
) -> dict[str, str]:
    """Rule id -> severity for every rule that runs."""
    for key in ("select", "extend-select", "ignore"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of rule names")
    chosen = select if select is not None else table.get("select", ["default"])
    enabled = expand(chosen, "--select" if select is not None else where)
    enabled |= expand(table.get("extend-select", []), where)
    enabled -= expand(table.get("ignore", []) + (ignore or []), where)
    overrides = table.get("severity", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f'{where}: severity must be a table of rule = "error" | "warning"')
    result = {rule: RULES[rule].severity if RULES[rule].severity != "off" else "warning" for rule in enabled}
    for name, severity in overrides.items():
        if severity not in SEVERITIES:
            raise ConfigError(f"{where}: severity of {name} must be one of {', '.join(SEVERITIES)}")
        for rule in expand([name], where):
            if severity == "off":
                result.pop(rule, None)
            elif rule in result:
                result[rule] = severity
    return result
