"""Shared pieces of the deployment checks: reporting, and the services' configuration."""

from __future__ import annotations

import re
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any



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
        # Optional settings without a default are documented commented out in their section
        # ("# properties_file = ..." under [kafka]): known settings too.
        self.commented: set[tuple[str, ...]] = set()
        section: tuple[str, ...] = ()
        for line in text.splitlines():
            header = re.match(r"\[([a-z0-9_.]+)\]\s*$", line)
            if header:
                section = tuple(header.group(1).split("."))
                continue
            m = re.match(r"#\s*([a-z_]+)\s*=\s*\S", line)
            if m and section and section[0] != "apps":
                self.commented.add(section + (m.group(1),))
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
            if i == len(path) - 1 and tuple(path) in self.commented:
                return None
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


def clap_subcommands(source: str) -> set[str]:
    """Subcommand names of the `enum Command` of a clap CLI (variants in kebab case)."""
    m = re.search(r"enum Command\s*\{(.*?)\n\}", source, re.S)
    if not m:
        return set()
    body = re.sub(r"//[^\n]*", "", m.group(1))
    # A `#[command(flatten)]` variant is not a subcommand: its enum's variants are (see
    # consumer_subcommands).
    body = re.sub(r"#\[command\(flatten\)\]\s*[A-Z]\w*\s*\([^)]*\)\s*,?", "", body)
    variants = re.findall(r"^\s*([A-Z]\w*)\s*(?:[({,]|$)", body, re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}


def consumer_subcommands(root: Path) -> set[str]:
    """The consumer's subcommands: `run` in consumer/src/cli.rs and the operator tools of
    consumer/src/operator/mod.rs, which cli.rs flattens in."""
    subcommands = set()
    for path in (root / "consumer/src/cli.rs", root / "consumer/src/operator/mod.rs"):
        if path.exists():
            subcommands |= clap_subcommands(path.read_text())
    return subcommands


def clap_long_flags(source: str) -> set[str]:
    """--flags of the `#[arg(long ...)]` fields in `source`."""
    flags = set()
    # A field may be `pub`, `pub(crate)` or private.
    for m in re.finditer(r"#\[arg\(([^\]]*)\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:", source):
        attrs, field = m.group(1), m.group(2)
        custom = re.search(r'long\s*=\s*"([^"]+)"', attrs)
        if custom:
            flags.add("--" + custom.group(1))
        elif re.search(r"\blong\b", attrs):
            flags.add("--" + field.replace("_", "-"))
    return flags
