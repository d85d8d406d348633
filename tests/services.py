"""Real Prometheus and Pushgateway processes on loopback for the observability tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.pgcluster import free_port

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "migration-runner-rules.yaml"
FLEET_RULES = RULES.with_name("migration-runner-fleet-rules.yaml")


def binary(name: str) -> str:
    """The path of a Debian-packaged tool; skipped locally when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (bash .ci/dev installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def wait_until_up(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            http_get(url, timeout=1)
        except OSError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"{url} did not come up in {seconds}s")


@contextmanager
def process(args: list[str], ready_url: str) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(ready_url, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def pushgateway() -> Iterator[str]:
    """A Pushgateway on a free loopback port, in memory only; yields its base URL.

    Debian's build persists to /var/lib/prometheus by default, which would leak series
    between tests: ``--persistence.file=`` turns that off.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    with process(args, url + "/-/ready"):
        yield url


@contextmanager
def prometheus(pushgateway_url: str, workdir: Path) -> Iterator[str]:
    """Prometheus scraping the Pushgateway every second with the alert rules (fleet rules too) loaded."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES), str(FLEET_RULES)],
                "scrape_configs": [
                    {
                        "job_name": "pushgateway",
                        "honor_labels": True,
                        "static_configs": [{"targets": [pushgateway_url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    args = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with process(args, url + "/-/ready"):
        yield url


def alerts(prometheus_url: str) -> list[dict[str, Any]]:
    body = json.loads(http_get(prometheus_url + "/api/v1/alerts"))
    return list(body["data"]["alerts"])


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector of ``expr`` now: [{"metric": labels, "value": [time, "value"]}, ...]."""
    body = json.loads(http_get(prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def scrape(url: str) -> dict[str, float]:
    """Sample name with labels (as printed) -> value, from a /metrics page."""
    samples = {}
    for line in http_get(url).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
