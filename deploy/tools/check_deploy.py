"""Offline checks of the packaging and deployment files.

Run through scripts/check-deploy.sh, which installs the tools this needs (PyYAML, jsonschema,
kubernetes-validate, hadolint, kustomize, promtool) and passes their paths. Each section prints
what it checked; every problem is collected and printed again at the end, and the exit status is 1
when there was any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checks.common import Report, ServiceConfig
from checks.containers import check_compose, check_dockerfile
from checks.kubernetes import check_kubernetes, check_rules_files
from checks.metrics import KnownMetrics, check_metrics
from checks.monitoring import check_grafana, check_prometheus, prometheusrule_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--kustomize", required=True)
    parser.add_argument("--promtool", required=True)
    parser.add_argument("--hadolint", required=True)
    parser.add_argument("--k8s-versions", default="1.30,1.37")
    parser.add_argument("--metrics", type=Path, nargs="*", default=None,
                        help="/metrics texts or name lists; default: the names in the Rust sources")
    parser.add_argument("--write-prometheusrule", action="store_true")
    args = parser.parse_args()
    root = args.root.resolve()

    if args.write_prometheusrule:
        target = root / "deploy/prometheus/prometheusrule.yaml"
        target.write_text(prometheusrule_text((root / "deploy/prometheus/alerts.yml").read_text()))
        print(f"wrote {target.relative_to(root)}")
        return 0

    report = Report()
    configs = {s: ServiceConfig(root, s) for s in ("ingest", "consumer")}
    stages = check_dockerfile(root, args.hadolint, report,
                              spool_dir=str(configs["ingest"].get("spool.dir")).rstrip("/"))
    check_compose(root, stages, configs, report)
    rendered = check_kubernetes(root, args.kustomize, args.k8s_versions.split(","), configs, report)
    check_rules_files(root, rendered, report)
    check_prometheus(root, args.promtool, report)
    dashboard = check_grafana(root, report)
    if args.metrics:
        missing = [p for p in args.metrics if not p.exists()]
        if missing:
            report.fail(f"--metrics: no such file: {', '.join(map(str, missing))}")
            known = None
        else:
            known = KnownMetrics.from_files(args.metrics)
    else:
        known = KnownMetrics.from_sources(root)
    if known is not None:
        check_metrics(root, dashboard, known, from_sources=not args.metrics, report=report)

    if report.problems:
        print(f"\n{len(report.problems)} problem(s):")
        for problem in report.problems:
            print("  - " + problem.splitlines()[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
