#!/usr/bin/env bash
# Restart right after a crash: `kill -9` a service started by scripts/services.sh, then start it
# again at once, as a failure test does. The start must bring up a new process (not answer
# "already running" because the killed one has not finished exiting) and the service must answer.
#
#   scripts/tests/restart-after-kill.sh             the single Kafka broker and the single Redis
#   scripts/tests/restart-after-kill.sh --cluster   also a node of the Kafka cluster and of the Redis Cluster
#
# Everything runs on ports of its own with its state in a fresh temporary folder, so the services
# other people use are never touched: Kafka 29392 (controller 29393), Redis 7100; with --cluster,
# brokers 29492-29494 (controllers 29592-29594) and Redis Cluster nodes 7110-7115 (override with
# RESTART_TEST_PORT_BASE_* below). Exits 1 on the first failure; stops what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# RESTART_TEST_SERVICES runs the check against another copy of the script (e.g. an older one).
SERVICES=${RESTART_TEST_SERVICES:-$ROOT/scripts/services.sh}

CLUSTER=0
[ "${1:-}" = "--cluster" ] && CLUSTER=1

TEST_STATE=$(mktemp -d "${TMPDIR:-/tmp}/wxkf-restart-test.XXXXXX")
# Never inherit the caller's WXKF_* ports or state: they could name services in use.
export WXKF_STATE_DIR=$TEST_STATE
export WXKF_KAFKA_PORT=${RESTART_TEST_KAFKA_PORT:-29392}
export WXKF_KAFKA_CONTROLLER_PORT=${RESTART_TEST_KAFKA_CONTROLLER_PORT:-29393}
export WXKF_REDIS_PORT=${RESTART_TEST_REDIS_PORT:-7100}
export WXKF_CLUSTER_STATE_DIR=$TEST_STATE/cluster
export WXKF_CLUSTER_KAFKA_PORT=${RESTART_TEST_PORT_BASE_CLUSTER_KAFKA:-29492}
export WXKF_CLUSTER_CONTROLLER_PORT=${RESTART_TEST_PORT_BASE_CLUSTER_CONTROLLER:-29592}
export WXKF_REDIS_CLUSTER_PORT=${RESTART_TEST_PORT_BASE_REDIS_CLUSTER:-7110}

say() { printf '[restart-test] %s\n' "$*" >&2; }
fail() { printf '[restart-test] FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  "$SERVICES" down >/dev/null 2>&1 || true
  [ $CLUSTER -eq 1 ] && { "$SERVICES" cluster-down >/dev/null 2>&1 || true; }
  rm -rf "$TEST_STATE"
}
trap cleanup EXIT

# running PID: the process exists and is not a zombie.
running() { [ -r "/proc/$1/stat" ] && ! sed 's/^.*) //' "/proc/$1/stat" | grep -q '^[ZX]'; }

# check NAME PIDFILE PROBE START-ARGS...: kill -9 the process of PIDFILE, run the start at once,
# then require a new, running process and a passing PROBE.
check() {
  local name=$1 pidfile=$2 probe=$3; shift 3
  [ -f "$pidfile" ] || fail "$name: no pid file $pidfile after the first start"
  local old; old=$(cat "$pidfile")
  running "$old" || fail "$name: pid $old from $pidfile is not running before the kill"
  kill -9 "$old"
  local out rc=0
  out=$("$SERVICES" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/    /' >&2
  [ $rc -eq 0 ] || fail "$name: '$*' after kill -9 exited $rc"
  local new; new=$(cat "$pidfile" 2>/dev/null || echo none)
  [ "$new" != "$old" ] || fail "$name: '$*' right after kill -9 started nothing (pid file still names the killed pid $old)"
  running "$new" || fail "$name: the new pid $new is not running"
  $probe || fail "$name: pid $new runs but the service does not answer"
  say "ok: $name restarted right after kill -9 (pid $old -> $new)"
}

kafka_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$WXKF_KAFKA_PORT") 2>/dev/null; }
redis_answers() { redis-cli -p "$WXKF_REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

say "state in $TEST_STATE"
"$SERVICES" kafka-start
check "kafka" "$TEST_STATE/run/kafka.pid" kafka_answers kafka-start
"$SERVICES" redis-start
check "redis" "$TEST_STATE/run/redis.pid" redis_answers redis-start

if [ $CLUSTER -eq 1 ]; then
  "$SERVICES" cluster-up
  broker2_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$((WXKF_CLUSTER_KAFKA_PORT + 1))") 2>/dev/null; }
  redis1_answers() { redis-cli -p "$WXKF_REDIS_CLUSTER_PORT" ping 2>/dev/null | grep -q PONG; }
  check "kafka cluster broker 2" "$WXKF_CLUSTER_STATE_DIR/kafka-2/kafka.pid" broker2_answers kafka-start 2
  check "redis cluster node 1" "$WXKF_CLUSTER_STATE_DIR/redis-1/redis.pid" redis1_answers redis-start 1
fi
say "PASS"
