"""The built image, and the chart's pods, run for real with podman against the test PostgreSQL.

Needs RUNNER_TEST_IMAGE (``bash .ci/image`` builds it; ``bash .ci/dev test`` sets it when run
as root). Containers use the host network, a read-only root filesystem and user 65532. podman
reads .ci/containers.conf (unless CONTAINERS_CONF says otherwise), never /etc/containers. Every
image, pod and volume a test creates is removed again, also when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runner import __version__
from runner.targets import shard_of
from tests import charts
from tests.charts import EXAMPLE_MIGRATIONS, REPO, example_app, manifests, readme_example, readme_values
from tests.conftest import OUTPUTS, Database, parse_events
from tests.pgcluster import Cluster
from tests.tenants import Tenants, counted, created

IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "")
PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / ".ci" / "containers.conf"), **os.environ}
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
        env={**PODMAN_ENV, **(env or {})},
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
    podman also turns an emptyDir into a named volume shared by every pod that names it alike,
    so each pod's emptyDir gets the pod's name. Every pod runs once (restartPolicy Never).
    """
    spec = template_pod["spec"]
    renamed = {v["name"]: f"{name}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v}
    volumes = [
        {"name": v["name"], "hostPath": {"path": str(secrets_dir / v["secret"]["secretName"]), "type": "Directory"}}
        if "secret" in v
        else {**v, "name": renamed.get(v["name"], v["name"])}
        for v in spec.get("volumes", [])
    ]
    containers = {
        key: [
            {**c, "volumeMounts": [{**m, "name": renamed.get(m["name"], m["name"])} for m in c.get("volumeMounts", [])]}
            for c in spec[key]
        ]
        for key in ("initContainers", "containers")
        if key in spec
    }
    annotations = template_pod["metadata"].get("annotations")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": template_pod["metadata"]["labels"],
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {**spec, **containers, "hostNetwork": True, "restartPolicy": "Never", "volumes": volumes},
    }


def mount_secret(secret: dict[str, Any], secrets_dir: Path) -> None:
    """Write a Secret the way the kubelet mounts it: a file per key, readable by the pod's user."""
    directory = secrets_dir / secret["metadata"]["name"]
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for key, value in secret["stringData"].items():
        (directory / key).write_text(value)
        (directory / key).chmod(0o644)


def image_values(db: Database, image: str = IMAGE) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "database": {"createSecret": True, "url": db.url},
    }


class Kube:
    """Rendered pods played with ``podman kube play``, each with the ConfigMaps it mounts; the fixture
    takes every pod down and removes the volumes podman made of their ConfigMaps and emptyDirs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.played: list[Path] = []
        self.volumes: list[str] = []

    def manifest(self, docs: list[dict[str, Any]], kind: str, name: str) -> Path:
        """The pod of the rendered ``kind`` (Job or Deployment), with the rendered ConfigMaps, as a file."""
        (workload,) = [d for d in docs if d["kind"] == kind]
        config_maps = [d for d in docs if d["kind"] == "ConfigMap"]
        for secret in (d for d in docs if d["kind"] == "Secret"):
            mount_secret(secret, self.directory)
        pod = pod_manifest(workload["spec"]["template"], name, self.directory)
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all([*config_maps, pod]))
        self.played.append(path)
        self.volumes += [c["metadata"]["name"] for c in config_maps]
        self.volumes += [v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v]
        return path

    def play(self, docs: list[dict[str, Any]], kind: str, name: str) -> None:
        result = podman("kube", "play", str(self.manifest(docs, kind, name)))
        assert result.returncode == 0, result.stdout + result.stderr

    def down(self) -> None:
        for path in self.played:
            podman("kube", "down", str(path))
        if self.volumes:
            podman("volume", "rm", "--force", *set(self.volumes))


@pytest.fixture
def kube(shared_dir: Path) -> Iterator[Kube]:
    pods = Kube(shared_dir)
    yield pods
    pods.down()


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


def test_chart_job_pod_runs_with_its_security_context(db: Database, kube: Kube) -> None:
    """The rendered hook Job's pod (restricted securityContext, Secret volume) applies the bundled migrations."""
    kube.play(manifests(image_values(db)), "Job", "shop-migrate")
    assert wait_exit("shop-migrate-migrate") == 0, podman("logs", "shop-migrate-migrate").stdout
    assert len(db.applied()) == 6
    (info,) = json.loads(podman("inspect", "shop-migrate-migrate").stdout)
    assert info["Config"]["User"] == "65532:65532"  # runAsUser:runAsGroup
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"]
    logs = podman("logs", "shop-migrate-migrate")
    assert parse_events(logs.stdout + logs.stderr)[-1]["exit_code"] == 0


