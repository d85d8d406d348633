"""Helpers for the chart tests (rendering only) and the image tests (rendered pods run with podman):
Helm's own engine (helm-python-sdk), the example application chart, and the README's examples."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "migration-runner"
KUBE_VERSION = "1.30.0"  # the Kubernetes schemas the manifests are validated against
# The example application's own migrations: shipped in its ConfigMap, and in the tests' images.
EXAMPLE_MIGRATIONS = REPO / "helm" / "examples" / "app" / "migrations"


def render(
    values: dict[str, Any] | None = None, chart: Path = CHART, release: str = "shop"
) -> dict[str, list[dict[str, Any]]]:
    """Template path -> the manifests it rendered (empty documents dropped), as `helm install` would."""
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name=release, namespace="prod", is_install=True)
    return {
        path: [doc for doc in yaml.safe_load_all(text) if doc]
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
    }


def manifests(values: dict[str, Any] | None = None, chart: Path = CHART, release: str = "shop") -> list[dict[str, Any]]:
    return [doc for docs in render(values, chart, release).values() for doc in docs]


def example_app(directory: Path) -> Path:
    """A copy of helm/ under ``directory`` with the example app's dependency vendored (the repo
    stays untouched); returns the example app's chart."""
    root = directory / "helm"
    shutil.copytree(REPO / "helm", root, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm_python.dependency_update(root / "examples" / "app", skip_refresh=True)
    return root / "examples" / "app"


def readme_example(first_line: str) -> str:
    """The README's fenced code block that starts with ``first_line`` (the copy-paste examples are
    tested as written)."""
    readme = (REPO / "README.md").read_text()
    (block,) = [
        body
        for body in re.findall(r"^```[A-Za-z]*\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
        if body.startswith(first_line)
    ]
    return str(block)


def readme_values(first_line: str) -> dict[str, Any]:
    """The migration-runner values of one of the README's values examples."""
    return dict(yaml.safe_load(readme_example(first_line))["migration-runner"])


# First lines of the README's examples of shipping your own migrations (section "Your own migrations").
OWN_IMAGE = "# Your migrations instead of the bundled ones: an image FROM the runner's."
FROM_IMAGE = "# Your chart's values: the migrations come from your application's image."
CONFIG_MAP = "# Your chart's values: the migrations come from a ConfigMap your chart builds."
CONFIG_MAP_TEMPLATE = "{{- /* Your chart's templates/migrations-configmap.yaml"
# First lines of the README's fleet example (section "Shards: one fleet over a Kubernetes Indexed Job").
FLEET = "# Your chart's values: a fleet of tenant databases over an Indexed Job."
FLEET_RENDERED = "# Rendered hook Job (excerpt)."
