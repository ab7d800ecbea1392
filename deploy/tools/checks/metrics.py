"""Every metric, label and label value the dashboard and the alerts use must exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import yaml

from .common import Report



PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                   "unless", "offset", "inf", "nan", "start", "end", "atan2"}
# Aggregation operators and functions of PromQL (Prometheus 3 documentation).
PROMQL_FUNCTIONS = set("""
sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
day_of_year days_in_month delta deriv double_exponential_smoothing exp floor histogram_avg
histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
histogram_sum holt_winters hour idelta increase info irate label_join label_replace ln log2 log10
minute month predict_linear rate resets round scalar sgn sort sort_desc sort_by_label
sort_by_label_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
last_over_time present_over_time mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh
tan tanh deg pi rad
""".split())
# Series Prometheus itself makes, not the services.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}


def promql_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The metric selectors of a PromQL expression: (name, {label: matcher value})."""
    expr = re.sub(r"\$\{[^}]*\}|\$__\w+|\$\w+", "1m", expr)  # Grafana variables
    strings: list[str] = []

    def keep_string(m: re.Match) -> str:
        strings.append(m.group(0)[1:-1])
        return f"\x00{len(strings) - 1}\x00"

    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', keep_string, expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    selectors = []
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if not matchers and (call or name in PROMQL_FUNCTIONS or name in PROMQL_KEYWORDS):
            continue  # a function, an aggregation or a keyword
        labels = {}
        for lm in re.finditer(r"(\w+)\s*(=~|!~|!=|=)\s*\x00(\d+)\x00", matchers or ""):
            labels[lm.group(1)] = (lm.group(2), strings[int(lm.group(3))])
        selectors.append((name, labels))
    return selectors


class KnownMetrics:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.labels: dict[str, set[str]] = {}
        self.source = ""

    def add(self, name: str, labels: Iterable[str] = (), histogram: bool = False) -> None:
        names = [name] + ([f"{name}_bucket", f"{name}_sum", f"{name}_count"] if histogram else [])
        for n in names:
            self.names.add(n)
            extra = {"le"} if n.endswith("_bucket") and histogram else set()
            self.labels.setdefault(n, set()).update(set(labels) | extra)

    @classmethod
    def from_sources(cls, root: Path) -> "KnownMetrics":
        """Names registered by the Rust sources: every constructor of a prometheus metric."""
        known = cls()
        known.source = "the metric constructors in */src/**/*.rs"
        constructor = re.compile(
            r"\b(IntCounterVec|IntCounter|CounterVec|Counter|IntGaugeVec|IntGauge|GaugeVec|Gauge|"
            r"HistogramVec|Histogram)::(?:new|with_opts)\s*\(\s*(?:(?:Histogram)?Opts::new\s*\(\s*)?"
            r"\"([a-z_:][a-z0-9_:]*)\"(.*?)(?=\b(?:IntCounterVec|IntCounter|CounterVec|Counter|IntGaugeVec|"
            r"IntGauge|GaugeVec|Gauge|HistogramVec|Histogram)::(?:new|with_opts)|\Z)", re.S)
        process = False
        for path in sorted(root.glob("*/src/**/*.rs")):
            # Unit tests (at the end of a file, by convention) register throwaway metrics.
            text = path.read_text().split("#[cfg(test)]")[0]
            for m in constructor.finditer(text):
                kind, name, rest = m.group(1), m.group(2), m.group(3)
                labels = re.search(r"&\[([^\]]*)\]", rest) if kind.endswith("Vec") else None
                label_names = re.findall(r'"(\w+)"', labels.group(1)) if labels else []
                known.add(name, label_names, histogram=kind.startswith("Histogram"))
            process = process or "ProcessCollector::for_self" in text
        if process:
            for name in ("process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                         "process_virtual_memory_bytes", "process_resident_memory_bytes",
                         "process_start_time_seconds", "process_threads"):
                known.add(name)
        return known

    @classmethod
    def from_files(cls, paths: list[Path]) -> "KnownMetrics":
        """Names in /metrics texts (Prometheus exposition format) or plain lists, one per line."""
        known = cls()
        known.source = ", ".join(str(p) for p in paths)
        for path in paths:
            for line in path.read_text().splitlines():
                line = line.strip()
                m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
                if m:
                    known.add(m.group(1), histogram=m.group(2) in ("histogram", "summary"))
                    continue
                if not line or line.startswith("#"):
                    continue
                m = re.match(r"([A-Za-z_:][\w:]*)(\{([^}]*)\})?", line)
                if m:
                    labels = re.findall(r"(\w+)=", m.group(3) or "")
                    known.add(m.group(1), labels)
        return known


def check_metrics(root: Path, dashboard: dict, known: KnownMetrics, from_sources: bool,
                  report: Report) -> None:
    started = report.start(f"metric names used by the dashboard and the alerts, against {known.source}")
    alerts = yaml.safe_load((root / "deploy/prometheus/alerts.yml").read_text())
    uses: list[tuple[str, str]] = []
    for group in alerts["groups"]:
        for rule in group["rules"]:
            uses.append((f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            uses.append((f"panel {panel.get('title')!r}", target.get("expr", "")))
    sources_text = ""
    if from_sources:
        sources_text = "\n".join(p.read_text() for p in root.glob("*/src/**/*.rs"))
    used: set[str] = set()
    reported: set[tuple[str, str]] = set()
    missing: set[str] = set()
    for where, expr in uses:
        for name, labels in promql_selectors(expr):
            if name in PROMETHEUS_SERIES:
                continue
            used.add(name)
            if name not in known.names:
                missing.add(name)
                if (where, name) not in reported:
                    reported.add((where, name))
                    report.fail(f"{where}: {name} is not a known metric")
                continue
            for label, (op, value) in labels.items():
                if label in ("job", "instance"):
                    continue
                if known.labels.get(name) and label not in known.labels[name]:
                    report.fail(f"{where}: {name} has no label {label!r} (has {sorted(known.labels[name])})")
                if from_sources and op in ("=", "=~", "!~"):
                    for alternative in value.split("|"):
                        if re.fullmatch(r"\w+", alternative) and f'"{alternative}"' not in sources_text:
                            report.fail(f"{where}: {name}{{{label}{op}...}}: value {alternative!r} "
                                        "appears nowhere in the sources")
    if missing and not from_sources:
        print("    note: the prometheus crate leaves a labelled metric out of /metrics until its first\n"
              "          observation; scrape after traffic that reached every path, or have the services\n"
              f"          set their label values to zero at start. Missing: {', '.join(sorted(missing))}")
    report.check(not missing, f"{len(used)} distinct metric names in {len(uses)} queries are all known")
    shown = used | {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    unused = sorted(n for n in known.names - shown
                    if not n.endswith(("_bucket", "_sum", "_count")) and not n.startswith("process_"))
    if unused:
        print(f"    note: metrics shown nowhere: {', '.join(unused)}")
    report.done(started, f"{len(used)} names checked")
