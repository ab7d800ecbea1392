#!/usr/bin/env bash
# Brings up the whole pipeline on this machine: Redis and Kafka (scripts/services.sh), the topics,
# `ingest` and `consumer` with the example configuration and rules, and the WeChat simulator's API
# side. Prints where each listens. `scripts/run-local.sh down` stops everything it started.
#
#   scripts/run-local.sh [up]          on one Kafka broker and one Redis (the quick path)
#   scripts/run-local.sh --cluster     on the production topology: the three-broker Kafka cluster
#                                      (topics with replication factor 3, min.insync.replicas 2) and
#                                      the six-node Redis Cluster of `scripts/services.sh cluster-up`
#   scripts/run-local.sh down          stops the pipeline and the services of the topology it ran on
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

ACTION=up TOPOLOGY=single
for arg in "$@"; do
  case $arg in
    up|down) ACTION=$arg ;;
    --cluster) TOPOLOGY=cluster ;;
    *) echo "usage: $0 [up|down] [--cluster]" >&2; exit 2 ;;
  esac
done
# The topology the pipeline was last brought up on, so that `down` stops the right services.
TOPOLOGY_FILE=$RUN_DIR/run-local.topology

stop() {
  local name=$1
  if pid_alive "$RUN_DIR/$name.pid"; then
    kill "$(cat "$RUN_DIR/$name.pid")" && log "$name stopped"
  fi
  rm -f "$RUN_DIR/$name.pid"
}

if [ "$ACTION" = down ]; then
  stop consumer; stop ingest; stop wechat-api
  if [ "$TOPOLOGY" = cluster ] || [ "$(cat "$TOPOLOGY_FILE" 2>/dev/null)" = cluster ]; then
    scripts/services.sh cluster-down
  else
    scripts/services.sh down
  fi
  rm -f "$TOPOLOGY_FILE"
  exit 0
fi

running_on=$(cat "$TOPOLOGY_FILE" 2>/dev/null || true)
if [ -n "$running_on" ] && [ "$running_on" != "$TOPOLOGY" ] && { pid_alive "$RUN_DIR/ingest.pid" || pid_alive "$RUN_DIR/consumer.pid"; }; then
  log "the pipeline already runs on the $running_on topology; stop it first with: scripts/run-local.sh down"
  exit 1
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
if [ "$TOPOLOGY" = cluster ]; then
  scripts/services.sh cluster-up
  # WXKF_CLUSTER_KAFKA_BOOTSTRAP: the three brokers; WXKF_REDIS_CLUSTER_NODES: the six Redis nodes.
  eval "$(scripts/services.sh cluster-env)"
  export WXKF_CLUSTER_KAFKA_BOOTSTRAP WXKF_REDIS_CLUSTER_NODES
  export INGEST__KAFKA__BROKERS=$WXKF_CLUSTER_KAFKA_BOOTSTRAP CONSUMER__KAFKA__BROKERS=$WXKF_CLUSTER_KAFKA_BOOTSTRAP
  # `consumer setup` creates the topics on three brokers: replication factor 3 (also what it derives
  # from three brokers), min.insync.replicas 2, unclean leader election off, explicit retention.
  export CONSUMER__KAFKA__TOPICS__REPLICATION_FACTOR=3
  # Redis Cluster: both services read the node list from redis.cluster_nodes; the defaults file's
  # single-server redis.url is cleared, since exactly one of the two may be set.
  export INGEST__REDIS__URL= CONSUMER__REDIS__URL=
  export INGEST__REDIS__CLUSTER_NODES=$WXKF_REDIS_CLUSTER_NODES CONSUMER__REDIS__CLUSTER_NODES=$WXKF_REDIS_CLUSTER_NODES
  KAFKA_SHOWN="$WXKF_CLUSTER_KAFKA_BOOTSTRAP (replication factor 3, min.insync.replicas 2)"
  REDIS_SHOWN="Redis Cluster $WXKF_REDIS_CLUSTER_NODES"
else
  scripts/services.sh up
  KAFKA_SHOWN="127.0.0.1:${WXKF_KAFKA_PORT:-9092}"
  REDIS_SHOWN="127.0.0.1:${WXKF_REDIS_PORT:-6379}"
fi
echo "$TOPOLOGY" >"$TOPOLOGY_FILE"
log "building the services (release)"
cargo build --release --locked -p ingest -p consumer --bins
cargo build --release --locked -p ingest --features sim --bin wechat-sim

export APP_ENVIRONMENT=${APP_ENVIRONMENT:-local}
export INGEST_CONFIG_DIR=$ROOT/config CONSUMER_CONFIG_DIR=$ROOT/config
# The inbound, dead-letter and hand-off topics, with the partition counts of config/consumer.toml.
# --warn-only: topics left by an earlier run with other settings are reported, not fatal.
target/release/consumer setup --warn-only

# The example rules, with a bot answering what no other rule does: the [default] rule asks the
# simulated chat model (config/consumer.local.toml, [ask.backends.assistant]) instead of echoing.
RULES_FILE=$RUN_DIR/rules.toml
sed '/^\[default\]$/,$d' config/rules.toml >"$RULES_FILE"
cat >>"$RULES_FILE" <<'TOML'
[default]
[[default.actions]]
type = "ask"
backend = "assistant"
fallback_text = "Sorry, I cannot answer right now; a colleague will reply soon."
TOML
export CONSUMER__RULES__PATH=$RULES_FILE

# WeChat's API, simulated: tokens for the demo app, 30 ms per call, every send recorded; and the
# chat model the bot asks, thinking 300 ms per answer.
start wechat-api target/release/wechat-sim api --listen 127.0.0.1:8081 --latency 30ms \
  --chat-latency 300ms \
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
  bot=$(curl -fsS http://127.0.0.1:8081/sim/sends 2>/dev/null | grep -o '"content":"Echo: [^"]*"' | head -1 || true)
  [ "${sends:-0}" -gt 0 ] && [ -n "$bot" ] && break
  sleep 0.2
done

cat <<TXT

The pipeline runs:
  ingest       http://127.0.0.1:8080/wechat/demo   (push URL; /healthz /readyz /metrics)
  consumer     http://127.0.0.1:9090/metrics       (/healthz /readyz; rules: config/rules.toml, hot-reloaded)
  WeChat API   http://127.0.0.1:8081               (simulated; replies so far: curl 127.0.0.1:8081/sim/sends)
  kafka        $KAFKA_SHOWN
               topics wxkf.inbound, wxkf.dead-letter, wxkf.handoff
  redis        $REDIS_SHOWN
  logs         $LOG_DIR   (replies also in $LOG_DIR/sends.jsonl)
Replies the simulated WeChat API has accepted so far: ${sends:-0}
A bot's answer among them (the [default] rule asks the simulated chat model): ${bot:-none yet}
  rules in use: $RULES_FILE; bot calls: curl 127.0.0.1:8081/sim/chat
Push more:   target/release/wechat-sim push --count 100 --users 10
Dry-run the rules over recorded records: target/release/consumer explain --help
Stop it all with: scripts/run-local.sh down$([ "$TOPOLOGY" = cluster ] && echo "
Failure tests: scripts/services.sh kafka-kill N / kafka-start N (N = 1..3), redis-kill N / redis-start N (N = 1..6); scripts/services.sh cluster-status")
TXT
