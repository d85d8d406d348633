"""What the README's set-up commands rely on: server binaries unpacked safely on every Python
3.11, the demo command from a checkout only its owner can enter, and CI's guard against a bare
``python3`` in the tests."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import REPO, unpack

RUNTIME = {"migration-runner", "psycopg", "psycopg-binary", "structlog", "prometheus-client", "pglast"}


def tarball(path: Path, members: list[tuple[str, str, str]], uid: int = 1001) -> Path:
    """A .tar.gz of (kind, name, link-or-content) members: kind is file, dir, symlink or hardlink."""
    with tarfile.open(path, "w:gz") as tf:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            data = None
            if kind == "file":
                data = extra.encode()
                info.size, info.mode = len(data), 0o755
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = extra
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


ESCAPES = {
    "dot-dot path": [("file", "../outside/evil", "x")],
    "absolute path": [("file", "/tmp/evil-absolute", "x")],
    "symlink out, then a file through it": [("symlink", "pg/lib", "../../outside"), ("file", "pg/lib/evil", "x")],
    "absolute symlink": [("symlink", "pg/etc", "/etc")],
    "hard link out": [("hardlink", "pg/passwd", "../outside/secret")],
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_unpack_refuses_members_escaping_the_target(tmp_path: Path, case: str) -> None:
    """A member whose path or link leaves the target is refused by our own check (which is all Python
    3.11.0-3.11.3 have: tarfile's filters came in 3.11.4), and nothing lands outside."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("keep")
    archive = tarball(tmp_path / "evil.tar.gz", [("dir", "pg", ""), *ESCAPES[case]])
    with pytest.raises(RuntimeError, match="would escape"):
        unpack(archive, target)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not Path("/tmp/evil-absolute").exists()


def test_unpack_extracts_an_ordinary_tarball_owned_by_the_caller(tmp_path: Path) -> None:
    """Files, directories and links that stay inside are extracted, owned by the caller, not by the
    archive's uid."""
    archive = tarball(
        tmp_path / "pg.tar.gz",
        [
            ("dir", "pg/bin", ""),
            ("file", "pg/bin/postgres", "#!/bin/sh\n"),
            ("symlink", "pg/bin/postmaster", "postgres"),
            ("hardlink", "pg/bin/initdb", "pg/bin/postgres"),
        ],
    )
    target = tmp_path / "target"
    target.mkdir()
    unpack(archive, target)
    assert (target / "pg/bin/postmaster").resolve() == (target / "pg/bin/postgres").resolve()
    assert (target / "pg/bin/initdb").read_text() == "#!/bin/sh\n"
    assert {(target / name).lstat().st_uid for name in ("pg", "pg/bin/postgres", "pg/bin/postmaster")} == {os.getuid()}


@pytest.fixture
def private_checkout() -> Iterator[Path]:
    """A copy of this working tree (tracked and new files) inside a mode-700 directory, like a
    checkout under /root."""
    private = Path(tempfile.mkdtemp(prefix="runner-private-"))
    private.chmod(0o700)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source, dest = REPO / name, private / "checkout" / name
        if source.exists() or source.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest, follow_symlinks=False)
    yield private / "checkout"
    shutil.rmtree(private, ignore_errors=True)


@pytest.mark.slow
def test_demo_command_from_a_private_checkout_installs_only_the_runtime(private_checkout: Path) -> None:
    """`bash .ci/dev migrate` in a fresh checkout under a mode-700 directory applies the bundled
    migrations to a throw-away server (run as nobody when we are root) and installs nothing but the
    runner and its runtime dependencies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DATABASE_URL", "PG"))}
    env["PYTHON"] = sys.executable  # the tests' PATH may hold CI's failing python3
    demo = subprocess.run(
        ["bash", ".ci/dev", "migrate"], cwd=private_checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "exit 0 after" in demo.stderr
    venv_python = private_checkout / ".venv" / "bin" / "python"
    listed = subprocess.run(
        [str(venv_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert installed >= RUNTIME
    assert installed - RUNTIME <= {"pip", "setuptools", "typing-extensions"}
    size = sum(p.stat().st_size for p in (private_checkout / ".venv").rglob("*") if p.is_file() and not p.is_symlink())
    print(f"\ndemo .venv: {size / 2**20:.0f} MiB")


def test_bare_python3_fails_in_ci() -> None:
    """Under CI (or `bash .ci/dev test`) the first python3 and python on PATH fail loudly, so a test
    that runs a bare python3 instead of sys.executable fails."""
    if not (os.environ.get("CI") or os.environ.get("RUNNER_PYTHON_GUARD")):
        pytest.skip("only CI and `bash .ci/dev test` put the guard on PATH")
    guards = sorted((REPO / ".ci" / "guard").iterdir())
    assert [guard.name for guard in guards] == ["python", "python3"]
    for guard in guards:
        # what a bare name finds first is the guard (run by its own path: no interpreter is looked up here)
        assert shutil.which(guard.name) == str(guard)
        bare = subprocess.run([str(guard), "-c", "print('ran')"], capture_output=True, text=True)
        assert bare.returncode != 0
        assert "ran" not in bare.stdout
        assert "sys.executable" in bare.stderr
