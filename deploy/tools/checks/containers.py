"""The Dockerfile and docker-compose.yml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from .common import Report, ServiceConfig, clap_long_flags, clap_subcommands, indent, parse_duration, run



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


def check_dockerfile(root: Path, hadolint: str, report: Report,
                     spool_dir: str | None = None) -> set[str]:
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
        # The user the image runs as: the last USER of the nearest stage that has one.
        users = next(([i for i in stage if i.upper().startswith("USER ")] for stage in chain
                      if any(i.upper().startswith("USER ") for i in stage)), [])
        user = users[-1].split()[1] if users else "root"
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
    if spool_dir and "ingest" in stages:
        # The spool's default directory exists in the image and belongs to the service user: a new
        # named volume mounted there takes its owner, and without a volume ingest can still start.
        flat = [i for stage in stage_chain(stages, "ingest") for i in stage]
        report.check(any(i.upper().startswith("RUN ") and spool_dir in i and "10001" in i for i in flat),
                     f"target ingest: creates spool.dir {spool_dir} owned by 10001")
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
        operator = root / "consumer/src/operator/mod.rs"
        if target == "consumer" and operator.exists():
            # The operator's subcommands, which cli.rs flattens into `consumer`'s own.
            subcommands |= clap_subcommands(operator.read_text())
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
    # Shutdown: the grace period must cover the drain (and ingest's spool drain).
    for svc_name in ("ingest", "consumer"):
        service = services.get(svc_name, {})
        env = service.get("environment") or {}
        keys = ["server.shutdown_timeout"]
        if svc_name == "ingest" and str(configs[svc_name].get("spool.enabled", env)).lower() == "true":
            keys.append("spool.shutdown_drain")
        drains = [parse_duration(str(configs[svc_name].get(k, env))) for k in keys]
        grace = parse_duration(str(service.get("stop_grace_period", "10s")))
        report.check(grace > sum(drains), f"{svc_name}: stop_grace_period {grace:g}s > "
                     + " + ".join(f"{k} {d:g}s" for k, d in zip(keys, drains)))
    # ingest's spool: on a named volume (the root filesystem is read-only, and the records in it
    # must outlive the container).
    ingest = services.get("ingest", {})
    env = ingest.get("environment") or {}
    if str(configs["ingest"].get("spool.enabled", env)).lower() == "true":
        spool_dir = str(configs["ingest"].get("spool.dir", env)).rstrip("/")
        named = compose.get("volumes") or {}
        mounted = []
        for volume in ingest.get("volumes", []):
            if isinstance(volume, str):
                parts = volume.split(":")
                source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
            else:
                source, target = volume.get("source"), volume.get("target")
            if target.rstrip("/") == spool_dir:
                mounted.append(source)
        report.check(len(mounted) == 1 and mounted[0] in named,
                     f"ingest: spool.dir {spool_dir} is a named volume")
    report.done(started, f"{len(services)} services")
