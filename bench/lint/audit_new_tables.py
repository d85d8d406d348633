"""``python -m bench.lint.audit_new_tables FINDINGS.json``: lock findings on tables the same file creates.

Reads the JSON report of ``migration-runner lint`` and lists every live-risk finding whose
table (named in the message) a ``CREATE TABLE``, ``CREATE ... AS``, ``SELECT ... INTO`` or
``CREATE MATERIALIZED VIEW`` of the same file creates: each is a false positive, or a table
dropped and created again later in the file (then the finding stands), to be checked by hand.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LOCK_RULES = {
    "index-not-concurrent",
    "constraint-validates",
    "constraint-builds-index",
    "set-not-null-scan",
    "column-type-rewrite",
    "add-column-rewrite",
    "add-column-required",
    "validate-same-transaction",
}
TABLE = re.compile(r" on (?:existing table )?([\w$]+)")


def created(text: str, table: str) -> bool:
    name = re.escape(table)
    pattern = (
        rf"create\s+(?:(?:global\s+|local\s+)?(?:temp|temporary|unlogged)\s+)?(?:table|materialized\s+view)\s+"
        rf"(?:if\s+not\s+exists\s+)?(?:[\w\"]+\.)?\"?{name}\b|\binto\s+(?:[\w\"]+\.)?\"?{name}\b\s+from"
    )
    return re.search(pattern, text, re.IGNORECASE) is not None


def main() -> None:
    findings = json.loads(Path(sys.argv[1]).read_text())
    suspects = 0
    checked = 0
    for finding in findings:
        if finding["rule"] not in LOCK_RULES:
            continue
        match = TABLE.search(finding["message"])
        if not match:
            continue
        checked += 1
        if created(Path(finding["file"]).read_text(), match.group(1)):
            suspects += 1
            print(f"{finding['file']}:{finding['line']}: {finding['rule']}: {finding['message'][:100]}")
    print(f"{checked} lock findings naming a table; {suspects} on a table the same file creates")


if __name__ == "__main__":
    main()
