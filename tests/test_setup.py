"""What the README's set-up commands rely on: server binaries unpacked safely on every Python 3.11."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from tests.pgcluster import unpack


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
