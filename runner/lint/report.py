"""Findings as text for people (human), machines (json), GitHub code scanning (sarif) and Actions (github).

Invariants:
- Every format lists the same findings in the same order; only ``human`` adds a summary line.
- ``sarif`` is SARIF 2.1.0 with one run, every rule that ran described once, and each result
  located by the path as given and the 1-based line.
- ``github`` writes workflow commands (``::error file=...,line=...,title=...::message``), escaped
  as the Actions runner expects, so findings appear as annotations on the pull request.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as quoted
from typing import TYPE_CHECKING

from runner import __version__
from runner.lint.rules import RULES

if TYPE_CHECKING:
    from runner.lint.engine import Finding

FORMATS = ("human", "json", "sarif", "github")
SARIF_LEVEL = {"error": "error", "warning": "warning"}


def render(findings: Sequence[Finding], files: int, fmt: str) -> str:
    """The report in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "human":
        errors = sum(f.severity == "error" for f in findings)
        lines = [str(f) for f in findings]
        lines.append(f"{files} files, {errors} errors, {len(findings) - errors} warnings")
        return "\n".join(lines)
    if fmt == "github":
        return "\n".join(github(f) for f in findings)
    if fmt == "json":
        return json_array(findings)
    import json  # noqa: PLC0415 - only sarif needs it

    return json.dumps(sarif(findings), indent=2)


def json_array(findings: Sequence[Finding]) -> str:
    """The findings as ``json.dumps([f._asdict() for f in findings], indent=2)`` lays them out, byte for byte.

    ``indent`` makes ``json`` encode in Python, a value at a time; here each string goes
    through the C escaper ``json.dumps`` uses and the layout is written directly (several
    times faster on thousands of findings). Rules, severities, files and hints repeat from
    finding to finding: each is escaped once.
    """
    escaped: dict[str, str] = {}

    def once(text: str) -> str:
        value = escaped.get(text)
        if value is None:
            value = escaped[text] = quoted(text)
        return value

    objects = [
        f'  {{\n    "rule": {once(f.rule)},\n    "severity": {once(f.severity)},\n'
        f'    "file": {once(f.file)},\n    "line": {f.line},\n'
        f'    "message": {quoted(f.message)},\n    "hint": {once(f.hint)}\n  }}'
        for f in findings
    ]
    return "[\n" + ",\n".join(objects) + "\n]" if objects else "[]"


def github(finding: Finding) -> str:
    def escape(text: str, *, property_value: bool) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if property_value else text

    command = "error" if finding.severity == "error" else "warning"
    properties = ",".join(
        f"{key}={escape(value, property_value=True)}"
        for key, value in (("file", finding.file), ("line", str(finding.line)), ("title", finding.rule))
    )
    return f"::{command} {properties}::{escape(f'{finding.message} (hint: {finding.hint})', property_value=False)}"


def sarif(findings: Sequence[Finding]) -> dict[str, object]:
    used = sorted({f.rule for f in findings})
    rules = [
        {
            "id": rule,
            "name": rule,
            "shortDescription": {"text": RULES[rule].summary.replace("`", "")},
            "help": {"text": RULES[rule].hint},
            "defaultConfiguration": {"level": SARIF_LEVEL.get(RULES[rule].severity, "note")},
            "properties": {"family": RULES[rule].family, "squawk": list(RULES[rule].aliases)},
        }
        for rule in used
    ]
    results = [
        {
            "ruleId": f.rule,
            "ruleIndex": used.index(f.rule),
            "level": SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message} (hint: {f.hint})"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.file}, "region": {"startLine": f.line}}}],
        }
        for f in findings
    ]
    driver = {"name": "migration-runner lint", "version": __version__, "rules": rules}
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, "results": results}],
    }
