"""The deployment's security and operating policies, on the rendered Kubernetes objects.

NetworkPolicies that cover every wxkf pod and open what each service needs (and the ports its own
settings name), PodDisruptionBudgets that never block a drain during an outage, log levels left
to the services, `consumer setup` without the apps' secrets, and the label kube-prometheus-stack
selects monitoring objects by. deploy/README.md says why for each.
"""

from __future__ import annotations

from urllib.parse import urlparse

from .common import Report, ServiceConfig

# The label (and value) the monitoring objects carry for a default kube-prometheus-stack.
from .monitoring import PROMETHEUS_RELEASE

DNS_PORT = 53


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def rule_allows(rule: dict, port: int, protocol: str) -> bool:
    """One ingress or egress rule admits `port`/`protocol` (a rule without ports admits all)."""
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        first = entry.get("port")
        if first is None:
            return True
        if isinstance(first, int) and first <= port <= entry.get("endPort", first):
            return True
    return False


def broker_ports(brokers: str) -> set[int]:
    ports = set()
    for broker in str(brokers).split(","):
        host, _, port = broker.strip().rpartition(":")
        ports.add(int(port) if host and port.isdigit() else 9092)
    return ports


def redis_port(url: str) -> int:
    return urlparse(str(url)).port or 6379


def redis_ports(config: ServiceConfig, env: dict[str, str]) -> set[int]:
    """The ports of the Redis a service's settings name: its Redis Cluster's listed nodes
    (redis.cluster_nodes, when set) or its one server (redis.url)."""
    nodes = env.get(config.prefix + "REDIS__CLUSTER_NODES", "")
    urls = [u.strip() for u in str(nodes).split(",") if u.strip()]
    return {redis_port(u) for u in urls} or {redis_port(config.get("redis.url", env))}


def check_policies(name: str, docs: list[dict], env_by_service: dict[str, dict[str, str]],
                   configs: dict[str, ServiceConfig], report: Report, overlay: bool) -> None:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    policies = by_kind.get("NetworkPolicy", [])
    workloads = [d for kind in ("Deployment", "StatefulSet") for d in by_kind.get(kind, [])]

    # --- NetworkPolicies ---------------------------------------------------------------------
    for workload in workloads:
        wname = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        mine = [p for p in policies if selects(p["spec"].get("podSelector", {}), labels)]
        deny = [p for p in mine if {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        report.check(bool(deny), f"{name}: {wname}'s pods are under a default-deny NetworkPolicy "
                                 "(ingress and egress)")
        service = "ingest" if wname.endswith("ingest") else "consumer" if wname.endswith("consumer") else None
        if service is None:
            continue
        env = env_by_service.get(service, {})
        config = configs[service]
        ingress_rules = [r for p in mine for r in p["spec"].get("ingress") or []]
        egress_rules = [r for p in mine for r in p["spec"].get("egress") or []]

        def egress(port: int, protocol: str = "TCP") -> bool:
            return any(rule_allows(r, port, protocol) for r in egress_rules)

        needed = {f"Kafka {p}": (p, "TCP") for p in broker_ports(config.get("kafka.brokers", env))}
        for port in sorted(redis_ports(config, env)):
            needed[f"Redis {port}"] = (port, "TCP")
        needed["DNS 53/UDP"] = (DNS_PORT, "UDP")
        needed["DNS 53/TCP"] = (DNS_PORT, "TCP")
        if service == "consumer":
            needed["HTTPS 443 (the WeChat API)"] = (443, "TCP")
        missing = [what for what, (port, proto) in needed.items() if not egress(port, proto)]
        report.check(not missing, f"{name}: {service} egress allows {', '.join(needed)}"
                     + (f" (missing: {', '.join(missing)})" if missing else ""))
        # Nothing that could reach anything: a rule with neither peers nor ports opens everything.
        report.check(all(r.get("to") and r.get("ports") for r in egress_rules),
                     f"{name}: every {service} egress rule names its peers and its ports")
        port = int(config.get("server.port", env))
        report.check(bool(ingress_rules) and all(r.get("from") and r.get("ports") for r in ingress_rules)
                     and all(rule_allows(r, port, "TCP") and all(p.get("port") == port for p in r["ports"])
                             for r in ingress_rules),
                     f"{name}: {service} ingress only to its port {port}, each rule from named peers")
        if service == "consumer":
            report.check(len(ingress_rules) == 1,
                         f"{name}: consumer ingress from one peer only (Prometheus)")
        if service == "ingest":
            report.check(len(ingress_rules) >= 2,
                         f"{name}: ingest ingress from the ingress controller and from Prometheus")

    # --- PodDisruptionBudgets ----------------------------------------------------------------
    for pdb in by_kind.get("PodDisruptionBudget", []):
        report.check(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
                     f"{name}: PodDisruptionBudget {pdb['metadata']['name']} lets unready pods be evicted "
                     "(unhealthyPodEvictionPolicy: AlwaysAllow)")

    # --- Environments: log levels, and `consumer setup` without secrets ------------------------
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in by_kind.get("ConfigMap", [])}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            cname = f"{workload['metadata']['name']}/{container['name']}"
            names = {i["name"] for i in container.get("env", [])}
            from_maps = {}
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                from_maps.update(configmaps.get(ref, {}))
            report.check("RUST_LOG" not in names | set(from_maps),
                         f"{name}: {cname}: no RUST_LOG (the service's own default log filter applies)")
            if container.get("args") == ["setup"]:
                apps = sorted(n for n in names | set(from_maps) if n.startswith("CONSUMER__APPS__"))
                secret_refs = [i["name"] for i in container.get("env", []) if "valueFrom" in i]
                secret_refs += [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
                report.check(not apps and not secret_refs,
                             f"{name}: {cname} (`consumer setup`) gets no apps and no secrets in its environment"
                             + (f" (has: {', '.join(apps + secret_refs)})" if apps or secret_refs else ""))

    # --- Monitoring objects a kube-prometheus-stack selects --------------------------------------
    if overlay:
        for kind in ("ServiceMonitor", "PrometheusRule"):
            objects = by_kind.get(kind, [])
            report.check(bool(objects) and all(o["metadata"].get("labels", {}).get("release") == PROMETHEUS_RELEASE
                                               for o in objects),
                         f"{name}: {kind} labelled release: {PROMETHEUS_RELEASE} (kube-prometheus-stack's selector)")
