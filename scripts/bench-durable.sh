#!/usr/bin/env bash
# Where a push becomes durable, side by side in one run, with the same open-loop load generator
# (wechat-sim push: signed, AES-encrypted JSON pushes, unique MsgIds), real Redis, acks=all, and the
# production default `spool.fsync = "always"`:
#   - the single local broker (replication factor 1, the quick path);
#   - the local three-broker cluster (replication factor 3, min.insync.replicas 2: production's);
#   - Kafka unreachable: every push is fsynced into ingest's spool;
# and then how fast the spool drains into the single broker once Kafka is reachable again.
#
# "Kafka unreachable" is an ingest whose bootstrap address is a port on 127.0.0.1 where nothing
# listens: connection refused, as for a stopped broker, without stopping the broker other work on
# this machine may be using.
#
# Reports, as medians over --repeat runs (each run starts fresh processes):
#   (a) the highest rate each sustains with every push acknowledged and p99 < 100 ms;
#   (b) p50/p99 ack latency at --rate pushes/s for --seconds;
#   (c) the drain: records spooled during (a) and (b), and records per second to empty the spool
#       into Kafka after a restart with Kafka reachable.
#
#   scripts/bench-durable.sh [--repeat 3] [--rate 2000] [--seconds 15] [--rates "1000 2000 ..."]
# Starts the single services and the Kafka cluster (scripts/services.sh) if they are not running;
# leaves them running.
# Traffic goes to 127.0.0.1 only; every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

REPEAT=3
RATE=2000
SECONDS_PER_STEP=15
RATES="1000 2000 3000 4000 5000 6000 8000 10000"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --seconds) SECONDS_PER_STEP=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

PORT=18180
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

scripts/setup.sh
scripts/services.sh up
cargo build --release --locked -p ingest --features sim --bins
SIM=target/release/wechat-sim
TOPIC=wxkf.bench-durable-$(date +%s)
scripts/services.sh topic "$TOPIC" 12
scripts/services.sh kafka-cluster-up
scripts/services.sh cluster-topic "$TOPIC" 12
eval "$(scripts/services.sh cluster-env)"
CLUSTER=$WXKF_CLUSTER_KAFKA_BOOTSTRAP
DEAD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_ingest() { # BROKERS SPOOL_DIR
  APP_ENVIRONMENT=local INGEST_CONFIG_DIR=config RUST_LOG=error \
    INGEST__SERVER__PORT=$PORT INGEST__KAFKA__TOPIC=$TOPIC INGEST__KAFKA__BROKERS=$1 \
    INGEST__REDIS__KEY_PREFIX="wxkf:bench-spool:$(date +%s%N):" \
    INGEST__SPOOL__DIR=$2 INGEST__SPOOL__SHUTDOWN_DRAIN=100ms \
    target/release/ingest >>"$WORK/ingest.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && return 0
    sleep 0.1
  done
  echo "ingest did not start; see $WORK/ingest.log" >&2; exit 1
}
stop_ingest() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
metric() { # NAME -> value from /metrics
  curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 == n {print $2}'
}

push() { # RATE SECONDS -> one JSON summary line
  $SIM push --url "http://127.0.0.1:$PORT/wechat/demo" --rate "$1" --duration "${2}s" \
    --users 10000 --mode safe --format json --mix text=100 --max-in-flight 4096 --retries 0 \
    --json 2>/dev/null || true
}
sustains() {
  python3 -c 'import json,sys; s=json.loads(sys.stdin.read()); sys.exit(0 if s["failed"]==0 and s["acknowledged"]==s["sent"] and s["latency_ms"]["p99"]<100 else 1)'
}
max_rate() {
  local best=0
  for rate in $RATES; do
    local out; out=$(push "$rate" 8)
    echo "  $1 @ $rate/s: $out" >&2
    if [ -n "$out" ] && echo "$out" | sustains; then best=$rate; else break; fi
  done
  echo "$best"
}

