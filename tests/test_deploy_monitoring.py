"""The shipped Grafana dashboard and Prometheus rules against a real daemon (issue 12):
``riskmon run`` follows the story served by ``riskmon replay-server`` on loopback, and
every metric the dashboard and the rules query is in its ``/metrics``; the provisioning
files parse, and the per-account gauges agree with the final state."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.live_harness import ROOT, metric_samples
from tests.test_daemon_live import run_daemon_against_server

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "riskmon.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
RULES = ROOT / "deploy" / "prometheus" / "riskmon-rules.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\b(riskmon_[a-z_]+)\b")


@pytest.fixture(scope="module")
def story_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The daemon followed the whole story; its last /metrics and state."""
    return run_daemon_against_server(tmp_path_factory.mktemp("story"))


def exported(metrics: str) -> set[str]:
    """The metric families a /metrics text declares (its ``# TYPE`` lines)."""
    return {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")}


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard: panel targets and template queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            # A template query is a string with a call (label_values(...)); "query" also
            # names the datasource variable's plugin type ("prometheus").
            promql = key == "expr" or (key in ("query", "definition") and "(" in str(value))
            if promql and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def test_every_metric_the_dashboard_queries_is_exported(story_run: dict[str, Any]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(dashboard_queries(dashboard))
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert len(queries) >= 20 and len(used) >= 18
    assert used <= exported(story_run["metrics"]), used - exported(story_run["metrics"])
    # Every query names a riskmon metric; the datasource is a variable, never a fixed uid.
    assert all(METRIC_NAME.search(query) for query in queries)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    sources = {json.dumps(panel["datasource"], sort_keys=True) for panel in dashboard["panels"]
               if "datasource" in panel}
    assert sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"},
                                  sort_keys=True)}
    # Panels for what issue 12 lists (notifier panels come with the notifiers).
    for wanted in ("riskmon_margin_ratio", "riskmon_account_level",
                   "riskmon_account_equity_usd", "riskmon_account_maint_margin_usd",
                   "riskmon_feed_lag_seconds", "riskmon_feed_connected",
                   "riskmon_feed_reconnects_total", "riskmon_alerts_total",
                   "riskmon_quarantined_total", "riskmon_inbox_depth",
                   "riskmon_sink_queue_depth"):
        assert wanted in used


def test_the_alert_rules_parse_and_use_exported_metrics(story_run: dict[str, Any]) -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"RiskmonDown", "RiskmonFeedDisconnected", "RiskmonFeedStale",
            "RiskmonAccountDeleverage", "RiskmonRiskUnknown",
            "RiskmonExchangeDivergence"} <= names
    assert len(names) == len(rules)
    metrics = exported(story_run["metrics"])
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
        used = set(METRIC_NAME.findall(rule["expr"]))
        # RiskmonDown reads Prometheus's own ``up`` of the scrape job.
        assert used <= metrics and (used or 'up{job="riskmon"}' in rule["expr"]), rule
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    assert prometheus["rule_files"] == [RULES.name]
    assert [job["job_name"] for job in prometheus["scrape_configs"]] == ["riskmon"]


def test_the_grafana_provisioning_parses() -> None:
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "riskmon.yaml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "riskmon.yaml").read_text())[
        "providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_the_account_gauges_agree_with_the_final_state(story_run: dict[str, Any]) -> None:
    account = story_run["state"]["accounts"]["main"]
    found = metric_samples(story_run["metrics"])
    main = '{account="main"}'
    ranks = {"normal": 0, "warning": 1, "withdrawal_lock": 2, "deleverage": 3, "liquidation": 4}
    assert found["riskmon_account_level", main] == ranks[account["level"]]
    assert found["riskmon_account_equity_usd", main] == pytest.approx(account["equity_usd"])
    assert found["riskmon_account_maint_margin_usd", main] == pytest.approx(
        account["maint_margin_usd"])
    assert found["riskmon_margin_ratio", main] == pytest.approx(account["margin_ratio"])
    assert found["riskmon_account_risk_known", main] == 1
    for feed in ("public", "private:main"):
        assert found["riskmon_feed_reconnects_total", f'{{feed="{feed}"}}'] == 0
        assert found["riskmon_feed_errors_total", f'{{feed="{feed}"}}'] == 0
    [build] = [labels for name, labels in found if name == "riskmon_build_info"]
    assert re.fullmatch(r'\{version="[^"]+",python="3\.\d+\.\d+",compiled="(true|false)"\}',
                        build)
    assert found["riskmon_build_info", build] == 1
    assert story_run["health"][0] == 200
