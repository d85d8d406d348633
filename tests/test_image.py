"""The built image, and the chart's pods, run for real with podman against the test PostgreSQL.

Needs RUNNER_TEST_IMAGE (``bash .ci/image`` builds it; ``bash .ci/dev test`` sets it when run
as root). Containers use the host network, a read-only root filesystem and user 65532.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.conftest import Database, parse_events

IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "")
REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(not IMAGE, reason="RUNNER_TEST_IMAGE not set (bash .ci/image builds the image)"),
    pytest.mark.slow,
]


def podman(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_image(db: Database, *args: str, migrations: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the image once: host network, read-only, user 65532, URL passed through the environment."""
    mount = ["--volume", f"{migrations}:/migrations:ro"] if migrations else []
    return podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--user",
        "65532",
        "--env",
        "DATABASE_URL",
        *mount,
        IMAGE,
        *args,
        env={"DATABASE_URL": db.url},
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the container's user 65532 can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="runner-image-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_image_applies_the_bundled_migrations(db: Database) -> None:
    """The default command applies /migrations as user 65532 on a read-only root: exit 0, JSON logs."""
    result = run_image(db)
    assert result.returncode == 0, result.stdout + result.stderr
    events = parse_events(result.stderr)
    assert events
    assert len(events) == len(result.stderr.strip().splitlines())  # every line is JSON
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["exit_code"] == 0
    assert len(db.applied()) == 6
    assert db.cluster.password not in result.stdout + result.stderr


def test_image_broken_migration_exits_1(db: Database, shared_dir: Path) -> None:
    """A broken migration mounted at /migrations makes the container exit 1, nothing of it applied."""
    (shared_dir / "001_ok.sql").write_text("CREATE TABLE IF NOT EXISTS ok (id int);\n")
    (shared_dir / "002_broken.sql").write_text("CREATE TABLE half (id int);\nSELECT 1/0;\n")
    for path in shared_dir.iterdir():
        path.chmod(0o644)
    result = run_image(db, "migrate", migrations=shared_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert db.applied() == ["001_ok.sql"]
    assert db.query("SELECT to_regclass('half')") == [(None,)]


def test_podman_stop_sends_sigterm_to_pid_1(db: Database, shared_dir: Path) -> None:
    """podman stop (SIGTERM to PID 1): exit 143, the statement cancelled, the lock released, failure recorded."""
    (shared_dir / "001_slow.sql").write_text("SELECT pg_sleep(60);\n")
    (shared_dir / "001_slow.sql").chmod(0o644)
    name = f"runner-stop-{os.getpid()}"
    started = podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--user",
        "65532",
        "--env",
        "DATABASE_URL",
        "--volume",
        f"{shared_dir}:/migrations:ro",
        IMAGE,
        env={"DATABASE_URL": db.url},
    )
    assert started.returncode == 0, started.stderr
    try:
        db.backend_running("SELECT pg_sleep(60)", timeout=60)
        before = time.monotonic()
        assert podman("stop", "--time", "20", name).returncode == 0
        elapsed = time.monotonic() - before
        code = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "143"
        assert elapsed < 10  # the runner exited on SIGTERM; podman did not need to SIGKILL it
        assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
        ((_name, success, _c, error),) = db.history()
        assert success is False
        assert "SIGTERM" in error
    finally:
        podman("rm", "--force", name)


def test_image_metadata() -> None:
    """Numeric non-root user, exec-form entrypoint, OCI labels, no HEALTHCHECK; size reported."""
    (info,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["migration-runner"]
    assert config["Cmd"] == ["migrate"]
    assert "Healthcheck" not in config
    assert "MIGRATIONS_DIR=/migrations" in config["Env"]
    labels = config["Labels"]
    for key in ("title", "version", "revision", "created", "licenses", "source", "description"):
        assert labels[f"org.opencontainers.image.{key}"]
    print(f"\nimage size: {info['Size'] / 2**20:.1f} MiB")


def pod_manifest(template_pod: dict[str, Any], name: str, secrets_dir: Path) -> dict[str, Any]:
    """A Pod from a rendered pod template, on the host network (the test server is on loopback).

    The kubelet mounts a Secret volume as a directory with one file per key. podman 4.3's
    kube play cannot (it mounts base64 data verbatim), so Secret volumes become that directory.
    """
    volumes = [
        {"name": v["name"], "hostPath": {"path": str(secrets_dir / v["secret"]["secretName"]), "type": "Directory"}}
        if "secret" in v
        else v
        for v in template_pod["spec"].get("volumes", [])
    ]
    spec = {**template_pod["spec"], "hostNetwork": True, "volumes": volumes}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template_pod["metadata"]["labels"]},
        "spec": spec,
    }


