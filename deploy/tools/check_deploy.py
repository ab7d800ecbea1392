"""Offline checks of the packaging and deployment files.

Run through scripts/check-deploy.sh, which installs the tools this needs (PyYAML, jsonschema,
kubernetes-validate, hadolint, kustomize, promtool) and passes their paths. Each section prints
what it checked; every problem is collected and printed again at the end, and the exit status is 1
when there was any.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

# ------------------------------------------------------------------------------------------------
# Reporting


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.section = ""

    def start(self, title: str) -> float:
        self.section = title
        print(f"\n--- {title}", flush=True)
        return time.monotonic()

    def done(self, started: float, summary: str) -> None:
        print(f"    {summary} ({time.monotonic() - started:.1f}s)", flush=True)

    def ok(self, message: str) -> None:
        print(f"    ok   {message}", flush=True)

    def fail(self, message: str) -> None:
        self.problems.append(f"[{self.section}] {message}")
        print(f"    FAIL {message}", flush=True)

    def check(self, condition: bool, message: str) -> bool:
        if condition:
            self.ok(message)
        else:
            self.fail(message)
        return condition


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def indent(text: str) -> str:
    return "\n".join("         " + line for line in text.strip().splitlines())


# ------------------------------------------------------------------------------------------------
# The services' configuration: defaults files, durations, INGEST__/CONSUMER__ variables

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """humantime-style durations as the services read them: "10s", "2500ms", "1h 30m"."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text)
    if not parts or re.sub(r"[\d.\s]|ms|s|m|h|d", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


class ServiceConfig:
    """The commented defaults file of one service (config/<service>.toml) and its env prefix."""

    ALWAYS_ALLOWED = {"APP_ENVIRONMENT", "RUST_LOG", "RUST_BACKTRACE"}

    def __init__(self, root: Path, service: str) -> None:
        self.service = service
        self.prefix = service.upper() + "__"
        self.path = root / "config" / f"{service}.toml"
        text = self.path.read_text()
        self.defaults = tomllib.loads(text)
        # The per-app keys are documented in a commented example table: "# [apps.shop]" followed
        # by "# key = value" lines.
        self.app_keys: set[str] = set()
        in_example = False
        for line in text.splitlines():
            if re.match(r"#\s*\[apps\.[a-z0-9_-]+\]", line):
                in_example = True
                continue
            if in_example:
                m = re.match(r"#\s*([a-z_]+)\s*=", line)
                if m:
                    self.app_keys.add(m.group(1))
                elif not line.startswith("#"):
                    in_example = False

    def check_variable(self, name: str) -> str | None:
        """None when `name` is a setting the service knows, else why not."""
        if name in self.ALWAYS_ALLOWED or name == f"{self.service.upper()}_CONFIG_DIR":
            return None
        if not name.startswith(self.prefix):
            return f"{name} is not a {self.service} setting (expected {self.prefix}SECTION__KEY)"
        path = name[len(self.prefix):].lower().split("__")
        if path[0] == "apps":
            if len(path) != 3:
                return f"{name}: app settings are {self.prefix}APPS__<APP>__<KEY>"
            if not re.fullmatch(r"[a-z0-9_-]+", path[1]):
                return f"{name}: app names are lower case letters, digits, '-' and '_'"
            if self.app_keys and path[2] not in self.app_keys:
                return f"{name}: apps have no key {path[2]!r} (known: {sorted(self.app_keys)})"
            return None
        node: Any = self.defaults
        for i, key in enumerate(path):
            if isinstance(node, dict) and key == "properties" and i == len(path) - 2:
                return None  # librdkafka pass-through properties: free-form
            if not isinstance(node, dict) or key not in node:
                where = ".".join(path[:i]) or "the top level"
                return f"{name}: {self.path.name} has no key {key!r} in {where}"
            node = node[key]
        if isinstance(node, dict):
            return f"{name} names a section, not a setting"
        return None

    def get(self, dotted: str, env: dict[str, str] | None = None) -> Any:
        variable = self.prefix + dotted.upper().replace(".", "__")
        if env and variable in env:
            return env[variable]
        node: Any = self.defaults
        for key in dotted.split("."):
            node = node[key]
        return node


# ------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), in order."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = [line]
            stages[m.group(2) or f"stage{len(stages)}"] = current
        elif current is not None:
            current.append(line)
    return stages


def stage_chain(stages: dict[str, list[str]], name: str) -> list[list[str]]:
    """The instructions of `name` and of the stages it is built FROM, nearest first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name][0].split()[1]
    return chain


def check_dockerfile(root: Path, hadolint: str, report: Report) -> set[str]:
    started = report.start("Dockerfile")
    path = root / "Dockerfile"
    text = path.read_text()
    result = run([hadolint, "--no-color", str(path)])
    if result.returncode == 0:
        report.ok("hadolint: no findings")
    else:
        report.fail("hadolint findings:\n" + indent(result.stdout + result.stderr))
    stages = dockerfile_stages(text)
    targets = {"ingest", "consumer", "wechat-sim"}
    for target in sorted(targets):
        if target not in stages:
            report.fail(f"no build target {target!r}")
            continue
        chain = stage_chain(stages, target)
        flat = [i for stage in chain for i in stage]
        users = [i for i in flat if i.upper().startswith("USER ")]
        user = users[0].split()[1] if users else "root"
        report.check(
            re.fullmatch(r"[1-9]\d*(:\d+)?", user) is not None,
            f"target {target}: runs as numeric non-root user ({user})",
        )
        base = chain[-1][0].split()[1]
        report.check(base.startswith("debian:") and "slim" in base or base.startswith("${"),
                     f"target {target}: slim runtime base ({base})")
        if target != "wechat-sim":
            report.check(any(i.upper().startswith("HEALTHCHECK ") and "/healthz" in i for i in flat),
                         f"target {target}: HEALTHCHECK probes /healthz")
    builder = stages.get("builder", [])
    report.check(any("cargo chef cook" in i for i in builder),
                 "builder compiles the dependencies in their own cached layer (cargo chef cook)")
    dockerignore = (root / ".dockerignore").read_text().split()
    for pattern in ("**/target", ".git", "config/*.local.toml"):
        report.check(pattern in dockerignore, f".dockerignore excludes {pattern}")
    report.done(started, f"{len(stages)} stages")
    return {name for name in stages}


# ------------------------------------------------------------------------------------------------
# Compose


def clap_subcommands(source: str) -> set[str]:
    """Subcommand names of the `enum Command` of a clap CLI (variants in kebab case)."""
    m = re.search(r"enum Command\s*\{(.*?)\n\}", source, re.S)
    if not m:
        return set()
    body = re.sub(r"//[^\n]*", "", m.group(1))
    variants = re.findall(r"^\s*([A-Z]\w*)\s*(?:[({,]|$)", body, re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}


def clap_long_flags(source: str) -> set[str]:
    """--flags of the `#[arg(long ...)]` fields in `source`."""
    flags = set()
    for m in re.finditer(r"#\[arg\(([^\]]*)\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?(\w+)\s*:", source):
        attrs, field = m.group(1), m.group(2)
        custom = re.search(r'long\s*=\s*"([^"]+)"', attrs)
        if custom:
            flags.add("--" + custom.group(1))
        elif re.search(r"\blong\b", attrs):
            flags.add("--" + field.replace("_", "-"))
    return flags


def check_commands(root: Path, services: dict[str, dict], report: Report) -> None:
    """The subcommands and flags compose passes to our binaries exist in their clap definitions."""
    clis = {
        "consumer": (root / "consumer/src/cli.rs", lambda sub: [root / "consumer/src/cli.rs"]),
        "wechat-sim": (root / "ingest/src/bin/wechat-sim/main.rs",
                       lambda sub: [root / f"ingest/src/bin/wechat-sim/{sub}.rs"]),
    }
    for name, service in services.items():
        target = (service.get("build") or {}).get("target")
        command = service.get("command")
        if target not in clis or not command:
            continue
        main, args_files = clis[target]
        if not main.exists():
            print(f"    note: {main.relative_to(root)} does not exist yet; `{name}` command not checked")
            continue
        sub = command[0]
        subcommands = clap_subcommands(main.read_text())
        if sub not in subcommands:
            if target == "wechat-sim":
                print(f"    note: {name}: `wechat-sim {sub}` does not exist yet (has: {', '.join(sorted(subcommands))})")
            else:
                report.fail(f"{name}: `{target} {sub}` is not a subcommand (has: {', '.join(sorted(subcommands))})")
            continue
        flags = set()
        for path in args_files(sub):
            if path.exists():
                flags |= clap_long_flags(path.read_text())
        used = [a.split("=")[0] for a in command[1:] if a.startswith("--")]
        unknown = [f for f in used if f not in flags]
        report.check(not unknown, f"{name}: `{target} {sub}` accepts {' '.join(used) or 'no flags'}"
                     + (f" (unknown: {' '.join(unknown)})" if unknown else ""))


def check_compose(root: Path, stages: set[str], configs: dict[str, ServiceConfig],
                  report: Report) -> None:
    started = report.start("docker-compose.yml against the Compose Specification schema")
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    schema = json.loads((root / "deploy/schemas/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    for error in errors:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        report.fail(f"schema: {where}: {error.message}")
    if not errors:
        report.ok("valid against the Compose Specification (deploy/schemas/compose-spec.json)")

    services: dict[str, dict] = compose.get("services", {})
    dockerfile_healthcheck = {"ingest", "consumer"}
    kafka_version = re.search(r"KAFKA_VERSION=\$\{WXKF_KAFKA_VERSION:-([^}]+)\}",
                              (root / "scripts/services.sh").read_text())
    want_kafka = f"apache/kafka:{kafka_version.group(1)}" if kafka_version else None
    for required in ("kafka", "redis", "topics", "ingest", "consumer", "prometheus", "grafana"):
        report.check(required in services, f"service {required} present")
    if want_kafka:
        report.check(services.get("kafka", {}).get("image") == want_kafka,
                     f"kafka runs the official image of the version scripts/services.sh uses ({want_kafka})")
    redis_cmd = " ".join(services.get("redis", {}).get("command", []))
    report.check("--appendonly yes" in redis_cmd, "redis persists (appendonly yes)")
    consumer = services.get("consumer", {})
    report.check("container_name" not in consumer and "ports" not in consumer,
                 "consumer has no container_name and no host ports (docker compose up --scale consumer=N)")
    for name in ("topics", "ingest", "consumer"):
        service = services.get(name, {})
        report.check(service.get("read_only") is True and "ALL" in service.get("cap_drop", []),
                     f"{name}: read-only root filesystem, all capabilities dropped")
    report.check(services.get("topics", {}).get("command") == ["setup"],
                 "topics job runs `consumer setup`")
    demo = [n for n, s in services.items() if "demo" in s.get("profiles", [])]
    report.check({"wechat-sim"} <= set(demo), f"simulator only in the demo profile ({', '.join(demo)})")

    for name, service in services.items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("target"):
            report.check(build["target"] in stages, f"{name}: build target {build['target']} exists in Dockerfile")
        depends = service.get("depends_on", {})
        if isinstance(depends, dict):
            for other, spec in depends.items():
                if other not in services:
                    report.fail(f"{name}: depends on unknown service {other}")
                    continue
                condition = spec.get("condition", "service_started")
                if condition == "service_healthy":
                    has_check = "healthcheck" in services[other] or (
                        services[other].get("build", {}).get("target") in dockerfile_healthcheck)
                    report.check(has_check, f"{name}: waits for {other} healthy, and {other} has a healthcheck")
                if condition == "service_completed_successfully":
                    report.check(services[other].get("restart", "no") == "no",
                                 f"{name}: waits for one-shot {other} to complete (restart: no)")
                if "demo" not in service.get("profiles", []) and "demo" in services[other].get("profiles", []):
                    report.fail(f"{name}: depends on {other}, which exists only in the demo profile")
        for volume in service.get("volumes", []):
            spec = volume if isinstance(volume, str) else f"{volume.get('source')}:{volume.get('target')}"
            source = spec.split(":")[0]
            if source.startswith((".", "/")):
                report.check((root / source).exists(), f"{name}: mounted path {source} exists")
                if source.startswith("./config") or source.startswith("./deploy"):
                    report.check(spec.endswith(":ro"), f"{name}: {source} mounted read-only")
        env = service.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        svc_name = {"ingest": "ingest", "consumer": "consumer", "topics": "consumer"}.get(name)
        if svc_name:
            problems = [p for p in (configs[svc_name].check_variable(k) for k in env) if p]
            for p in problems:
                report.fail(f"{name}: {p}")
            if not problems:
                report.ok(f"{name}: all {len(env)} environment variables are settings of {svc_name}")
    check_commands(root, services, report)
    # Shutdown: the grace period must cover the drain.
    for svc_name, grace_key in (("ingest", "server.shutdown_timeout"), ("consumer", "server.shutdown_timeout")):
        service = services.get(svc_name, {})
        drain = parse_duration(str(configs[svc_name].get(grace_key, service.get("environment"))))
        grace = parse_duration(str(service.get("stop_grace_period", "10s")))
        report.check(grace > drain, f"{svc_name}: stop_grace_period {grace:g}s > {grace_key} {drain:g}s")
    report.done(started, f"{len(services)} services")


# ------------------------------------------------------------------------------------------------
# Kubernetes


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
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    report.check(not by_kind.get("Secret"), f"{name}: renders no Secret (secrets are created by the operator)")
    for cm in configmaps.values():
        for key, value in (cm.get("data") or {}).items():
            if SECRET_LIKE.search(key) and not key.endswith((".toml", ".json", ".yml", ".yaml")):
                report.fail(f"{name}: ConfigMap {cm['metadata']['name']} holds {key}, which looks like a secret")

    services = {"ingest": "wxkf-ingest", "consumer": "wxkf-consumer"}
    for service, deployment_name in services.items():
        deployment = next((d for n, d in deployments.items() if n.endswith(deployment_name)), None)
        if not report.check(deployment is not None, f"{name}: Deployment {deployment_name} present"):
            continue
        pod = deployment["spec"]["template"]["spec"]
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
        report.check(grace > drain + pre_stop,
                     f"{name}: {service} terminationGracePeriodSeconds {grace} > preStop {pre_stop:g}s "
                     f"+ server.shutdown_timeout {drain:g}s")
        if service == "consumer":
            mounts = {m["name"]: m for m in main.get("volumeMounts", [])}
            rules_path = env.get("CONSUMER__RULES__PATH", "")
            rules_mount = next((m for m in mounts.values() if rules_path.startswith(m["mountPath"] + "/")), None)
            report.check(rules_mount is not None and "subPath" not in rules_mount,
                         f"{name}: rules file {rules_path} is on a directory mount (hot reload sees updates)")
            report.check(any(c.get("args") == ["setup"] for c in pod.get("initContainers", [])),
                         f"{name}: consumer runs `consumer setup` before joining the group")
            cli = root / "consumer/src/cli.rs"
            subcommands = clap_subcommands(cli.read_text()) if cli.exists() else set()
            for container in containers:
                sub = (container.get("args") or ["run"])[0]
                report.check(sub in subcommands,
                             f"{name}: consumer/{container['name']}: `consumer {sub}` is a subcommand")

    selectors = {n: d["spec"]["selector"]["matchLabels"] for n, d in deployments.items()}

    def selects_a_deployment(selector: dict) -> bool:
        return any(all(sel.get(k) == v for k, v in selector.items()) for sel in selectors.values())

    for svc in by_kind.get("Service", []):
        report.check(selects_a_deployment(svc["spec"]["selector"]),
                     f"{name}: Service {svc['metadata']['name']} selects a Deployment's pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        report.check(selects_a_deployment(pdb["spec"]["selector"]["matchLabels"]),
                     f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects a Deployment's pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        report.check(target in deployments and "replicas" not in deployments[target]["spec"],
                     f"{name}: HPA {hpa['metadata']['name']} scales {target}, whose manifest sets no replicas")
    report.check(any(h["spec"]["scaleTargetRef"]["name"].endswith("wxkf-ingest")
                     for h in by_kind.get("HorizontalPodAutoscaler", [])), f"{name}: ingest has an HPA")
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
            target = so["scaleTargetRef"]["name"]
            report.check(target in deployments and "replicas" not in deployments[target]["spec"],
                         f"{name}: ScaledObject scales {target}, whose manifest sets no replicas")
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
        env_cm = next((d for d in configmaps if "consumer-env" in d["metadata"]["name"]), None)
        for cm in configmaps:
            for key, text in (cm.get("data") or {}).items():
                if not key.endswith(".toml"):
                    continue
                label = f"{directory}: ConfigMap {cm['metadata']['name']} {key}"
                try:
                    tomllib.loads(text)
                except tomllib.TOMLDecodeError as error:
                    report.fail(f"{label}: not TOML: {error}")
                    continue
                checked += 1
                if binary is None:
                    report.ok(f"{label}: TOML")
                    continue
                env = {"PATH": "/usr/bin:/bin", "APP_ENVIRONMENT": "deploy-check",
                       "CONSUMER_CONFIG_DIR": str(root / "config")}
                for name, value in ((env_cm or {}).get("data") or {}).items():
                    if name.startswith("CONSUMER__APPS__"):
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


# ------------------------------------------------------------------------------------------------
# Prometheus


def prometheusrule_text(alerts_text: str) -> str:
    """deploy/prometheus/prometheusrule.yaml: the groups of alerts.yml under a PrometheusRule."""
    lines = alerts_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return (
        "# Written from alerts.yml by `scripts/check-deploy.sh --write-prometheusrule`: edit\n"
        "# alerts.yml and regenerate (the check fails when the two differ).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: wxkf\n"
        "  labels:\n"
        "    app.kubernetes.io/name: wxkf\n"
        "    app.kubernetes.io/part-of: wxkf\n"
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
                  r"consumer_token_refreshes_total"):
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
              "token refreshes", "lag"]
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


# ------------------------------------------------------------------------------------------------
# Metric names


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


# ------------------------------------------------------------------------------------------------


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
    stages = check_dockerfile(root, args.hadolint, report)
    check_compose(root, stages, configs, report)
    rendered = check_kubernetes(root, args.kustomize, args.k8s_versions.split(","), configs, report)
    check_rules_files(root, rendered, report)
    check_prometheus(root, args.promtool, report)
    dashboard = check_grafana(root, report)
    if args.metrics:
        missing = [p for p in args.metrics if not p.is_file()]
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
