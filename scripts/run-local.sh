#!/usr/bin/env bash
# Brings up the whole pipeline on this machine: Redis and Kafka (scripts/services.sh), the topics,
# `ingest` and `consumer` with the example configuration and rules, and the WeChat simulator's API
# side. Prints where each listens. `scripts/run-local.sh down` stops everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
ROOT=$(pwd)
STATE_DIR=${WXKF_STATE_DIR:-$ROOT/.local}
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/logs
mkdir -p "$RUN_DIR" "$LOG_DIR"

log() { printf '[run-local] %s\n' "$*" >&2; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  local name=$1
  if pid_alive "$RUN_DIR/$name.pid"; then
    kill "$(cat "$RUN_DIR/$name.pid")" && log "$name stopped"
  fi
  rm -f "$RUN_DIR/$name.pid"
}

if [ "${1:-up}" = "down" ]; then
  stop consumer; stop ingest; stop wechat-api
  scripts/services.sh down
  exit 0
fi

# start NAME COMMAND...: runs a service in the background with its log in $LOG_DIR, once.
start() {
  local name=$1; shift
  if pid_alive "$RUN_DIR/$name.pid"; then log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return 0; fi
  nohup "$@" >"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

wait_http() {
  local name=$1 url=$2
  for _ in $(seq 1 100); do
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    pid_alive "$RUN_DIR/$name.pid" || { log "$name exited; see $LOG_DIR/$name.log"; tail -20 "$LOG_DIR/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  log "$name did not answer $url within 20 s; see $LOG_DIR/$name.log"; exit 1
}

scripts/setup.sh
scripts/services.sh up
log "building the services (release)"
cargo build --release --locked -p ingest -p consumer --bins
cargo build --release --locked -p ingest --features sim --bin wechat-sim

export APP_ENVIRONMENT=${APP_ENVIRONMENT:-local}
export INGEST_CONFIG_DIR=$ROOT/config CONSUMER_CONFIG_DIR=$ROOT/config
# The inbound, dead-letter and hand-off topics, with the partition counts of config/consumer.toml.
target/release/consumer setup

# WeChat's API, simulated: tokens for the demo app, 30 ms per call, every send recorded.
start wechat-api target/release/wechat-sim api --listen 127.0.0.1:8081 --latency 30ms \
  --app wxba5fad812f8e6fb9=local-development-secret --record "$LOG_DIR/sends.jsonl"
wait_http wechat-api http://127.0.0.1:8081/sim/stats
start ingest target/release/ingest
wait_http ingest http://127.0.0.1:8080/healthz
start consumer target/release/consumer run
wait_http consumer http://127.0.0.1:9090/healthz

# A first conversation: 40 pushes from 8 users, signed and encrypted as WeChat does.
log "pushing a demo conversation through the pipeline"
target/release/wechat-sim push --url http://127.0.0.1:8080/wechat/demo --count 40 --users 8 \
  --user-prefix "demo-$(date +%s)" --mode mixed --format mixed
for _ in $(seq 1 50); do
  sends=$(curl -fsS http://127.0.0.1:8081/sim/stats 2>/dev/null | grep -o '"sends_recorded":[0-9]*' | cut -d: -f2 || true)
  [ "${sends:-0}" -gt 0 ] && break
  sleep 0.2
done

cat <<TXT

The pipeline runs:
  ingest       http://127.0.0.1:8080/wechat/demo   (push URL; /healthz /readyz /metrics)
  consumer     http://127.0.0.1:9090/metrics       (/healthz /readyz; rules: config/rules.toml, hot-reloaded)
  WeChat API   http://127.0.0.1:8081               (simulated; replies so far: curl 127.0.0.1:8081/sim/sends)
  kafka        127.0.0.1:${WXKF_KAFKA_PORT:-9092}   topics wxkf.inbound, wxkf.dead-letter, wxkf.handoff
  redis        127.0.0.1:${WXKF_REDIS_PORT:-6379}
  logs         $LOG_DIR   (replies also in $LOG_DIR/sends.jsonl)
Replies the simulated WeChat API has accepted so far: ${sends:-0}
Push more:   target/release/wechat-sim push --count 100 --users 10
Dry-run the rules over recorded records: target/release/consumer explain --help
Stop it all with: scripts/run-local.sh down
TXT
