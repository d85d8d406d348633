"""The runner reads a ConfigMap volume as the kubelet lays it out (podman's kube play, which the image
tests use, mounts plain files instead)."""

from __future__ import annotations

from pathlib import Path

from tests.charts import EXAMPLE_MIGRATIONS
from tests.conftest import Database


def kubelet_config_map(directory: Path, files: list[Path]) -> None:
    """The kubelet's atomic-writer layout: the files in a timestamped dot directory, ``..data`` a link to
    it, and each key a link through ``..data``."""
    snapshot = directory / "..2026_12_02_05_00_00.000000001"
    snapshot.mkdir(parents=True)
    (directory / "..data").symlink_to(snapshot.name)
    for path in files:
        (snapshot / path.name).write_bytes(path.read_bytes())
        (directory / path.name).symlink_to(Path("..data") / path.name)


def test_migrations_from_a_kubelet_config_map_volume_apply(db: Database, tmp_path: Path) -> None:
    """Keys that are symlinks into ..data (inside the directory) are read as the migrations; the dot
    entries are ignored; the checksums are those of the original files."""
    volume = tmp_path / "migrations"
    kubelet_config_map(volume, sorted(EXAMPLE_MIGRATIONS.glob("*.sql")))
    applied = db.run("migrate", env=db.env(MIGRATIONS_DIR=str(volume)))
    assert applied.code == 0, applied.stdout + applied.stderr
    assert db.applied() == sorted(path.name for path in EXAMPLE_MIGRATIONS.glob("*.sql"))
    checked = db.run("validate", env=db.env(MIGRATIONS_DIR=str(EXAMPLE_MIGRATIONS)))
    assert checked.code == 0, checked.stdout + checked.stderr