@pytest.fixture(scope="module")
def custom_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two images holding the example app's migrations, removed at the end: "own-image", the README's
    Containerfile FROM the tested image (files in place of /migrations), and "app", an application image
    with them at the README's fromImage path."""
    path = readme_values(charts.FROM_IMAGE)["migrations"]["fromImage"]["path"]
    own = readme_example(charts.OWN_IMAGE)
    assert own.count(f"FROM migration-runner:{__version__}\n") == 1
    containerfiles = {
        "own-image": own.replace(f"FROM migration-runner:{__version__}\n", f"FROM {IMAGE}\n"),
        "app": f"FROM {IMAGE}\nCOPY migrations/ {path}/\n",
    }
    tags = {name: f"localhost/migration-runner-test-{name}:{os.getpid()}" for name in containerfiles}
    try:
        for name, containerfile in containerfiles.items():
            context = tmp_path_factory.mktemp(name)
            shutil.copytree(EXAMPLE_MIGRATIONS, context / "migrations")
            (context / "Containerfile").write_text(containerfile)
            built = podman("build", "--quiet", "--layers=false", "--tag", tags[name], str(context), timeout=300)
            assert built.returncode == 0, built.stderr
        yield tags
    finally:
        podman("rmi", "--force", *tags.values())


def source_values(source: str, db: Database, images: dict[str, str]) -> dict[str, Any]:
    """The example app's values for one way of shipping migrations (the README's, with the test's images);
    the app container prints the status of the migrations it carries."""
    app_dir = readme_values(charts.FROM_IMAGE)["migrations"]["fromImage"]["path"]
    runner = image_values(db, images["own-image"] if source == "own-image" else IMAGE)
    app = {"image": images["app"], "args": ["status", "--migrations-dir", app_dir]}
    if source == "from-image":
        from_image = readme_values(charts.FROM_IMAGE)["migrations"]["fromImage"]
        repository, tag = images["app"].rsplit(":", 1)
        runner["migrations"] = {"fromImage": {**from_image, "repository": repository, "tag": tag}}
    elif source == "config-map":
        runner["migrations"] = readme_values(charts.CONFIG_MAP)["migrations"]
    elif source == "bundled":
        app = {"image": IMAGE, "args": ["status"]}
    return {"app": app, "migration-runner": {**runner, "initContainer": {"command": "wait", "waitTimeoutSeconds": 120}}}


