"""Kubernetes: kustomize output against the Kubernetes and CRD schemas, and the project's rules."""

from __future__ import annotations

import copy
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from .common import Report, ServiceConfig, consumer_subcommands, indent, parse_duration, run
from .policies import check_policies



def strict_crd_schema(schema: Any) -> Any:
    """The CRD's openAPIV3Schema, made strict: unknown fields of typed objects are refused."""
    if isinstance(schema, dict):
        schema = {k: strict_crd_schema(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        if schema.get("nullable") and isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        return schema
    if isinstance(schema, list):
        return [strict_crd_schema(v) for v in schema]
    return schema


def load_crd_schemas(root: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema of the spec, from the vendored CRDs."""
    schemas = {}
    for path in sorted((root / "deploy/schemas/crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = strict_crd_schema(schema)
    return schemas


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")

# Trigger metadata keys of KEDA's Kafka scaler (pkg/scalers/kafka_scaler.go, v2.20.2).
KEDA_KAFKA_KEYS = {
    "activationLagThreshold", "allowIdleConsumers", "awsRegion", "bootstrapServers", "ca", "cert",
    "consumerGroup", "ensureEvenDistributionOfPartitions", "excludePersistentLag",
    "kerberosConfig", "kerberosDisableFAST", "kerberosServiceName", "key", "keyPassword", "keytab",
    "lagThreshold", "limitToPartitionsWithLag", "oauthExtensions", "oauthTokenEndpointUri",
    "offsetResetPolicy", "partitionLimitation", "password", "realm", "sasl", "saslTokenProvider",
    "scaleToZeroOnInvalidOffset", "scopes", "tls", "topic", "unsafeSsl", "username", "version",
}


def validate_object(doc: dict, where: str, versions: list[str], crds: dict, report: Report) -> bool:
    """Kubernetes schema validation of one object; True when valid."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    name = doc.get("metadata", {}).get("name", "")
    label = f"{where}: {kind}/{name}"
    meta = doc.get("metadata", {})
    if not DNS_SUBDOMAIN.fullmatch(name or ""):
        report.fail(f"{label}: metadata.name is not a DNS subdomain name")
        return False
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value) or len(value) > 63:
            report.fail(f"{label}: label {key}={value!r} is not a valid label value")
            return False
    if (api, kind) in crds:
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        schema = copy.deepcopy(crds[(api, kind)])
        schema.get("properties", {}).pop("metadata", None)
        schema["properties"].pop("apiVersion", None)
        schema["properties"].pop("kind", None)
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path)
            report.fail(f"{label}: {path}: {error.message} (CRD schema)")
        return not errors
    valid = True
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            report.fail(f"{label}: {path}: {error.message} (Kubernetes {error.version}, strict)")
            valid = False
        except kubernetes_validate.SchemaNotFoundError as error:
            report.fail(f"{label}: no schema: {error.message}")
            return False
    return valid


def kustomize_build(kustomize: str, directory: Path, report: Report) -> list[dict] | None:
    result = run([kustomize, "build", str(directory)])
    if result.returncode != 0:
        report.fail(f"kustomize build {directory.name} failed:\n{indent(result.stderr)}")
        return None
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def env_of_container(container: dict, configmaps: dict[str, dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref in configmaps:
            env.update(configmaps[ref].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from " + next(iter(item.get("valueFrom", {"?": 0}))) + ">")
    return env


SECRET_LIKE = re.compile(r"(TOKEN|SECRET|AES_KEY|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def check_rendered(root: Path, name: str, docs: list[dict], configs: dict[str, ServiceConfig],
                   report: Report, overlay: bool) -> None:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    # The workloads, by name: ingest is a StatefulSet (its spool needs a volume per pod that a
    # replacement pod gets back), the consumer a Deployment.
    workloads = {d["metadata"]["name"]: d for kind in ("Deployment", "StatefulSet")
                 for d in by_kind.get(kind, [])}
    services_by_name = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    report.check(not by_kind.get("Secret"), f"{name}: renders no Secret (secrets are created by the operator)")
    for cm in configmaps.values():
        for key, value in (cm.get("data") or {}).items():
            if SECRET_LIKE.search(key) and not key.endswith((".toml", ".json", ".yml", ".yaml")):
                report.fail(f"{name}: ConfigMap {cm['metadata']['name']} holds {key}, which looks like a secret")

    services = {"ingest": ("wxkf-ingest", "StatefulSet"), "consumer": ("wxkf-consumer", "Deployment")}
    for service, (workload_name, kind) in services.items():
        workload = next((d for n, d in workloads.items() if n.endswith(workload_name)), None)
        if not report.check(workload is not None and workload["kind"] == kind,
                            f"{name}: {kind} {workload_name} present"):
            continue
        pod = workload["spec"]["template"]["spec"]
        config = configs[service]
        pod_sc = pod.get("securityContext", {})
        report.check(pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) > 0,
                     f"{name}: {service} pods run as non-root")
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        for container in containers:
            cname = f"{service}/{container['name']}"
            sc = container.get("securityContext", {})
            report.check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                         and "ALL" in sc.get("capabilities", {}).get("drop", []),
                         f"{name}: {cname} read-only root fs, no privilege escalation, capabilities dropped")
            res = container.get("resources", {})
            report.check(bool(res.get("requests")) and bool(res.get("limits")),
                         f"{name}: {cname} has resource requests and limits")
            env = env_of_container(container, configmaps)
            bad = [p for p in (config.check_variable(k) for k in env) if p]
            for p in bad:
                report.fail(f"{name}: {cname}: {p}")
            if not bad:
                report.ok(f"{name}: {cname}: all {len(env)} environment variables are settings of {service}")
            for item in container.get("env", []):
                if SECRET_LIKE.search(item["name"]):
                    report.check("secretKeyRef" in item.get("valueFrom", {}),
                                 f"{name}: {cname}: {item['name']} comes from a Secret (secretKeyRef)")
            for key in env:
                if SECRET_LIKE.search(key) and key not in {i["name"] for i in container.get("env", [])}:
                    report.fail(f"{name}: {cname}: {key} comes from a ConfigMap; secrets belong in a Secret")
        main = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
        env = env_of_container(main, configmaps)
        port = int(config.get("server.port", env))
        report.check(port in ports.values(), f"{name}: {service} container port matches server.port ({port})")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = main.get(probe, {}).get("httpGet", {})
            report.check(http.get("path") == path and (http.get("port") in ports or http.get("port") == port),
                         f"{name}: {service} {probe} on {path}")
        drain = parse_duration(str(config.get("server.shutdown_timeout", env)))
        pre_stop = 0.0
        command = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if command and command[0].endswith("sleep"):
            pre_stop = float(command[1])
        grace = pod.get("terminationGracePeriodSeconds", 30)
        spool_drain = 0.0
        if service == "ingest" and spool_enabled(config, env):
            spool_drain = parse_duration(str(config.get("spool.shutdown_drain", env)))
        report.check(grace > drain + pre_stop + spool_drain,
                     f"{name}: {service} terminationGracePeriodSeconds {grace} > preStop {pre_stop:g}s "
                     f"+ server.shutdown_timeout {drain:g}s"
                     + (f" + spool.shutdown_drain {spool_drain:g}s" if spool_drain else ""))
        if service == "ingest":
            check_spool_volume(name, workload, main, env, config, services_by_name, report)
        if service == "consumer":
            mounts = {m["name"]: m for m in main.get("volumeMounts", [])}
            rules_path = env.get("CONSUMER__RULES__PATH", "")
            rules_mount = next((m for m in mounts.values() if rules_path.startswith(m["mountPath"] + "/")), None)
            report.check(rules_mount is not None and "subPath" not in rules_mount,
                         f"{name}: rules file {rules_path} is on a directory mount (hot reload sees updates)")
            report.check(any((c.get("args") or [None])[0] == "setup" for c in pod.get("initContainers", [])),
                         f"{name}: consumer runs `consumer setup` before joining the group")
            subcommands = consumer_subcommands(root)
            for container in containers:
                sub = (container.get("args") or ["run"])[0]
                report.check(sub in subcommands,
                             f"{name}: consumer/{container['name']}: `consumer {sub}` is a subcommand")

    env_by_service = {}
    for service, (workload_name, _) in services.items():
        workload = next((d for n, d in workloads.items() if n.endswith(workload_name)), None)
        if workload is not None:
            env_by_service[service] = env_of_container(workload["spec"]["template"]["spec"]["containers"][0],
                                                       configmaps)
    check_policies(name, docs, env_by_service, configs, report, overlay)

    selectors = {n: d["spec"]["selector"]["matchLabels"] for n, d in workloads.items()}

    def selects_a_workload(selector: dict) -> bool:
        return any(all(sel.get(k) == v for k, v in selector.items()) for sel in selectors.values())

    def scales_a_workload(ref: dict) -> bool:
        """The scale target exists with that kind, and its manifest leaves `replicas` alone."""
        target = workloads.get(ref.get("name"))
        return (target is not None and ref.get("kind") == target["kind"]
                and ref.get("apiVersion", "apps/v1") == target["apiVersion"]
                and "replicas" not in target["spec"])

    for svc in by_kind.get("Service", []):
        report.check(selects_a_workload(svc["spec"]["selector"]),
                     f"{name}: Service {svc['metadata']['name']} selects a workload's pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        report.check(selects_a_workload(pdb["spec"]["selector"]["matchLabels"]),
                     f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects a workload's pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        report.check(scales_a_workload(ref),
                     f"{name}: HPA {hpa['metadata']['name']} scales {ref.get('kind')} {ref.get('name')}, "
                     "whose manifest sets no replicas")
    report.check(any(h["spec"]["scaleTargetRef"]["name"].endswith("wxkf-ingest")
                     and h["spec"]["scaleTargetRef"].get("kind") == "StatefulSet"
                     for h in by_kind.get("HorizontalPodAutoscaler", [])),
                 f"{name}: ingest has an HPA, on its StatefulSet")
    for ingress in by_kind.get("Ingress", []):
        spec = ingress["spec"]
        hosts = {r.get("host") for r in spec.get("rules", [])}
        tls_hosts = {h for t in spec.get("tls", []) for h in t.get("hosts", [])}
        report.check(bool(hosts) and hosts <= tls_hosts, f"{name}: Ingress serves {sorted(hosts)} over TLS")
        paths = [p for r in spec.get("rules", []) for p in r.get("http", {}).get("paths", [])]
        report.check(all(p["path"].startswith("/wechat") for p in paths),
                     f"{name}: Ingress exposes only /wechat (not /metrics, /healthz, /readyz)")
        if overlay:
            annotations = ingress["metadata"].get("annotations", {})
            report.check(any(k.startswith("cert-manager.io/") for k in annotations),
                         f"{name}: Ingress certificate from cert-manager")
    if overlay:
        scaled = by_kind.get("ScaledObject", [])
        if report.check(len(scaled) == 1, f"{name}: consumer autoscaling on Kafka lag (KEDA ScaledObject)"):
            so = scaled[0]["spec"]
            consumer_env = configmaps.get(next((n for n in configmaps if "consumer-env" in n), ""), {}).get("data", {})
            partitions = int(configs["consumer"].get("kafka.topics.inbound_partitions", consumer_env))
            report.check(so.get("maxReplicaCount") == partitions,
                         f"{name}: ScaledObject maxReplicaCount {so.get('maxReplicaCount')} = inbound partitions {partitions}")
            ref = so["scaleTargetRef"]
            report.check(scales_a_workload({"kind": "Deployment", **ref}),
                         f"{name}: ScaledObject scales {ref.get('kind', 'Deployment')} {ref.get('name')}, "
                         "whose manifest sets no replicas")
            for trigger in so.get("triggers", []):
                if trigger.get("type") == "kafka":
                    meta = trigger.get("metadata", {})
                    unknown = set(meta) - KEDA_KAFKA_KEYS
                    report.check(not unknown, f"{name}: kafka trigger uses only known keys {sorted(unknown) or ''}")
                    report.check(meta.get("topic") == configs["consumer"].get("kafka.inbound_topic", consumer_env)
                                 and meta.get("consumerGroup") == configs["consumer"].get("kafka.group_id", consumer_env),
                                 f"{name}: kafka trigger watches the consumer's group on the inbound topic")
                    report.check(meta.get("bootstrapServers") == consumer_env.get("CONSUMER__KAFKA__BROKERS"),
                                 f"{name}: kafka trigger uses the consumer's brokers")


def spool_enabled(config: ServiceConfig, env: dict[str, str]) -> bool:
    return str(config.get("spool.enabled", env)).lower() == "true"


QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(text))
    return int(m.group(1)) * QUANTITY_UNITS[m.group(2)] if m else None


def check_spool_volume(name: str, workload: dict, main: dict, env: dict[str, str],
                       config: ServiceConfig, services: dict[str, dict], report: Report) -> None:
    """ingest's spool (docs/spool.md): a claim of its own per pod, kept when pods go away."""
    spec = workload["spec"]
    if not spool_enabled(config, env):
        print(f"    note: {name}: spool.enabled is false; the spool volume is not checked")
        return
    report.check(spec.get("podManagementPolicy") == "Parallel",
                 f"{name}: ingest StatefulSet starts and stops its pods in parallel (podManagementPolicy)")
    governing = services.get(spec.get("serviceName", ""))
    report.check(governing is not None and governing["spec"].get("clusterIP") == "None",
                 f"{name}: ingest StatefulSet's serviceName {spec.get('serviceName')} is a headless Service")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    report.check(retention.get("whenScaled", "Retain") == "Retain"
                 and retention.get("whenDeleted", "Retain") == "Retain",
                 f"{name}: spool claims are retained when ingest scales in or is deleted "
                 "(they may hold undrained records)")
    spool_dir = str(config.get("spool.dir", env)).rstrip("/")
    mount = next((m for m in main.get("volumeMounts", []) if m["mountPath"].rstrip("/") == spool_dir), None)
    templates = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    if not report.check(mount is not None and mount["name"] in templates and "subPath" not in mount
                        and not mount.get("readOnly"),
                        f"{name}: spool.dir {spool_dir} is a volume of its own per pod (volumeClaimTemplates)"):
        return
    claim = templates[mount["name"]]["spec"]
    report.check(claim.get("accessModes") == ["ReadWriteOnce"] or claim.get("accessModes") == ["ReadWriteOncePod"],
                 f"{name}: spool claim is ReadWriteOnce (one pod writes it)")
    size = quantity_bytes(claim.get("resources", {}).get("requests", {}).get("storage", ""))
    needed = int(config.get("spool.max_bytes", env)) + int(config.get("spool.segment_bytes", env))
    report.check(size is not None and size > needed,
                 f"{name}: spool claim ({claim.get('resources', {}).get('requests', {}).get('storage')}) "
                 f"holds spool.max_bytes + spool.segment_bytes ({needed / 2**30:.2f} GiB)")
    report.check(workload["spec"]["template"]["spec"].get("securityContext", {}).get("fsGroup") is not None,
                 f"{name}: ingest pods have an fsGroup (the spool volume is writable for their user)")


def check_kubernetes(root: Path, kustomize: str, versions: list[str], configs: dict[str, ServiceConfig],
                     report: Report) -> dict[str, list[dict]]:
    started = report.start(f"Kubernetes manifests (kustomize build; schemas of Kubernetes {', '.join(versions)})")
    crds = load_crd_schemas(root)
    rendered: dict[str, list[dict]] = {}
    count = 0
    for directory in ("deploy/base", "deploy/overlays/production", "deploy/prometheus", "deploy/grafana"):
        docs = kustomize_build(kustomize, root / directory, report)
        if docs is None:
            continue
        rendered[directory] = docs
        valid = [validate_object(d, directory, versions, crds, report) for d in docs]
        count += len(docs)
        kinds = sorted({d["kind"] for d in docs})
        if all(valid):
            report.ok(f"{directory}: {len(docs)} objects valid ({', '.join(kinds)})")
    for directory, overlay in (("deploy/base", False), ("deploy/overlays/production", True)):
        if directory in rendered:
            check_rendered(root, directory, rendered[directory], configs, report, overlay)
    for path in sorted((root / "deploy/examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        valid = [validate_object(d, str(path.relative_to(root)), versions, crds, report) for d in docs]
        count += len(docs)
        if all(valid):
            report.ok(f"{path.relative_to(root)}: {len(docs)} objects valid")
        for doc in docs:
            if doc.get("kind") == "Secret":
                values = list((doc.get("stringData") or {}).values()) + list((doc.get("data") or {}).values())
                report.check(all("PLACEHOLDER" in v for v in values),
                             f"{path.relative_to(root)}: every Secret value is a marked PLACEHOLDER")
    referenced = set()
    for kustomization in (root / "deploy").rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text())
        for resource in k.get("resources", []):
            referenced.add((kustomization.parent / resource).resolve())
    report.check(not any(p.resolve() in referenced or p.parent.resolve() in referenced
                         for p in (root / "deploy/examples").glob("*")),
                 "deploy/examples is applied by no kustomization")
    report.done(started, f"{count} objects")
    return rendered


def check_rules_files(root: Path, rendered: dict[str, list[dict]], report: Report) -> None:
    """The rules files of the manifests, through the consumer's own parser (`consumer explain`)."""
    started = report.start("rules files of the manifests (consumer explain)")
    binaries = [p for p in (root / "target/release/consumer", root / "target/debug/consumer") if p.is_file()]
    if not binaries:
        print("    note: no built consumer binary (target/*/consumer): rules files checked as TOML only")
    binary = max(binaries, key=lambda p: p.stat().st_mtime) if binaries else None
    checked = 0
    for directory, docs in rendered.items():
        configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
        # The consumer's apps (its ConfigMaps' CONSUMER__APPS__…), each with a stand-in secret.
        app_vars = {n: v for d in configmaps if "consumer" in d["metadata"]["name"]
                    for n, v in (d.get("data") or {}).items() if n.startswith("CONSUMER__APPS__")}
        for cm in configmaps:
            for key, text in (cm.get("data") or {}).items():
                if not key.endswith(".toml"):
                    continue
                label = f"{directory}: ConfigMap {cm['metadata']['name']} {key}"
                try:
                    document = tomllib.loads(text)
                except tomllib.TOMLDecodeError as error:
                    report.fail(f"{label}: not TOML: {error}")
                    continue
                if key != "rules.toml":
                    # An app file (the wxkf-apps ConfigMap, config/app-example.toml): the services
                    # check it when they load it; here, that it names its appid.
                    if "appid" in document:
                        report.ok(f"{label}: an app file with its appid")
                    else:
                        report.fail(f"{label}: neither the rules file nor an app file (no appid)")
                    continue
                checked += 1
                if binary is None:
                    report.ok(f"{label}: TOML")
                    continue
                env = {"PATH": "/usr/bin:/bin", "APP_ENVIRONMENT": "deploy-check",
                       "CONSUMER_CONFIG_DIR": str(root / "config")}
                for name, value in app_vars.items():
                    env[name] = value
                    app = name.split("__")[2]
                    env[f"CONSUMER__APPS__{app}__SECRET"] = "placeholder-for-the-check"
                with tempfile.TemporaryDirectory() as tmp:
                    rules = Path(tmp) / key
                    rules.write_text(text)
                    records = Path(tmp) / "records.jsonl"
                    records.write_text("")
                    result = run([str(binary), "explain", "--file", str(records), "--rules", str(rules)],
                                 env=env, timeout=60)
                if result.returncode == 0:
                    report.ok(f"{label}: accepted by {binary.relative_to(root)} explain")
                else:
                    report.fail(f"{label}: refused by {binary.relative_to(root)} explain:\n"
                                + indent(result.stderr + result.stdout))
    report.done(started, f"{checked} rules files")
