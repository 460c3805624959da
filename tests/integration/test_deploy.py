"""deploy/: the alert rules pass promtool, and every expression names only metrics the proxy exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from fastproxy.observability.metrics import Metrics
from tests.integration.servers import Server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULES_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "fastproxy.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
_METRIC = re.compile(r"\bfastproxy_[a-z0-9_]+\b")
# Grafana's variables, as Prometheus would see them once substituted.
_GRAFANA_VARS = {"$__rate_interval": "5m", "$instance": ".*"}


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for name, value in _GRAFANA_VARS.items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def _rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The rules' own unit tests: each alert fires on the series it is meant for, and not otherwise.
    test = subprocess.run([PROMTOOL, "test", "rules", str(RULES_TESTS)], capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_expressions_name_only_exported_metrics(http: httpx.AsyncClient, proxy: Server) -> None:
    declared = Metrics(multiprocess_dir=None).exported_names()
    chat = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    await http.post(proxy.url + "/v1/chat/completions", json=chat)
    await http.post(proxy.url + "/v1/chat/completions", json={**chat, "stream": True})
    # The stream's record reaches the observers just after its last byte: give it a moment.
    for _ in range(40):
        text = (await http.get(proxy.url + "/metrics")).text
        if "fastproxy_upstream_ttfb_seconds_bucket" in text:
            break
        await asyncio.sleep(0.05)
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    # The real exposition names only declared metrics, and declared ones cover the metrics not yet sampled.
    assert "fastproxy_requests_total" in scraped and "fastproxy_upstream_ttfb_seconds_bucket" in scraped
    assert scraped <= declared, scraped - declared
    exprs = _dashboard_exprs() + _rule_exprs()
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, f"no fastproxy metric in {expr!r}"
        assert names <= declared, f"{expr!r} names {names - declared}, which fastproxy does not export"
    used = {name for expr in _dashboard_exprs() for name in _METRIC.findall(expr)}
    # What the issue asks the dashboard to show.
    for needed in (
        "fastproxy_requests_total",
        "fastproxy_request_duration_seconds_bucket",
        "fastproxy_upstream_ttfb_seconds_bucket",
        "fastproxy_tokens_total",
        "fastproxy_rate_limit_rejections_total",
        "fastproxy_usage_buffer_rows",
        "fastproxy_usage_journal_rows",
    ):
        assert needed in used, needed