@pytest.mark.parametrize("source", ["bundled", "own-image", "from-image", "config-map"])
def test_example_app_pod_starts_only_after_the_schema_is_ready(
    source: str, db: Database, tmp_path: Path, kube: Kube, custom_images: dict[str, str]
) -> None:
    """For each way of shipping migrations (the bundled ones; an image FROM ours; the app's own image; a
    ConfigMap), the example app's pod waits in its init container until the Job's pod has applied exactly
    those files (byte for byte), then starts."""
    release = f"shop{os.getpid()}"
    docs = manifests(source_values(source, db, custom_images), example_app(tmp_path), release)
    for doc in docs:
        kubernetes_validate.validate(doc, charts.KUBE_VERSION, strict=True)
    app, job = f"{release}-{source}-app", f"{release}-{source}-job"
    # podman kube play runs init containers to completion before it returns: play in the background.
    app_play = subprocess.Popen(
        ["podman", "kube", "play", str(kube.manifest(docs, "Deployment", app))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=PODMAN_ENV,
    )
    try:
        for _ in range(60):
            if (
                podman("container", "exists", f"{app}-migration-runner").returncode == 0
                and container_state(f"{app}-migration-runner")["Status"] == "running"
            ):
                break
            time.sleep(0.5)
        time.sleep(3)
        assert container_state(f"{app}-migration-runner")["Status"] == "running"  # still waiting
        assert podman("container", "exists", f"{app}-app").returncode != 0 or container_state(f"{app}-app")[
            "Status"
        ] in {"created", "configured", "initialized"}
        assert db.query("SELECT to_regclass('migration_history')") == [(None,)]  # nothing migrated yet
        kube.play(docs, "Job", job)
        assert wait_exit(f"{job}-migrate") == 0, podman("logs", f"{job}-migrate").stdout
        out, _ = app_play.communicate(timeout=120)
        assert app_play.returncode == 0, out
        assert wait_exit(f"{app}-app") == 0
        status = podman("logs", f"{app}-app").stdout
    finally:
        if app_play.poll() is None:
            app_play.kill()
    if source == "bundled":
        assert "6 applied, 0 pending" in status
        assert len(db.applied()) == 6
        return
    assert "2 applied, 0 pending" in status
    assert db.applied() == sorted(path.name for path in EXAMPLE_MIGRATIONS.glob("*.sql"))
    assert db.query("SELECT to_regclass('tokens_unified')") == [(None,)]  # no bundled migration ran
    checked = db.run("validate", env=db.env(MIGRATIONS_DIR=str(EXAMPLE_MIGRATIONS)))
    assert checked.code == 0, checked.stdout + checked.stderr  # the applied checksums are the files'


# --- a fleet over the chart's Indexed Job --------------------------------------------------------

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FLEET_MIGRATIONS = 3  # tests/tenants.py's counted migrations; the second sleeps, so a pod can be killed mid-run


def indexed_job(job: dict[str, Any], index: int, source: str = "labels") -> dict[str, Any]:
    """The Job with the pod template its controller makes for ``index``: the completion index as label and
    annotation, and JOB_COMPLETION_INDEX in every container from the label, or from the annotation in releases
    without the PodIndexLabel feature (kubernetes pkg/controller/job, addCompletionIndexEnvVariable)."""
    template = job["spec"]["template"]
    metadata = template["metadata"]
    env = {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.{source}['{INDEX_KEY}']"}},
    }
    spec = {
        **template["spec"],
        **{
            key: [{**c, "env": [*c.get("env", []), env]} for c in template["spec"][key]]
            for key in ("initContainers", "containers")
            if key in template["spec"]
        },
    }
    pod = {
        "metadata": {
            **metadata,
            "labels": {**metadata["labels"], INDEX_KEY: str(index)},
            "annotations": {**metadata.get("annotations", {}), INDEX_KEY: str(index)},
        },
        "spec": spec,
    }
    return {**job, "spec": {**job["spec"], "template": pod}}


@dataclass
class FleetJob:
    """The chart's fleet Job (two shards) over ``tenants``, its targets a mounted Secret, its migrations a ConfigMap."""

    kube: Kube
    docs: list[dict[str, Any]]  # the rendered manifests, with the migrations' ConfigMap
    tenants: Tenants
    names: dict[str, str]  # target name -> tenant database

    def play(self, index: int, name: str, source: str = "labels") -> str:
        """Play the pod of ``index`` as ``name``; returns its runner container's name."""
        docs = [indexed_job(d, index, source) if d["kind"] == "Job" else d for d in self.docs]
        self.kube.play(docs, "Job", name)
        return f"{name}-migrate"

    def logs(self, container: str) -> list[dict[str, Any]]:
        logs = podman("logs", container)
        OUTPUTS.append(logs.stdout + logs.stderr)  # joins the session's password scan
        return parse_events(logs.stdout + logs.stderr)

    def shard(self, index: int) -> set[str]:
        """The target names of shard ``index`` (of 2)."""
        return {name for name in self.names if shard_of(name, 2) == index}

    def assert_migrated_once(self) -> None:
        """Every tenant has every migration applied once and recorded once, and no advisory lock is left."""
        for database in self.names.values():
            assert self.tenants.migrated(database, FLEET_MIGRATIONS), database
        deadline = time.monotonic() + 10  # a killed runner's busy backend ends within client_connection_check_interval
        while self.tenants.advisory_locks():
            assert time.monotonic() < deadline, "advisory locks left behind"
            time.sleep(0.1)


@pytest.fixture
def fleet_job(pg: Cluster, kube: Kube, tmp_path: Path) -> Iterator[FleetJob]:
    release = f"fleet{os.getpid()}"
    with created(pg, 10) as tenants:
        # Target names of our own, so that the two shards' members do not depend on the databases' random prefix.
        names = {f"tenant_{n:02d}": database for n, database in enumerate(tenants.names)}
        assert {shard_of(name, 2) for name in names} == {0, 1}
        counted(tmp_path, FLEET_MIGRATIONS, sleep_s={2: 1.0})
        migrations = {path.name: path.read_text() for path in sorted(tmp_path.glob("*.sql"))}
        targets = "".join(f"{name} {tenants.url(database)}\n" for name, database in names.items())
        mount_secret({"metadata": {"name": f"{release}-tenants"}, "stringData": {"targets": targets}}, kube.directory)
        repository, tag = IMAGE.rsplit(":", 1)
        values = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "migrations": {"configMap": f"{release}-migrations"},
            "fleet": {
                "enabled": True,
                "shards": 2,
                "parallel": 1,
                "targets": {"existingSecret": f"{release}-tenants", "key": "targets"},
            },
        }
        docs = manifests(values, release=release)
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{release}-migrations"}}
        docs.append({**config_map, "data": migrations})
        for doc in docs:
            kubernetes_validate.validate(doc, charts.KUBE_VERSION, strict=True)
        yield FleetJob(kube, docs, tenants, names)


