"""deploy/: the Compose file against the Compose specification's JSON schema (check-jsonschema ships it),
the Kubernetes manifests with kubernetes-validate, the Dockerfile with hadolint, the HAProxy config with
haproxy -c; and a broken copy of each fails, so the checks are known to bite."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from fastproxy.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
HAPROXY = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60)


def compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)


def kube_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", *paths)


def kube_resources() -> list[Path]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return [KUBE / name for name in kustomization["resources"]]


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    good = compose_check(DEPLOY / "compose.yaml")
    assert good.returncode == 0, good.stdout + good.stderr
    # A depends_on condition the specification does not know must fail the check.
    broken = tmp_path / "compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    broken.write_text(text.replace("condition: service_healthy", "condition: when_it_feels_like_it", 1))
    bad = compose_check(broken)
    assert bad.returncode != 0 and "when_it_feels_like_it" in bad.stdout + bad.stderr


def test_compose_wiring() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"proxy1", "proxy2", "proxy3", "lb", "redis", "postgres", "mock", "prometheus", "grafana"} <= set(services)
    for name in ("proxy1", "proxy2", "proxy3"):
        proxy = services[name]
        assert "/readyz" in " ".join(proxy["healthcheck"]["test"])
        env = proxy["environment"]
        budget = float(env["FASTPROXY_DRAIN_SECONDS"]) + float(env["FASTPROXY_SHUTDOWN_GRACE"]) + 5
        assert float(proxy["stop_grace_period"].rstrip("s")) > budget
        # No secret in the file: they come from the git-ignored env file.
        assert not any(k in env for k in ("FASTPROXY_ADMIN_KEY", "FASTPROXY_DATABASE_URL", "POSTGRES_PASSWORD"))
    # Every file the services mount exists, and the example env file is the only env file committed.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    assert (DEPLOY / "fastproxy.env.example").exists()
    ignored = run("git", "-C", ROOT, "check-ignore", "-q", "deploy/fastproxy.env")
    assert ignored.returncode == 0, "deploy/fastproxy.env must be git-ignored"
    targets = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert sorted(targets["static_configs"][0]["targets"]) == ["proxy1:8000", "proxy2:8000", "proxy3:8000"]
    load_settings(str(DEPLOY / "fastproxy.toml"), environ={})


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (Debian: apt-get install haproxy)")
def test_haproxy_config_is_valid(tmp_path: Path) -> None:
    assert HAPROXY is not None
    # Compose's service names resolve only inside the compose network: point them at loopback here.
    config = tmp_path / "haproxy.cfg"
    config.write_text(re.sub(r"proxy(\d):8000", r"127.0.0.1:800\1", (DEPLOY / "haproxy" / "haproxy.cfg").read_text()))
    check = run(HAPROXY, "-c", "-f", config)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kubernetes_manifests_validate(tmp_path: Path) -> None:
    resources = kube_resources()
    assert all(path.exists() for path in resources)
    core = [p for p in resources if yaml.safe_load(p.read_text())["apiVersion"] != "monitoring.coreos.com/v1"]
    good = kube_check(*core)
    assert good.returncode == 0, good.stdout + good.stderr
    # A deliberately broken Deployment (replicas as a word) fails the same check.
    broken = tmp_path / "deployment.yaml"
    broken.write_text((KUBE / "deployment.yaml").read_text().replace("replicas: 3", 'replicas: "three"'))
    bad = kube_check(broken)
    assert bad.returncode != 0, bad.stdout + bad.stderr


def test_kubernetes_deployment_matches_the_drain() -> None:
    docs = {yaml.safe_load(p.read_text())["kind"]: yaml.safe_load(p.read_text()) for p in kube_resources()}
    spec = docs["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] == 3
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "cpu" in container["resources"]["requests"]
    toml = docs["ConfigMap"]["data"]["fastproxy.toml"]
    config = tmp_settings(toml)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The kubelet waits preStop, then SIGTERM: drain + grace + Granian's 5 s kill margin must fit after it.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config.drain_seconds + config.shutdown_grace + 5
    assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < spec["replicas"]
    monitor = docs["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["selector"]["matchLabels"] == docs["Service"]["spec"]["selector"]
    secrets = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e]
    assert secrets and set(secrets) == {"fastproxy-secrets"}


def tmp_settings(toml: str) -> Settings:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml)
        f.flush()
        return load_settings(f.name, environ={})


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    good = run(BIN / "hadolint", ROOT / "Dockerfile")
    assert good.returncode == 0, good.stdout + good.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN pip install fastproxy\nCMD fastproxy serve\n")
    bad = run(BIN / "hadolint", broken)
    assert bad.returncode != 0 and "DL3007" in bad.stdout
