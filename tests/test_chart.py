"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), linted, and validated
against the Kubernetes schemas (kubernetes-validate). No cluster is needed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import __version__

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "migration-runner"
KUBE_VERSION = "1.30.0"
BASE_VALUES = {"database": {"existingSecret": "shop-database"}}


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, list[dict[str, Any]]]:
    """Template path -> the manifests it rendered (empty documents dropped)."""
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name="shop", namespace="prod", is_install=True)
    return {
        path: [doc for doc in yaml.safe_load_all(text) if doc]
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
    }


def manifests(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    return [doc for docs in render(values, chart).values() for doc in docs]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


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
}


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
    """Every container of every pod the charts render (Job, and the example app's init container) meets
    the restricted Pod Security Standard's container rules."""
    for docs in (manifests(BASE_VALUES), manifests(None, example)):
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


def test_prometheus_rule_is_the_shipped_rules(tmp_path: Path) -> None:
    """The PrometheusRule carries exactly the rules file promtool tests, and promtool accepts it."""
    rule = of_kind(manifests(VARIANTS["metrics"]), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    shipped = yaml.safe_load((CHART / "files" / "migration-runner-rules.yaml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]
    promtool = shutil.which("promtool")
    if promtool:
        extracted = tmp_path / "rules.yaml"
        extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        subprocess.run([promtool, "check", "rules", str(extracted)], check=True, capture_output=True)
    job = of_kind(manifests(VARIANTS["metrics"]), "Job")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RUNNER_PUSHGATEWAY_URL"] == "http://pushgateway:9091"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**BASE_VALUES, "job": {"backoffLimit": 7}}, "/job/backoffLimit"),
        ({**BASE_VALUES, "initContainer": {"command": "mirgate"}}, "/initContainer/command"),
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
    """A copy of helm/ with the example app's dependency vendored (the repo stays untouched)."""
    root = tmp_path_factory.mktemp("charts") / "helm"
    shutil.copytree(REPO / "helm", root, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm_python.dependency_update(root / "examples" / "app", skip_refresh=True)
    return root / "examples" / "app"


def test_example_app_renders_the_init_container(example: Path) -> None:
    """The example application chart renders the runner's init container (wait) before its app container,
    with the secret volume, and includes the hook Job from the dependency."""
    docs = manifests(None, example)
    deployment, job = of_kind(docs, "Deployment"), of_kind(docs, "Job")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][0] == "wait"
    assert init["image"] == "migration-runner:0.1.0"
    assert {v["name"] for v in pod["volumes"]} == {"database-url"}
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_chart_version_matches_the_runner() -> None:
    """appVersion, the default image tag and the runner's version agree."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == values["image"]["tag"] == __version__
