"""Prometheus (configuration, alert rules, their unit tests) and the Grafana dashboard."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import yaml

from .common import Report, indent, run

# The label a default kube-prometheus-stack selects ServiceMonitors and PrometheusRules by: its Helm
# release name. Both objects carry it (the check below fails when one does not).
PROMETHEUS_RELEASE = "kube-prometheus-stack"


def prometheusrule_text(alerts_text: str) -> str:
    """deploy/prometheus/prometheusrule.yaml: the groups of alerts.yml under a PrometheusRule."""
    lines = alerts_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return (
        "# Written from alerts.yml by `scripts/check-deploy.sh --write-prometheusrule`: edit\n"
        "# alerts.yml and regenerate (the check fails when the two differ).\n"
        "#\n"
        f"# `release: {PROMETHEUS_RELEASE}`: the label a kube-prometheus-stack Prometheus selects rules by\n"
        "# (its Helm release name); without it the rules are ignored. Adjust it with the\n"
        "# ServiceMonitor's (deploy/overlays/production/servicemonitor.yaml), e.g. with a patch.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: wxkf\n"
        "  labels:\n"
        "    app.kubernetes.io/name: wxkf\n"
        "    app.kubernetes.io/part-of: wxkf\n"
        f"    release: {PROMETHEUS_RELEASE}\n"
        "spec:\n" + body + "\n"
    )


def alerts_without_annotations(alerts: dict) -> dict:
    stripped = copy.deepcopy(alerts)
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return stripped


def check_prometheus(root: Path, promtool: str, report: Report) -> None:
    started = report.start("Prometheus: configuration, alert rules and their tests (promtool)")
    prom_dir = root / "deploy/prometheus"
    alerts_path = prom_dir / "alerts.yml"
    result = run([promtool, "check", "config", str(prom_dir / "prometheus.yml")])
    if result.returncode == 0:
        report.ok("promtool check config deploy/prometheus/prometheus.yml")
    else:
        report.fail("promtool check config:\n" + indent(result.stdout + result.stderr))
    result = run([promtool, "check", "rules", str(alerts_path)])
    if result.returncode == 0:
        report.ok("promtool check rules deploy/prometheus/alerts.yml: " + result.stdout.strip().splitlines()[-1])
    else:
        report.fail("promtool check rules:\n" + indent(result.stdout + result.stderr))

    alerts = yaml.safe_load(alerts_path.read_text())
    names = []
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            names.append(rule["alert"])
            ann = rule.get("annotations", {})
            report.check(bool(ann.get("summary")) and "What to do" in ann.get("description", ""),
                         f"{rule['alert']}: summary, and a description that says what to do")
            report.check(rule.get("labels", {}).get("severity") in ("warning", "critical"),
                         f"{rule['alert']}: severity warning or critical")
    report.check(len(names) == len(set(names)), "alert names are unique")
    for topic in (r"ingest_ack_duration_seconds", r"ingest_dedup_errors_total",
                  r"publish_failed", r"consumer_dead_letters_total", r"consumer_lag_records",
                  r"consumer_token_refreshes_total", r"ingest_spool_oldest_age_seconds",
                  r"ingest_spool_drained_records_total", r"ingest_spool_bytes",
                  r"ingest_spool_refused_total"):
        report.check(topic in alerts_path.read_text(), f"an alert covers {topic}")

    # The rules' unit tests. promtool compares annotations exactly, so the tests run against the
    # rules without annotations (summary texts would otherwise be repeated in every test).
    tests_path = prom_dir / "alerts_test.yml"
    if report.check(tests_path.exists(), "alert unit tests exist (alerts_test.yml)"):
        tests = yaml.safe_load(tests_path.read_text())
        tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
                  if t.get("exp_alerts")}
        untested = sorted(set(names) - tested)
        report.check(not untested, f"every alert has a test in which it fires {untested or ''}")
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / "alerts.yml"
            rules.write_text(yaml.safe_dump(alerts_without_annotations(alerts), sort_keys=False))
            tests["rule_files"] = [str(rules)]
            test_file = Path(tmp) / "alerts_test.yml"
            test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
            result = run([promtool, "test", "rules", str(test_file)])
            if result.returncode == 0:
                report.ok(f"promtool test rules: {len(tests['tests'])} scenarios pass")
            else:
                report.fail("promtool test rules:\n" + indent(result.stdout + result.stderr))

    rule_path = prom_dir / "prometheusrule.yaml"
    expected = prometheusrule_text(alerts_path.read_text())
    in_sync = rule_path.exists() and yaml.safe_load(rule_path.read_text())["spec"] == alerts
    report.check(in_sync and rule_path.read_text() == expected,
                 "prometheusrule.yaml holds exactly the groups of alerts.yml"
                 + ("" if in_sync else " (run scripts/check-deploy.sh --write-prometheusrule)"))
    report.done(started, f"{len(names)} alerts")


# ------------------------------------------------------------------------------------------------
# Grafana


def check_grafana(root: Path, report: Report) -> dict:
    started = report.start("Grafana: dashboard JSON and provisioning")
    path = root / "deploy/grafana/wxkf.json"
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        report.fail(f"deploy/grafana/wxkf.json does not parse: {error}")
        return {}
    report.ok("deploy/grafana/wxkf.json parses")
    report.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), "dashboard has a uid and a title")
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
    ids = [p["id"] for p in dashboard.get("panels", [])]
    report.check(len(ids) == len(set(ids)), f"{len(ids)} panel ids are unique")
    for panel in panels:
        title = panel.get("title", "?")
        ds = panel.get("datasource", {}).get("uid", "")
        if not (ds.startswith("${") and ds[2:-1] in variables):
            report.fail(f"panel {title!r}: datasource is not the dashboard's datasource variable")
        if not panel.get("targets") or not all(t.get("expr") for t in panel["targets"]):
            report.fail(f"panel {title!r}: has no query")
        pos = panel.get("gridPos", {})
        if not (0 <= pos.get("x", -1) and pos.get("x", 0) + pos.get("w", 99) <= 24):
            report.fail(f"panel {title!r}: gridPos outside the 24-column grid")
    report.ok(f"{len(panels)} panels: each has a query and uses the datasource variable")
    wanted = ["pushes by outcome", "ack latency", "publish latency", "duplicates", "dedup", "in flight",
              "producer queue", "records by outcome", "sends by result", "api latency", "dead letters",
              "token refreshes", "lag", "spool records", "spool oldest", "spool appended vs drained"]
    titles = " | ".join(p.get("title", "").lower() for p in panels)
    missing = [w for w in wanted if w not in titles]
    report.check(not missing, f"dashboard has panels for {', '.join(wanted)} {missing or ''}")
    for provisioning in sorted((root / "deploy/grafana/provisioning").rglob("*.yml")):
        try:
            yaml.safe_load(provisioning.read_text())
            report.ok(f"{provisioning.relative_to(root)} parses")
        except yaml.YAMLError as error:
            report.fail(f"{provisioning.relative_to(root)}: {error}")
    report.done(started, f"{len(panels)} panels")
    return dashboard