RESULTS=$WORK/results.txt
for run in $(seq 1 "$REPEAT"); do
  echo "run $run of $REPEAT" >&2
  # The single broker.
  start_ingest "127.0.0.1:9092" "$WORK/spool-kafka-$run"
  push 500 2 >/dev/null
  kafka_fixed=$(push "$RATE" "$SECONDS_PER_STEP")
  kafka_max=$(max_rate kafka)
  stop_ingest
  # The three-broker cluster.
  start_ingest "$CLUSTER" "$WORK/spool-cluster-$run"
  push 500 2 >/dev/null
  cluster_fixed=$(push "$RATE" "$SECONDS_PER_STEP")
  cluster_max=$(max_rate cluster)
  stop_ingest
  # The spool path. The warm-up's first push waits kafka.delivery_timeout, then the spool holds
  # records and every later push goes straight to it.
  spool_dir=$WORK/spool-$run
  start_ingest "127.0.0.1:$DEAD_PORT" "$spool_dir"
  push 500 2 >/dev/null
  spool_fixed=$(push "$RATE" "$SECONDS_PER_STEP")
  spool_max=$(max_rate spool)
  spooled=$(metric ingest_spool_records)
  fsyncs=$(metric ingest_spool_fsync_duration_seconds_count)
  stop_ingest
  # The drain: the same spool, Kafka reachable.
  started=$(date +%s.%N)
  start_ingest "127.0.0.1:9092" "$spool_dir"
  deadline=$((SECONDS + 300))
  while [ "$(metric ingest_spool_records)" != "0" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  ended=$(date +%s.%N)
  drained=$(metric ingest_spool_drained_records_total)
  stop_ingest
  echo "$spooled $drained $fsyncs $started $ended $kafka_max $spool_max $cluster_max $kafka_fixed $spool_fixed $cluster_fixed" >>"$RESULTS"
done

python3 - "$RESULTS" "$RATE" <<'PY'
import json, statistics, sys
path, rate = sys.argv[1], int(sys.argv[2])
rows = []
for line in open(path):
    parts = line.split(" ", 8)
    spooled, drained, fsyncs = float(parts[0]), float(parts[1]), float(parts[2])
    started, ended, kafka_max, spool_max = float(parts[3]), float(parts[4]), int(parts[5]), int(parts[6])
    cluster_max = int(parts[7])
    dec = json.JSONDecoder()
    rest = parts[8].strip()
    kafka, end = dec.raw_decode(rest)
    rest = rest[end:].strip()
    spool, end = dec.raw_decode(rest)
    cluster, _ = dec.raw_decode(rest[end:].strip())
    rows.append(dict(kafka_max=kafka_max, spool_max=spool_max, cluster_max=cluster_max,
                     cluster_p50=cluster["latency_ms"]["p50"], cluster_p99=cluster["latency_ms"]["p99"],
                     cluster_failed=cluster["failed"],
                     kafka_p50=kafka["latency_ms"]["p50"], kafka_p99=kafka["latency_ms"]["p99"],
                     spool_p50=spool["latency_ms"]["p50"], spool_p99=spool["latency_ms"]["p99"],
                     kafka_failed=kafka["failed"], spool_failed=spool["failed"],
                     spooled=spooled, drained=drained, fsyncs=fsyncs,
                     records_per_fsync=spooled / max(fsyncs, 1),
                     drain_rate=drained / max(ended - started, 1e-9)))
med = lambda k: statistics.median(r[k] for r in rows)
rng = lambda k: f"{min(r[k] for r in rows):.0f}–{max(r[k] for r in rows):.0f}"
print(f"runs: {len(rows)} (medians, range in brackets)")
print("| measure | single broker (RF 1) | three-broker cluster (RF 3, min ISR 2) | Kafka unreachable: spool |")
print("|---|---|---|---|")
print(f"| highest rate with p99 < 100 ms (pushes/s) | {med('kafka_max'):.0f} ({rng('kafka_max')}) | {med('cluster_max'):.0f} ({rng('cluster_max')}) | {med('spool_max'):.0f} ({rng('spool_max')}) |")
print(f"| ratio to the single broker | 1.00 | {med('cluster_max')/max(med('kafka_max'),1):.2f} | {med('spool_max')/max(med('kafka_max'),1):.2f} |")
print(f"| p50 ack latency at {rate}/s (ms) | {med('kafka_p50'):.2f} | {med('cluster_p50'):.2f} | {med('spool_p50'):.2f} |")
print(f"| p99 ack latency at {rate}/s (ms) | {med('kafka_p99'):.2f} | {med('cluster_p99'):.2f} | {med('spool_p99'):.2f} |")
print(f"| pushes failed at {rate}/s | {med('kafka_failed'):.0f} | {med('cluster_failed'):.0f} | {med('spool_failed'):.0f} |")
print()
print(f"| drain | median (range) |")
print("|---|---|")
print(f"| records spooled per run | {med('spooled'):.0f} ({rng('spooled')}) |")
print(f"| records per fsync (group commit) | {med('records_per_fsync'):.1f} |")
print(f"| drain rate after restart, records/s (includes process start) | {med('drain_rate'):.0f} ({rng('drain_rate')}) |")
print("per run:", json.dumps(rows))
PY
