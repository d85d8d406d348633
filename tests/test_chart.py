"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), linted, and validated
against the Kubernetes schemas (kubernetes-validate). No cluster is needed."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from runner import __version__
from runner.errors import ExitCode
from tests import charts
from tests.charts import (
    CHART,
    EXAMPLE_MIGRATIONS,
    KUBE_VERSION,
    REPO,
    example_app,
    manifests,
    readme_example,
    readme_values,
    render,
)

BASE_VALUES = {"database": {"existingSecret": "shop-database"}}
FROM_IMAGE = readme_values(charts.FROM_IMAGE)  # the README's examples, as written
CONFIG_MAP = readme_values(charts.CONFIG_MAP)


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


# The fleet's target sources, one each: a Secret's file, a registry query, a name pattern.
TARGET_SOURCES: dict[str, dict[str, Any]] = {
    "targets-file": {"targets": {"existingSecret": "shop-tenants", "key": "tenants.txt"}},
    "targets-query": {"targetsQuery": "SELECT tenant_id, dsn FROM tenants WHERE active ORDER BY tenant_id"},
    "targets-match": {"targetsMatch": "tenant\\_%"},
}


def fleet_values(source: str, **fleet: Any) -> dict[str, Any]:
    """Values enabling the fleet with one target source; the database Secret only where it is read."""
    values: dict[str, Any] = {"fleet": {"enabled": True, **TARGET_SOURCES[source], **fleet}}
    return values if source == "targets-file" else {**BASE_VALUES, **values}


VARIANTS = {
    "default": BASE_VALUES,
    "hook-secret": {"database": {"createSecret": True, "url": "postgresql://app:pw@db/app"}},
    "metrics": {
        **BASE_VALUES,
        "metrics": {
            "pushgatewayUrl": "http://pushgateway:9091",
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        },
    },
    "tuned": {
        **BASE_VALUES,
        "job": {
            "activeDeadlineSeconds": 900,
            "deadlineMarginSeconds": 60,
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "lockWaitTimeoutSeconds": 300,
            "extraArgs": ["--ddl-lock-timeout=2s"],
        },
    },
    "from-image": {**BASE_VALUES, **FROM_IMAGE},
    "config-map": {**BASE_VALUES, **CONFIG_MAP},
    "dashboard": {**BASE_VALUES, "metrics": {"grafanaDashboard": {"enabled": True, "folder": "Databases"}}},
    "fleet-targets-file": fleet_values("targets-file"),
    "fleet-targets-query": {
        **fleet_values("targets-query", shards=16, parallelism=4, maxFailedIndexes=0),
        **FROM_IMAGE,
        "metrics": {"pushgatewayUrl": "http://pushgateway:9091", "prometheusRule": {"enabled": True}},
    },
    "fleet-targets-match": {**fleet_values("targets-match", shards=1), "job": {"ttlSecondsAfterFinished": 600}},
}


def assert_admissible(job: dict[str, Any]) -> None:
    """The API server's own rules for a Job that its OpenAPI schema cannot express (kubernetes
    pkg/apis/batch/validation/validation.go: validateJobSpec, validatePodFailurePolicy*, ValidateJob)."""
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    indexed = spec.get("completionMode") == "Indexed"
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy and backoffLimitPerIndex
    if "backoffLimitPerIndex" in spec or "maxFailedIndexes" in spec:
        assert indexed, "requires indexed completion mode"
    if "maxFailedIndexes" in spec:
        assert "backoffLimitPerIndex" in spec
        assert spec["maxFailedIndexes"] <= spec["completions"]
    if indexed:
        assert spec["completions"] >= 1
        assert spec.get("parallelism", 1) <= 100_000
        assert len(f"{job['metadata']['name']}-{spec['completions'] - 1}") <= 63  # the pods' hostnames
    containers = {c["name"] for c in pod["containers"] + pod.get("initContainers", [])}
    rules = spec["podFailurePolicy"]["rules"]
    assert len(rules) <= 20
    for rule in rules:
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule)
        if rule["action"] == "FailIndex":
            assert "backoffLimitPerIndex" in spec, "FailIndex requires the backoffLimitPerIndex to be set"
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["containerName"] in containers
            assert codes["values"], "at least one value is required"
            assert codes["values"] == sorted(set(codes["values"])), "must be ordered, no duplicates"
            assert codes["operator"] == "NotIn" or 0 not in codes["values"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_renders_lints_and_validates(variant: str) -> None:
    """Every variant renders, passes helm lint without errors, and each standard manifest passes the
    Kubernetes schema for that version."""
    values = VARIANTS[variant]
    report = helm_python.lint(CHART, values, strict=False)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 3] == []
    docs = manifests(values)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD: checked by test_prometheus_rule_is_the_shipped_rules
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] == "Job":
            assert_admissible(doc)


