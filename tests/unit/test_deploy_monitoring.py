"""The monitoring files of deploy/ (docs/deployment.md#monitoring): Prometheus'
scrape configuration and alert rules pass promtool's checks and the rules'
unit tests; the Grafana dashboard is a Grafana 10 dashboard on a Prometheus
datasource variable; and every metric the rules and the dashboard query is
one that /metrics of a real app exports (and the guide documents), so a
renamed metric fails here, not on the operator's pager."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from plasmaart.clock import ManualClock
from plasmaart.ledger.verification import LedgerVerification
from tests.conftest import new_database_url
from tests.support.platforms import api_client, running_platform, settings_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "plasmaart.json"
GUIDE = ROOT / "docs" / "deployment.md"
METRIC = re.compile(r"\bplasmaart_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is needed (Debian package prometheus; .ci/run installs it)"
    return subprocess.run(
        [tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_scrape_configuration_is_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_says_what_to_do_and_is_tested() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} never fires in alerts_test.yml"
        assert rule["alert"] in GUIDE.read_text(), f"{rule['alert']} is not in docs/deployment.md"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_dashboard_is_a_grafana_10_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 38
    assert board["uid"] == "plasmaart"
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    queried = [panel for panel in panels if panel["type"] != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def queried_metrics() -> dict[str, str]:
    """Every plasmaart_* name the rules and the dashboard query -> where."""
    found: dict[str, str] = {}
    for rule in rules():
        for name in METRIC.findall(rule["expr"]):
            found.setdefault(name, f"alert {rule['alert']}")
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                found.setdefault(name, f"panel {panel['title']!r}")
    return found


@pytest.fixture
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, set[str]]:
    """The families a real app's /metrics exports -> their sample names."""
    url = new_database_url(request, "sqlite", tmp_path)
    with running_platform(settings_for(url, tmp_path / "var"), ManualClock()) as platform:
        # One recorded verification, so that its result's gauges are there.
        LedgerVerification(
            platform.db, platform.job_clock, interval_s=3600, checked_by="test"
        ).run_now()
        with api_client(platform) as client:
            assert client.get("/healthz").status_code == 200
            text = client.get("/metrics").text
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
        families[family.name] = names | {family.name}
    return families


def test_every_queried_metric_is_exported(exported: dict[str, set[str]]) -> None:
    names = set().union(*exported.values())
    missing = {name: where for name, where in queried_metrics().items() if name not in names}
    assert missing == {}
    # The check can fail: a name /metrics does not export is caught.
    assert "plasmaart_credits_granted_totals" not in names


def test_every_exported_metric_is_documented(exported: dict[str, set[str]]) -> None:
    guide = GUIDE.read_text()
    undocumented = [
        name
        for name, samples in exported.items()
        # prometheus_client's creation timestamps of counters and histograms
        # come as families of their own (``…_created``): not metrics to document.
        if name.startswith("plasmaart_")
        and not name.endswith("_created")
        and not any(f"`{s}" in guide for s in samples)
    ]
    assert undocumented == []