def applied_by(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(target, migration) of every migration_applied event."""
    return {(e["target"], e["migration"]) for e in events if e["event"] == "migration_applied"}


def all_migrations(targets: set[str]) -> set[tuple[str, str]]:
    """(target, migration) of every counted migration of every one of ``targets``."""
    return {(name, f"{version:03d}_m.sql") for name in targets for version in range(1, FLEET_MIGRATIONS + 1)}


@pytest.mark.parametrize("source", ["labels", "annotations"])
def test_fleet_job_pods_migrate_each_tenant_in_exactly_one_shard(fleet_job: FleetJob, source: str) -> None:
    """The chart's fleet Job with 2 shards, its pods of index 0 and 1 played at once (JOB_COMPLETION_INDEX as
    Kubernetes sets it, the targets a mounted Secret file): both exit 0, each tenant migrated, entirely, by exactly
    the pod of its shard, and the two shards together are all tenants."""
    containers = {index: fleet_job.play(index, f"fleet{os.getpid()}-{index}", source) for index in (0, 1)}
    for container in containers.values():
        assert wait_exit(container) == 0, podman("logs", container).stderr
    done: dict[str, list[int]] = {name: [] for name in fleet_job.names}
    for index, container in containers.items():
        events = fleet_job.logs(container)
        finished = [e for e in events if e["event"] == "target_finished"]
        assert all(e["status"] == "done" and e["applied"] == FLEET_MIGRATIONS for e in finished), finished
        for event in finished:
            done[event["target"]].append(index)
        assert applied_by(events) == all_migrations(fleet_job.shard(index))
        assert (events[-1]["event"], events[-1]["exit_code"]) == ("run_finished", 0)
    assert done == {name: [shard_of(name, 2)] for name in fleet_job.names}  # one pod each; together, every tenant
    fleet_job.assert_migrated_once()


def test_fleet_job_pod_killed_mid_run_then_played_again(fleet_job: FleetJob) -> None:
    """The pod of index 0 SIGKILLed mid-run (podman kill, as an OOM kill or a lost node does), then its index played
    again as the Job controller does: the retry exits 0, every tenant ends migrated exactly once, no migration is
    logged by two runs, and each run touched only its own shard's tenants."""
    pid = os.getpid()
    first = fleet_job.play(0, f"fleet{pid}-0")
    other = fleet_job.play(1, f"fleet{pid}-1")
    deadline = time.monotonic() + 60
    while not applied_by(fleet_job.logs(first)):
        assert time.monotonic() < deadline, "index 0 applied nothing"
        time.sleep(0.1)
    assert podman("kill", "--signal", "KILL", first).returncode == 0
    assert wait_exit(first) == 137
    killed = applied_by(fleet_job.logs(first))
    assert not killed >= all_migrations(fleet_job.shard(0))  # it died mid-run
    assert wait_exit(other) == 0
    retry = fleet_job.play(0, f"fleet{pid}-0-retry")  # the replacement pod of index 0
    assert wait_exit(retry) == 0, podman("logs", retry).stderr
    retried = applied_by(fleet_job.logs(retry))
    assert retried
    assert not killed & retried  # nothing applied twice
    assert killed | retried <= all_migrations(fleet_job.shard(0))
    assert applied_by(fleet_job.logs(other)) == all_migrations(fleet_job.shard(1))
    fleet_job.assert_migrated_once()