def test_job_is_a_hook_with_the_restricted_profile() -> None:
    """The Job: pre-install/pre-upgrade hook, before-hook-creation, Never, backoffLimit 1, restricted
    securityContext, no service-account token, logs as termination message."""
    job = of_kind(manifests(BASE_VALUES), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert annotations["helm.sh/hook-weight"] == "0"
    spec = job["spec"]
    assert spec["backoffLimit"] == 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"]["limits"]["memory"]


def test_restricted_profile_of_every_pod(example: Path) -> None:
    """Every container of every pod the charts render (Job, the example app's init containers, and the
    copy of migrations.fromImage in both) meets the restricted Pod Security Standard's container rules."""
    for docs in (
        manifests(BASE_VALUES),
        manifests(VARIANTS["from-image"]),
        *(manifests(VARIANTS[f"fleet-{source}"]) for source in TARGET_SOURCES),
        manifests(None, example),
        manifests({"migration-runner": FROM_IMAGE}, example),
        manifests({"migration-runner": CONFIG_MAP}, example),
    ):
        for doc in docs:
            if doc["kind"] not in {"Job", "Deployment"}:
                continue
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                context = {**pod.get("securityContext", {}), **container["securityContext"]}
                assert context["runAsNonRoot"] is True
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                assert context["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
            assert all(
                set(volume) <= {"name", "secret", "emptyDir", "configMap", "projected"}
                for volume in pod.get("volumes", [])
            )


def argument(container: dict[str, Any], flag: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith(flag + "=")]
    return value


@pytest.mark.parametrize(("deadline", "margin"), [(280, 20), (900, 60), (120, 5)])
def test_runner_deadline_is_below_the_jobs(deadline: int, margin: int) -> None:
    """--deadline = activeDeadlineSeconds - margin, and the lock wait fits inside it."""
    values = {
        **BASE_VALUES,
        "job": {"activeDeadlineSeconds": deadline, "deadlineMarginSeconds": margin, "lockWaitTimeoutSeconds": 60},
    }
    job = of_kind(manifests(values), "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert job["spec"]["activeDeadlineSeconds"] == deadline
    assert argument(container, "--deadline") == f"{deadline - margin}s"
    assert int(argument(container, "--lock-wait-timeout").rstrip("s")) <= deadline - margin


def test_pod_failure_policy_maps_exit_codes() -> None:
    """A failed migration (1) fails the Job at once; a busy lock (4) counts as a retry; evictions are ignored."""
    rules = of_kind(manifests(BASE_VALUES), "Job")["spec"]["podFailurePolicy"]["rules"]
    by_action = {rule["action"]: rule for rule in rules}
    assert 1 in by_action["FailJob"]["onExitCodes"]["values"]
    assert 4 not in by_action["FailJob"]["onExitCodes"]["values"]
    assert by_action["Count"]["onExitCodes"]["values"] == [4]
    assert by_action["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_eviction_is_ignored_before_any_exit_code_is_judged(variant: str) -> None:
    """The first rule of every Job's podFailurePolicy ignores the DisruptionTarget condition: the first matching rule
    decides, and an evicted pod's containers exit as on any SIGTERM (the runner 143; an interrupted copy of the
    application's migrations non-zero, which the copy rule would otherwise take for a failed Job)."""
    rules = of_kind(manifests(VARIANTS[variant]), "Job")["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert [rule["action"] for rule in rules].count("Ignore") == 1


def test_database_url_comes_from_the_secret() -> None:
    """The URL is read from the existing Secret's key through DATABASE_URL_FILE; it is never a literal env value."""
    job = of_kind(manifests({"database": {"existingSecret": "shop-database", "secretKey": "url"}}), "Job")
    pod = job["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["secret"] == {"secretName": "shop-database", "optional": False}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["DATABASE_URL_FILE"] == "/var/run/secrets/migration-runner/url"
    assert "DATABASE_URL" not in env


def test_hook_secret_is_created_before_the_job() -> None:
    """createSecret renders a hook Secret at weight -5, before the Job at weight 0."""
    docs = manifests(VARIANTS["hook-secret"])
    secret, job = of_kind(docs, "Secret"), of_kind(docs, "Job")
    assert secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-5"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert job["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == secret["metadata"]["name"]


# The alert rule files promtool tests (deploy/prometheus/ links to them), in the PrometheusRule's order.
RULE_FILES = ("migration-runner-rules.yaml", "migration-runner-fleet-rules.yaml")
FLEET_ALERTS = {"MigrationRunnerDatabaseLeftBehind", "MigrationRunnerFleetIncomplete"}


@pytest.mark.parametrize("fleet", [False, True])
def test_prometheus_rule_is_the_shipped_rules(tmp_path: Path, fleet: bool) -> None:
    """The PrometheusRule carries exactly the groups of the rule files promtool tests: the runner's, then, for a
    fleet release only, the fleet's (with the fleet alerts); promtool accepts it."""
    values = {**VARIANTS["metrics"], **({"fleet": {**MATCH, "enabled": True}} if fleet else {})}
    rule = of_kind(manifests(values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    files = RULE_FILES if fleet else RULE_FILES[:1]
    shipped = [group for name in files for group in yaml.safe_load((CHART / "files" / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == shipped
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"MigrationRunnerFailed", "MigrationRunnerStuckWaitingForLock"} <= alerts
    assert alerts >= FLEET_ALERTS if fleet else not FLEET_ALERTS & alerts
    promtool = shutil.which("promtool")
    if promtool:
        extracted = tmp_path / "rules.yaml"
        extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        subprocess.run([promtool, "check", "rules", str(extracted)], check=True, capture_output=True)
    job = of_kind(manifests(VARIANTS["metrics"]), "Job")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RUNNER_PUSHGATEWAY_URL"] == "http://pushgateway:9091"


DASHBOARD = CHART / "files" / "grafana-dashboard.json"


@pytest.mark.parametrize(
    ("dashboard", "label", "annotations"),
    [
        ({"enabled": True}, ("grafana_dashboard", "1"), None),
        (
            {"enabled": True, "label": "dashboards.example.com/grafana", "labelValue": "", "folder": "Databases"},
            ("dashboards.example.com/grafana", ""),
            {"grafana_folder": "Databases"},
        ),
        (
            {"enabled": True, "folderAnnotation": "k8s-sidecar-target-directory", "folder": "db"},
            None,
            {"k8s-sidecar-target-directory": "db"},
        ),
    ],
)
def test_grafana_dashboard_config_map_holds_the_file(
    dashboard: dict[str, Any], label: tuple[str, str] | None, annotations: dict[str, str] | None
) -> None:
    """metrics.grafanaDashboard: an ordinary ConfigMap (no hook) labelled for Grafana's sidecar (grafana_dashboard: "1"
    unless configured), the folder annotation only with a folder, holding files/grafana-dashboard.json byte for byte."""
    docs = manifests({**BASE_VALUES, "metrics": {"grafanaDashboard": dashboard}})
    (config_map,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    metadata = config_map["metadata"]
    assert metadata["name"] == "shop-migration-runner-dashboard"
    key, value = label or ("grafana_dashboard", "1")
    assert metadata["labels"][key] == value
    assert metadata["labels"]["app.kubernetes.io/instance"] == "shop"
    assert metadata.get("annotations") == annotations  # no helm.sh/hook: a release resource
    assert config_map["data"] == {"migration-runner.json": DASHBOARD.read_text()}
    assert json.loads(config_map["data"]["migration-runner.json"])["uid"] == "migration-runner"
    kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
    assert not [doc for doc in manifests(BASE_VALUES) if doc["kind"] == "ConfigMap"]  # off by default


@pytest.mark.parametrize("name", RULE_FILES)
def test_promtool_tests_the_charts_rule_files(name: str) -> None:
    """deploy/prometheus/<file>, which promtool checks and unit tests, is the chart's files/<file>, byte for byte."""
    deployed = REPO / "deploy" / "prometheus" / name
    assert deployed.read_bytes() == (CHART / "files" / name).read_bytes()
    assert name in (deployed.with_name(name.replace(".yaml", ".test.yaml"))).read_text()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**BASE_VALUES, "job": {"backoffLimit": 7}}, "/job/backoffLimit"),
        (
            {**BASE_VALUES, "migrations": {**FROM_IMAGE["migrations"], **CONFIG_MAP["migrations"]}},
            "fromImage and configMap are mutually exclusive: set only one of them",
        ),
        ({**BASE_VALUES, "migrations": {"fromImage": {"repository": "shop/app"}}}, "/migrations/fromImage/tag"),
        (
            {**BASE_VALUES, "migrations": {"fromImage": {"repository": "shop/app", "tag": "1", "path": "db"}}},
            "/migrations/fromImage/path",
        ),
        ({**BASE_VALUES, "initContainer": {"command": "mirgate"}}, "/initContainer/command"),
        (
            {**BASE_VALUES, "metrics": {"grafanaDashboard": {"enabled": True, "label": "grafana dashboard"}}},
            "/metrics/grafanaDashboard/label",
        ),
        ({**BASE_VALUES, "jbo": {}}, "jbo"),
        (
            {
                **BASE_VALUES,
                "securityContext": {
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": True,
                    "capabilities": {},
                    "seccompProfile": {},
                },
            },
            "/securityContext",
        ),
        ({}, "database.existingSecret is required"),
        ({"fleet": {"enabled": True, "targetsMatch": "t%", "onError": "halt"}}, "/fleet/onError"),
        ({"fleet": {"enabled": True, "targetsMatch": "t%", "parallel": 129}}, "/fleet/parallel"),
        ({"fleet": {"enabled": True, "targetsMatch": "t%", "shards": 100001}}, "/fleet/shards"),
        ({"fleet": {"enabled": True, "targets": {"existingSecret": "t", "key": "a/b"}}}, "/fleet/targets/key"),
        ({"fleet": {"enabled": True, "targetsMatch": "t%"}}, "database.existingSecret is required"),
        ({**BASE_VALUES, "job": {"activeDeadlineSeconds": 60, "deadlineMarginSeconds": 60}}, "deadlineMarginSeconds"),
        (
            {**BASE_VALUES, "job": {"activeDeadlineSeconds": 100, "lockWaitTimeoutSeconds": 500}},
            "lockWaitTimeoutSeconds",
        ),
    ],
)
def test_wrong_values_are_refused_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    """values.schema.json and the template checks reject wrong values, naming what is wrong."""
    with pytest.raises(helm_python.HelmError, match=message.replace(".", r"\.")):
        render(values)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example app's chart, its dependency vendored in a copy (the repo stays untouched)."""
    return example_app(tmp_path_factory.mktemp("charts"))


def test_example_app_renders_the_init_container(example: Path) -> None:
    """The example application chart renders the runner's init container (wait) before its app container,
    with the secret volume, and includes the hook Job from the dependency."""
    docs = manifests(None, example)
    deployment, job = of_kind(docs, "Deployment"), of_kind(docs, "Job")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][0] == "wait"
    assert init["image"] == f"migration-runner:{__version__}"
    assert {v["name"] for v in pod["volumes"]} == {"database-url"}
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["template"]["spec"])


def test_from_image_copies_the_migrations_where_the_runner_reads_them() -> None:
    """migrations.fromImage: an init container of the application's image copies `path` into an emptyDir
    (cp -R, restricted like the runner), which the runner mounts read-only at migrations.dir; a failed
    copy fails the Job at once."""
    source = FROM_IMAGE["migrations"]["fromImage"]
    job = of_kind(manifests(VARIANTS["from-image"]), "Job")
    pod = pod_of(job)
    (copy,) = pod["initContainers"]
    (runner,) = pod["containers"]
    assert copy["image"] == f"{source['repository']}:{source['tag']}"
    assert copy["command"] == ["cp", "-R", f"{source['path']}/.", "/runner-migrations/"]
    assert copy["volumeMounts"] == [{"name": "migrations", "mountPath": "/runner-migrations"}]
    for key in ("securityContext", "resources", "terminationMessagePolicy"):
        assert copy[key] == runner[key]
    assert {"name": "migrations", "mountPath": "/migrations", "readOnly": True} in runner["volumeMounts"]
    assert {"name": "MIGRATIONS_DIR", "value": "/migrations"} in runner["env"]
    assert {"name": "migrations", "emptyDir": {}} in pod["volumes"]
    assert {
        "action": "FailJob",
        "onExitCodes": {"containerName": "copy-migrations", "operator": "NotIn", "values": [0]},
    } in job["spec"]["podFailurePolicy"]["rules"]


def test_from_image_command_and_directory_are_configurable() -> None:
    """An image without cp sets fromImage.command; migrations.dir moves the mount and MIGRATIONS_DIR together."""
    command = ["/bin/busybox", "cp", "-R", "/srv/db/.", "/runner-migrations/"]
    values = {
        **BASE_VALUES,
        "migrations": {
            "dir": "/var/migrations",
            "fromImage": {**FROM_IMAGE["migrations"]["fromImage"], "command": command},
        },
    }
    pod = pod_of(of_kind(manifests(values), "Job"))
    assert pod["initContainers"][0]["command"] == command
    (runner,) = pod["containers"]
    assert {"name": "migrations", "mountPath": "/var/migrations", "readOnly": True} in runner["volumeMounts"]
    assert {"name": "MIGRATIONS_DIR", "value": "/var/migrations"} in runner["env"]


def test_config_map_is_mounted_where_the_runner_reads_it() -> None:
    """migrations.configMap (its name, a template): that ConfigMap mounted read-only at migrations.dir,
    no copy; without either option nothing is mounted and the image's own files are read."""
    pod = pod_of(of_kind(manifests(VARIANTS["config-map"]), "Job"))
    assert "initContainers" not in pod
    assert {"name": "migrations", "configMap": {"name": "shop-migrations", "optional": False}} in pod["volumes"]
    assert {"name": "migrations", "mountPath": "/migrations", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    bundled = pod_of(of_kind(manifests(BASE_VALUES), "Job"))
    assert [v["name"] for v in bundled["volumes"]] == ["database-url"]
    assert [m["name"] for m in bundled["containers"][0]["volumeMounts"]] == ["database-url"]


def test_example_app_ships_its_migrations_in_a_hook_config_map(example: Path) -> None:
    """With migrations.configMap the example app (the README's template, as written) renders its
    migrations/*.sql as a ConfigMap, one key per file with the file's exact text, created as a hook
    before the Job; its pods' init container and the Job mount it."""
    template = (example / "templates" / "migrations-configmap.yaml").read_text().splitlines()
    assert all(line in template for line in readme_example(charts.CONFIG_MAP_TEMPLATE).splitlines())
    docs = manifests({"migration-runner": CONFIG_MAP}, example)
    config_map, job, deployment = of_kind(docs, "ConfigMap"), of_kind(docs, "Job"), of_kind(docs, "Deployment")
    assert config_map["metadata"]["name"] == "shop-migrations"
    assert config_map["data"] == {path.name: path.read_text() for path in EXAMPLE_MIGRATIONS.glob("*.sql")}
    annotations = config_map["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for pod in (pod_of(job), pod_of(deployment)):
        assert {"name": "migrations", "configMap": {"name": "shop-migrations", "optional": False}} in pod["volumes"]
    (init,) = pod_of(deployment)["initContainers"]
    assert {"name": "migrations", "mountPath": "/migrations", "readOnly": True} in init["volumeMounts"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_example_app_copies_from_its_image_then_waits(example: Path) -> None:
    """With migrations.fromImage the example app's pods first copy the migrations out of the app image,
    then wait for them to be applied, reading the copy."""
    docs = manifests({"migration-runner": FROM_IMAGE}, example)
    pod = pod_of(of_kind(docs, "Deployment"))
    copy, wait = pod["initContainers"]
    assert (copy["name"], wait["name"], wait["args"][0]) == ("copy-migrations", "migration-runner", "wait")
    assert {"name": "migrations", "mountPath": "/migrations", "readOnly": True} in wait["volumeMounts"]
    assert {"name": "migrations", "emptyDir": {}} in pod["volumes"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("extra", "fails"), [(0, False), (1, True)])
def test_config_map_over_one_mib_fails_the_render(tmp_path: Path, extra: int, fails: bool) -> None:
    """Migrations filling exactly the 1 MiB a ConfigMap holds (keys included) render; one byte more fails the
    render with a message naming the size and the alternative, before anything reaches a cluster."""
    chart = example_app(tmp_path)
    used = sum(len(path.name) + len(path.read_bytes()) for path in EXAMPLE_MIGRATIONS.glob("*.sql"))
    filler = "003_filler.sql"
    (chart / "migrations" / filler).write_text("x" * (2**20 - used - len(filler) + extra))
    values = {"migration-runner": CONFIG_MAP}
    if fails:
        with pytest.raises(helm_python.HelmError, match=rf"take {2**20 + 1} bytes, over the 1 MiB \(1048576 bytes\)"):
            render(values, chart)
    else:
        config_map = of_kind(manifests(values, chart), "ConfigMap")
        assert sum(len(key) + len(value) for key, value in config_map["data"].items()) == 2**20


def test_chart_version_matches_the_runner() -> None:
    """appVersion, the default image tag and the runner's version agree."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == values["image"]["tag"] == __version__


# --- fleet: one Indexed Job, a pod per shard -------------------------------------------------------

SHARD_TABLE = "| exit | the shard's pod | `podFailurePolicy` action |"


def readme_shard_actions() -> tuple[dict[int, str], str]:
    """The README's table of a shard pod's exit codes ("Shards: ..."): code -> podFailurePolicy action, and the
    action of the row for the DisruptionTarget condition."""
    readme = (REPO / "README.md").read_text()
    lines = readme[readme.index(SHARD_TABLE) :].splitlines()[2:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in itertools.takewhile(bool, lines)]
    actions = {int(code): action.strip("`") for code, _, action in rows if code.isdigit() and action != "(succeeded)"}
    (disruption,) = [action.strip("`") for _, meaning, action in rows if "`DisruptionTarget`" in meaning]
    return actions, disruption


def exit_code_actions(job: dict[str, Any]) -> dict[int, str]:
    """The runner container's exit code -> the action of the rule that matches it."""
    return {
        code: rule["action"]
        for rule in job["spec"]["podFailurePolicy"]["rules"]
        if rule.get("onExitCodes", {}).get("containerName") == "migrate"
        for code in rule["onExitCodes"]["values"]
    }


@pytest.mark.parametrize("source", list(TARGET_SOURCES))
def test_fleet_pod_failure_policy_is_the_readmes_table(source: str) -> None:
    """A fleet's podFailurePolicy ignores disruptions first (an evicted runner exits 143 too), then maps each exit
    code exactly as the README's table does; the codes are the runner's, every one a fleet pod can end with."""
    documented, disruption = readme_shard_actions()
    job = of_kind(manifests(VARIANTS[f"fleet-{source}"]), "Job")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": disruption, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert disruption == "Ignore"
    assert exit_code_actions(job) == documented
    assert all(
        rule["onExitCodes"]["operator"] == "In"
        for rule in rules[1:]
        if "onExitCodes" in rule and rule["onExitCodes"]["containerName"] == "migrate"
    )
    # success, the lock and wait timeouts of single runs (a fleet reports them as 8), and signals Kubernetes never sends
    never = {ExitCode.OK, ExitCode.LOCK_TIMEOUT, ExitCode.WAIT_TIMEOUT, ExitCode.SIGHUP, ExitCode.SIGINT}
    assert set(documented) == {int(code) for code in ExitCode if code not in never}
    assert documented[ExitCode.FLEET_FAILED] == "FailIndex"
    assert documented[ExitCode.FLEET_RETRY] == "Count"


@pytest.mark.parametrize("source", list(TARGET_SOURCES))
@pytest.mark.parametrize(("shards", "parallelism"), [(1, None), (4, None), (7, 3)])
def test_fleet_job_is_indexed_with_a_pod_per_shard(source: str, shards: int, parallelism: int | None) -> None:
    """fleet.enabled: an Indexed Job whose completions are the runner's --shards, parallelism (default: every shard),
    retries per index and no backoffLimit; the fleet command with the rollout values, and the single Job's hook,
    deadline, lock wait, extra args, metrics, securityContext and resources."""
    values = fleet_values(
        source, shards=shards, parallelism=parallelism, parallel=8, canary=2, onError="continue", backoffLimitPerIndex=2
    )
    job_values = {"activeDeadlineSeconds": 900, "deadlineMarginSeconds": 60, "lockWaitTimeoutSeconds": 300}
    values["job"] = {**job_values, "extraArgs": ["--ddl-lock-timeout=2s"]}
    values["metrics"] = {"pushgatewayUrl": "http://pushgateway:9091", "job": "tenants"}
    job = of_kind(manifests(values), "Job")
    spec, pod = job["spec"], pod_of(job)
    (container,) = pod["containers"]
    assert spec["completionMode"] == "Indexed"
    assert argument(container, "--shards") == str(spec["completions"]) == str(shards)
    assert spec["parallelism"] == (parallelism or shards)
    assert spec["backoffLimitPerIndex"] == 2
    assert "backoffLimit" not in spec
    assert "maxFailedIndexes" not in spec
    assert spec["activeDeadlineSeconds"] == 900
    assert container["args"][0] == "fleet"
    assert [argument(container, flag) for flag in ("--parallel", "--canary", "--on-error")] == ["8", "2", "continue"]
    assert argument(container, "--deadline") == "840s"
    assert argument(container, "--lock-wait-timeout") == "300s"
    assert container["args"][-1] == "--ddl-lock-timeout=2s"
    assert not [arg for arg in container["args"] if arg.startswith("--shard-index")]  # JOB_COMPLETION_INDEX says
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["RUNNER_PUSHGATEWAY_URL"], env["RUNNER_METRICS_JOB"]) == ("http://pushgateway:9091", "tenants")
    assert "JOB_COMPLETION_INDEX" not in env  # the Job controller adds it to every pod
    single = of_kind(manifests(BASE_VALUES), "Job")
    assert job["metadata"]["annotations"] == single["metadata"]["annotations"]
    (single_container,) = pod_of(single)["containers"]
    for key in ("image", "securityContext", "resources", "terminationMessagePolicy"):
        assert container[key] == single_container[key]
    for key in ("restartPolicy", "securityContext", "automountServiceAccountToken"):
        assert pod[key] == pod_of(single)[key]
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    assert_admissible(job)


@pytest.mark.parametrize("failed", [0, 3])
def test_fleet_max_failed_indexes(failed: int) -> None:
    """fleet.maxFailedIndexes (0 too) becomes the Job's maxFailedIndexes, next to backoffLimitPerIndex."""
    job = of_kind(manifests(fleet_values("targets-match", shards=3, maxFailedIndexes=failed)), "Job")
    assert job["spec"]["maxFailedIndexes"] == failed
    assert_admissible(job)


@pytest.mark.parametrize(
    ("source", "flag", "value"),
    [
        ("targets-file", "--targets", "/var/run/secrets/migration-runner-targets/tenants.txt"),
        ("targets-query", "--targets-query", TARGET_SOURCES["targets-query"]["targetsQuery"]),
        ("targets-match", "--targets-match", "tenant\\_%"),
    ],
)
def test_fleet_target_source_reaches_the_runner(source: str, flag: str, value: str) -> None:
    """The one target source reaches the runner as written: the existing Secret's key as a file read with --targets
    (and no database Secret, none needed), or --targets-query / --targets-match with the database Secret mounted as
    DATABASE_URL_FILE (their control database)."""
    pod = pod_of(of_kind(manifests(fleet_values(source)), "Job"))
    (container,) = pod["containers"]
    assert argument(container, flag) == value
    assert len([arg for arg in container["args"] if arg.startswith("--targets")]) == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if source == "targets-file":
        assert volumes == {"targets": {"name": "targets", "secret": {"secretName": "shop-tenants", "optional": False}}}
        assert mounts["targets"]["mountPath"] + "/tenants.txt" == value
        assert mounts["targets"]["readOnly"] is True
        assert "DATABASE_URL_FILE" not in env
        assert "database-url" not in mounts
    else:
        assert volumes == {
            "database-url": {"name": "database-url", "secret": {"secretName": "shop-database", "optional": False}}
        }
        assert env["DATABASE_URL_FILE"] == "/var/run/secrets/migration-runner/DATABASE_URL"
        assert "targets" not in mounts


@pytest.fixture(scope="module")
def schemaless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart without values.schema.json: what `helm install --skip-schema-validation` renders."""
    copy = tmp_path_factory.mktemp("schemaless") / "migration-runner"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink()
    return copy


FILE, QUERY, MATCH = TARGET_SOURCES["targets-file"], TARGET_SOURCES["targets-query"], TARGET_SOURCES["targets-match"]
ONE_SOURCE = "fleet.enabled needs exactly one target source"
SCHEMA_SOURCE = "missing property 'fleet.enabled needs exactly one target source"  # the schema's wording


@pytest.mark.parametrize("checked_by", ["schema", "template"])
@pytest.mark.parametrize(
    ("fleet", "by_schema", "by_template"),
    [
        ({}, SCHEMA_SOURCE, ONE_SOURCE + r".*\(given: none\)"),
        ({"targets": {"existingSecret": ""}, "targetsQuery": "", "targetsMatch": ""}, SCHEMA_SOURCE, ONE_SOURCE),
        (
            {**FILE, **QUERY},
            SCHEMA_SOURCE,
            ONE_SOURCE + r".*\(given: fleet.targets.existingSecret, fleet.targetsQuery\)",
        ),
        ({**QUERY, **MATCH}, SCHEMA_SOURCE, ONE_SOURCE + r".*\(given: fleet.targetsQuery, fleet.targetsMatch\)"),
        ({**FILE, **MATCH}, SCHEMA_SOURCE, ONE_SOURCE),
        ({**FILE, **QUERY, **MATCH}, SCHEMA_SOURCE, ONE_SOURCE),
        ({**MATCH, "shards": 0}, "/fleet/shards", r"fleet.shards must be at least 1 \(got 0\)"),
        ({**MATCH, "shards": -2}, "/fleet/shards", r"fleet.shards must be at least 1 \(got -2\)"),
        ({**MATCH, "shards": 2, "maxFailedIndexes": 3}, "fleet.maxFailedIndexes", "fleet.maxFailedIndexes"),
    ],
    ids=[
        "none",
        "all-empty",
        "file+query",
        "query+match",
        "file+match",
        "all-three",
        "0-shards",
        "-2-shards",
        "failed>shards",
    ],
)
def test_fleet_values_are_refused_by_schema_and_template(
    schemaless: Path, checked_by: str, fleet: dict[str, Any], by_schema: str, by_template: str
) -> None:
    """No target source, two or three of them, fewer than one shard, more failed indexes than shards: refused by
    values.schema.json, and by the template itself when the schema is skipped."""
    values = {**BASE_VALUES, "fleet": {"enabled": True, **fleet}}
    chart, message = (CHART, by_schema) if checked_by == "schema" else (schemaless, by_template)
    with pytest.raises(helm_python.HelmError, match=message):
        render(values, chart)


def test_fleet_off_leaves_the_single_job() -> None:
    """Fleet values without fleet.enabled change nothing: the single migrate Job, with backoffLimit."""
    job = of_kind(manifests({**BASE_VALUES, "fleet": {**MATCH, "shards": 8}}), "Job")
    assert job == of_kind(manifests(BASE_VALUES), "Job")
    assert pod_of(job)["containers"][0]["args"][0] == "migrate"
    assert "completionMode" not in job["spec"]


def is_excerpt(excerpt: Any, actual: Any) -> bool:
    """``excerpt`` is ``actual`` with keys left out (containers matched by name)."""
    if isinstance(excerpt, dict):
        return isinstance(actual, dict) and all(k in actual and is_excerpt(v, actual[k]) for k, v in excerpt.items())
    if isinstance(excerpt, list) and excerpt and all(isinstance(item, dict) and "name" in item for item in excerpt):
        by_name = {item["name"]: item for item in actual}
        return all(item["name"] in by_name and is_excerpt(item, by_name[item["name"]]) for item in excerpt)
    return bool(excerpt == actual)


def test_readme_fleet_example_renders_as_shown() -> None:
    """The README's fleet values, as written, render the Job the README shows (its excerpt, key for key)."""
    job = of_kind(manifests(readme_values(charts.FLEET)), "Job")
    excerpt = yaml.safe_load(readme_example(charts.FLEET_RENDERED))
    assert excerpt["spec"]["template"]["spec"]["containers"][0]["args"]
    assert is_excerpt(excerpt, job)
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    assert_admissible(job)
