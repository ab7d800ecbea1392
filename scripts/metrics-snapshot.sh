#!/usr/bin/env bash
# Runs ingest and consumer (the binaries in target/<profile>/) with the simulated WeChat API on
# spare ports and throwaway topics, pushes a short conversation through them, and writes what their
# /metrics endpoints then say to OUTDIR/ingest.metrics and OUTDIR/consumer.metrics — the real
# output the dashboard and the alert rules are checked against (scripts/check-deploy.sh --metrics).
#
#   scripts/metrics-snapshot.sh OUTDIR [PROFILE]      (PROFILE: debug, the default, or release)
# Needs the services of scripts/services.sh. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:?usage: scripts/metrics-snapshot.sh OUTDIR [debug|release]}
BIN=target/${2:-debug}
mkdir -p "$OUT"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

log() { printf '[metrics-snapshot] %s\n' "$*" >&2; }
wait_for() { # URL PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do
    curl -fsS "$1" 2>/dev/null | grep -q "$2" && return 0
    sleep 0.3
  done
  log "no '$2' at $1 within $3 s"; return 1
}

run_id=metrics-$(date +%s)-$$
topic=wxkf.$run_id
export APP_ENVIRONMENT=local INGEST_CONFIG_DIR=config CONSUMER_CONFIG_DIR=config RUST_LOG=warn
export INGEST__SERVER__PORT=18580 INGEST__KAFKA__TOPIC=$topic INGEST__REDIS__KEY_PREFIX="$run_id:dedup:" \
  INGEST__SPOOL__DIR="$OUT/spool"
export CONSUMER__SERVER__PORT=18590 CONSUMER__KAFKA__INBOUND_TOPIC=$topic \
  CONSUMER__KAFKA__DEAD_LETTER_TOPIC=$topic.dead-letter CONSUMER__KAFKA__HANDOFF_TOPIC=$topic.handoff \
  CONSUMER__KAFKA__GROUP_ID=$run_id CONSUMER__KAFKA__STATISTICS_INTERVAL=1s \
  CONSUMER__REDIS__KEY_PREFIX="$run_id:" CONSUMER__WECHAT__BASE_URL=http://127.0.0.1:18581

"$BIN/consumer" setup >/dev/null
"$BIN/wechat-sim" api --listen 127.0.0.1:18581 --latency 5ms \
  --app wxba5fad812f8e6fb9=local-development-secret >/dev/null 2>&1 &
PIDS+=($!)
"$BIN/ingest" >"$OUT/ingest.log" 2>&1 &
PIDS+=($!)
"$BIN/consumer" run >"$OUT/consumer.log" 2>&1 &
PIDS+=($!)
wait_for http://127.0.0.1:18580/healthz ok 30
wait_for http://127.0.0.1:18590/healthz ok 30

"$BIN/wechat-sim" push --url http://127.0.0.1:18580/wechat/demo --count 30 --users 5 \
  --user-prefix "$run_id" --mode mixed --format mixed >/dev/null
wait_for http://127.0.0.1:18590/metrics 'consumer_api_duration_seconds_bucket' 30
wait_for http://127.0.0.1:18590/metrics 'consumer_rule_matches_total{' 30
# librdkafka reports a partition's lag once the group has a committed offset there.
wait_for http://127.0.0.1:18590/metrics 'consumer_lag_records{' 60
curl -fsS http://127.0.0.1:18580/metrics >"$OUT/ingest.metrics"
curl -fsS http://127.0.0.1:18590/metrics >"$OUT/consumer.metrics"
log "wrote $OUT/ingest.metrics and $OUT/consumer.metrics"