def mount_secret(secret: dict[str, Any], secrets_dir: Path) -> None:
    """Write a Secret the way the kubelet mounts it: a file per key, readable by the pod's user."""
    directory = secrets_dir / secret["metadata"]["name"]
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for key, value in secret["stringData"].items():
        (directory / key).write_text(value)
        (directory / key).chmod(0o644)


def render(chart: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name="shop", namespace="prod", is_install=True)
    return [
        doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def image_values(db: Database) -> dict[str, Any]:
    repository, tag = IMAGE.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "database": {"createSecret": True, "url": db.url},
    }


def play(manifest: dict[str, Any], directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = podman("kube", "play", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def container_state(name: str) -> dict[str, Any]:
    (info,) = json.loads(podman("inspect", name).stdout)
    return dict(info["State"])


def wait_exit(name: str, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = container_state(name)
        if state["Status"] in {"exited", "stopped"}:
            return int(state["ExitCode"])
        time.sleep(0.5)
    pytest.fail(f"{name} did not exit in {seconds}s")


def test_chart_job_pod_runs_with_its_security_context(db: Database, shared_dir: Path) -> None:
    """The rendered hook Job's pod (restricted securityContext, Secret volume) applies the bundled migrations."""
    docs = render(REPO / "helm" / "migration-runner", image_values(db))
    mount_secret(next(d for d in docs if d["kind"] == "Secret"), shared_dir)
    job = next(d for d in docs if d["kind"] == "Job")
    path = play(pod_manifest(job["spec"]["template"], "shop-migrate", shared_dir), shared_dir, "job")
    try:
        assert wait_exit("shop-migrate-migrate") == 0, podman("logs", "shop-migrate-migrate").stdout
        assert len(db.applied()) == 6
        (info,) = json.loads(podman("inspect", "shop-migrate-migrate").stdout)
        assert info["Config"]["User"] == "65532:65532"  # runAsUser:runAsGroup
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"]
        logs = podman("logs", "shop-migrate-migrate")
        assert parse_events(logs.stdout + logs.stderr)[-1]["exit_code"] == 0
    finally:
        podman("kube", "down", str(path))


def test_example_app_pod_starts_only_after_the_schema_is_ready(db: Database, tmp_path: Path, shared_dir: Path) -> None:
    """The example app's pod waits in its init container until the Job's pod has migrated, then starts."""
    root = tmp_path / "helm"
    shutil.copytree(REPO / "helm", root, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm_python.dependency_update(root / "examples" / "app", skip_refresh=True)
    values = {
        "app": {"image": IMAGE},
        "migration-runner": {**image_values(db), "initContainer": {"command": "wait", "waitTimeoutSeconds": 120}},
    }
    docs = render(root / "examples" / "app", values)
    mount_secret(next(d for d in docs if d["kind"] == "Secret"), shared_dir)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    job = next(d for d in docs if d["kind"] == "Job")
    app_pod = pod_manifest(deployment["spec"]["template"], "shop-app", shared_dir)
    app_pod["spec"]["restartPolicy"] = "Never"
    app_path = shared_dir / "app.yaml"
    app_path.write_text(yaml.safe_dump(app_pod))
    # podman kube play runs init containers to completion before it returns: play in the background.
    app_play = subprocess.Popen(
        ["podman", "kube", "play", str(app_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    job_path: Path | None = None
    try:
        for _ in range(60):
            if (
                podman("container", "exists", "shop-app-migration-runner").returncode == 0
                and container_state("shop-app-migration-runner")["Status"] == "running"
            ):
                break
            time.sleep(0.5)
        time.sleep(3)
        assert container_state("shop-app-migration-runner")["Status"] == "running"  # still waiting
        assert podman("container", "exists", "shop-app-app").returncode != 0 or container_state("shop-app-app")[
            "Status"
        ] in {"created", "configured", "initialized"}
        assert db.query("SELECT to_regclass('tokens_unified')") == [(None,)]
        job_path = play(pod_manifest(job["spec"]["template"], "shop-migrate", shared_dir), shared_dir, "job")
        assert wait_exit("shop-migrate-migrate") == 0
        out, _ = app_play.communicate(timeout=120)
        assert app_play.returncode == 0, out
        assert wait_exit("shop-app-app") == 0
        status = podman("logs", "shop-app-app").stdout
        assert "6 applied, 0 pending" in status
    finally:
        if app_play.poll() is None:
            app_play.kill()
        if job_path:
            podman("kube", "down", str(job_path))
        podman("kube", "down", str(app_path))
