#!/usr/bin/env bash
# The ingest benchmark: `ingest` (real Redis dedup, real Kafka acks=all) against a bare actix-web
# handler that answers `success`, loaded by the same generator, on this machine, in one run.
#
# The generator is `wechat-sim load` (ingest/src/bin/wechat-sim/load.rs): safe-mode JSON pushes,
# signed and AES-encrypted as WeChat does, unique MsgIds, all sealed before the clock starts and
# sent over keep-alive connections, so that at saturation the generator only writes and reads
# sockets. It measures its own CPU time and, over exactly the same span, that of the processes it
# watches (ingest, Kafka, Redis, the bare handler), from /proc/<pid>/stat.
#
# Each run starts ingest and the bare handler afresh and measures, in this order:
#   1. ingest at a fixed open-loop rate (--fixed-rate, default 2,000/s; latency counted from each
#      push's due time, so queueing is not hidden): p50/p99, CPU per push of ingest, Kafka, Redis
#      and the generator, ingest's RSS, and ingest's CPU per thread;
#   2. the bare handler at the same rate: latency, CPU per push;
#   3. the bare handler at saturation (closed loop: --connections connections, each sending its
#      next push as soon as the last is answered, for --seconds): its rate, and the generator's CPU;
#   4. ingest at saturation, the same way: its rate; CPU per push of ingest, Kafka, Redis, generator.
# With Debian's `wrk` (installed here when missing and possible), each run also loads the bare
# handler with it (same connections, same time, a fixed POST body), as a reference: what a
# compiled generator gets from the same handler at the same minute. Then prints medians over
# --repeat runs with their ranges, and each run's load average.
#
#   scripts/bench-ingest.sh [--repeat 3] [--seconds 5] [--fixed-seconds 20] [--fixed-rate 2000]
#                           [--connections 128] [--partitions 12] [--fixed-only] [--baseline REV]
# --partitions sets the benchmark topic's partition count; --fixed-only skips the saturation runs.
# --baseline REV builds ingest as it was at git revision REV (in a worktree under the target
# directory) and measures it in every run too, beside the current build, against the same Kafka,
# Redis and generator, the two in alternating order; a last table sets them side by side.
# Services: scripts/services.sh with the caller's WXKF_* variables (their ports reach ingest);
# ingest listens on $BENCH_INGEST_PORT (18080), the bare handler on $BENCH_BARE_PORT (18090).
# Traffic goes to 127.0.0.1 only; every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

REPEAT=3
SECONDS_SAT=5
FIXED_SECONDS=20
FIXED_RATE=2000
CONNECTIONS=128
PARTITIONS=12
FIXED_ONLY=0
BASELINE=
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --seconds) SECONDS_SAT=$2; shift 2 ;;
    --fixed-seconds) FIXED_SECONDS=$2; shift 2 ;;
    --fixed-rate) FIXED_RATE=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --partitions) PARTITIONS=$2; shift 2 ;;
    --fixed-only) FIXED_ONLY=1; shift ;;
    --baseline) BASELINE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

INGEST_PORT=${BENCH_INGEST_PORT:-18080}
BARE_PORT=${BENCH_BARE_PORT:-18090}
KAFKA_PORT=${WXKF_KAFKA_PORT:-9092}
REDIS_PORT=${WXKF_REDIS_PORT:-6379}
STATE_DIR=${WXKF_STATE_DIR:-.local}
# Pushes sealed ahead for one saturation run (about 0.7 KiB each): enough for 200,000/s against
# the bare handler and 60,000/s against ingest over the default 5 s; a run that uses them up
# early ends early, and its rate is still measured over the time it ran.
BARE_COUNT=${BENCH_BARE_COUNT:-$((200000 * SECONDS_SAT))}
INGEST_COUNT=${BENCH_INGEST_COUNT:-$((60000 * SECONDS_SAT))}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

scripts/setup.sh
if ! command -v wrk >/dev/null; then
  # The reference generator (Debian's package); without it the runs leave the reference out.
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk \
      || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             $sudo apt-get install -y -qq --no-install-recommends wrk; }; } >/dev/null 2>&1 \
    || echo "[bench] could not install wrk; the runs leave its reference out" >&2
fi
scripts/services.sh up
cargo build --release --locked -p ingest --features sim --bins
BIN=${CARGO_TARGET_DIR:-target}/release
SIM=$BIN/wechat-sim
INGEST_BIN=$BIN/ingest
BASE_BIN=
if [ -n "$BASELINE" ]; then
  # The baseline's own worktree and target directory (seeded from this one, so only what changed
  # since REV is compiled again).
  BASE_TREE=${CARGO_TARGET_DIR:-target}/bench-baseline/tree
  BASE_TARGET=${CARGO_TARGET_DIR:-target}/bench-baseline/target
  git worktree remove --force "$BASE_TREE" 2>/dev/null || rm -rf "$BASE_TREE"
  git worktree add --detach "$BASE_TREE" "$BASELINE" >/dev/null
  if [ ! -d "$BASE_TARGET/release" ]; then
    mkdir -p "$BASE_TARGET" && cp -a "$BIN" "$BASE_TARGET/release"
  fi
  (cd "$BASE_TREE" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release --locked -p ingest --bin ingest)
  BASE_BIN=$BASE_TARGET/release/ingest-baseline
  cp "$BASE_TARGET/release/ingest" "$BASE_BIN"
  git worktree remove --force "$BASE_TREE"
fi
TOPIC=wxkf.bench-$(date +%s)
scripts/services.sh topic "$TOPIC" "$PARTITIONS"
KAFKA_PID=$(cat "$STATE_DIR/run/kafka.pid")
REDIS_PID=$(cat "$STATE_DIR/run/redis.pid")

# Both services start fresh for every run, so each run's memory figures are its own.
start_services() {
  APP_ENVIRONMENT=local INGEST_CONFIG_DIR=config RUST_LOG=warn \
    INGEST__SERVER__PORT=$INGEST_PORT INGEST__KAFKA__TOPIC=$TOPIC \
    INGEST__KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT INGEST__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/ \
    INGEST__REDIS__KEY_PREFIX="wxkf:bench:$(date +%s%N):" \
    INGEST__SPOOL__DIR="$(mktemp -d "$WORK/spool.XXXXXX")" \
    "$INGEST_BIN" >>"$WORK/ingest.log" 2>&1 &
  INGEST_PID=$!; PIDS+=("$INGEST_PID")
  $SIM bare --listen 127.0.0.1:$BARE_PORT >>"$WORK/bare.log" 2>&1 &
  BARE_PID=$!; PIDS+=("$BARE_PID")
  local port
  for port in $INGEST_PORT $BARE_PORT; do
    for _ in $(seq 1 100); do
      curl -s -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
      curl -fs -o /dev/null -X POST "http://127.0.0.1:$port/wechat/demo" 2>/dev/null && break
      sleep 0.1
    done
  done
  # Warm up both (connections, producer metadata, caches).
  load "$INGEST_PORT" --rate 1000 --duration 3s --connections 32 >/dev/null
  load "$BARE_PORT" --rate 1000 --duration 3s --connections 32 >/dev/null
}
stop_services() {
  kill "$INGEST_PID" "$BARE_PID" 2>/dev/null || true
  wait "$INGEST_PID" "$BARE_PID" 2>/dev/null || true
}

# load PORT ARGS... -> one JSON report line (empty if the generator failed; its errors go to the log)
load() {
  local port=$1; shift
  $SIM load --url "http://127.0.0.1:$port/wechat/demo" --users 10000 --mode safe --format json \
    --mix text=100 --json "$@" 2>>"$WORK/load.log" || true
}
watch_ingest() { echo --watch "ingest=$INGEST_PID" --watch "kafka=$KAFKA_PID" --watch "redis=$REDIS_PID"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# The baseline build, the same two ingest measurements (the bare handler is not measured again).
measure_baseline() {
  INGEST_BIN=$BASE_BIN
  start_services
  # shellcheck disable=SC2046
  base_fixed=$(load "$INGEST_PORT" --rate "$FIXED_RATE" --duration "${FIXED_SECONDS}s" --connections 64 $(watch_ingest))
  if [ "$FIXED_ONLY" = 0 ]; then
    # shellcheck disable=SC2046
    base_sat=$(load "$INGEST_PORT" --saturate --duration "${SECONDS_SAT}s" --count "$INGEST_COUNT" \
      --connections "$CONNECTIONS" $(watch_ingest))
  fi
  stop_services
}

RESULTS=$WORK/results.jsonl
for run in $(seq 1 "$REPEAT"); do
  echo "run $run of $REPEAT ($(uptime | sed 's/.*load average/load average/'))" >&2
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  base_fixed='null' base_sat='null'
  # The baseline first in odd runs, second in even ones, so neither always meets a warmer machine.
  if [ -n "$BASE_BIN" ] && [ $((run % 2)) = 1 ]; then measure_baseline; fi
  INGEST_BIN=$BIN/ingest
  start_services
  # shellcheck disable=SC2046
  fixed=$(load "$INGEST_PORT" --rate "$FIXED_RATE" --duration "${FIXED_SECONDS}s" --connections 64 $(watch_ingest))
  rss=$(rss_kib "$INGEST_PID")
  bare_fixed=$(load "$BARE_PORT" --rate "$FIXED_RATE" --duration "${FIXED_SECONDS}s" --connections 64 \
    --watch "bare=$BARE_PID")
  bare_sat='null' sat='null' wrk_rate='null'
  if [ "$FIXED_ONLY" = 0 ]; then
    bare_sat=$(load "$BARE_PORT" --saturate --duration "${SECONDS_SAT}s" --count "$BARE_COUNT" \
      --connections "$CONNECTIONS" --watch "bare=$BARE_PID")
    if command -v wrk >/dev/null; then
      printf 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n' >"$WORK/post.lua"
      wrk_rate=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_SAT}s" -s "$WORK/post.lua" \
        "http://127.0.0.1:$BARE_PORT/wechat/demo" 2>/dev/null | awk '/^Requests\/sec/ {print $2}')
    fi
    # shellcheck disable=SC2046
    sat=$(load "$INGEST_PORT" --saturate --duration "${SECONDS_SAT}s" --count "$INGEST_COUNT" \
      --connections "$CONNECTIONS" $(watch_ingest))
  fi
  stop_services
  if [ -n "$BASE_BIN" ] && [ $((run % 2)) = 0 ]; then measure_baseline; fi
  load_after=$(cut -d' ' -f1 /proc/loadavg)
  echo "{\"run\": $run, \"load_before\": $load_before, \"load_after\": $load_after, \"rss_kib\": $rss," \
    "\"fixed\": ${fixed:-null}, \"bare_fixed\": ${bare_fixed:-null}," \
    "\"bare_sat\": ${bare_sat:-null}, \"sat\": ${sat:-null}, \"wrk_bare\": ${wrk_rate:-null}," \
    "\"base_fixed\": ${base_fixed:-null}, \"base_sat\": ${base_sat:-null}}" >>"$RESULTS"
  echo "  $(tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("saturation: bare", r["bare_sat"] and round(r["bare_sat"]["achieved_rate"]), "/s, ingest", r["sat"] and round(r["sat"]["achieved_rate"]), "/s")')" >&2
done

BENCH_BASELINE=$BASELINE python3 - "$RESULTS" "$FIXED_RATE" "$PARTITIONS" "$CONNECTIONS" "$SECONDS_SAT" <<'PY'
import collections, json, os, re, statistics, sys
path, fixed_rate, partitions, connections, seconds = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
runs = [json.loads(line) for line in open(path)]

def get(run, *keys):
    v = run
    for k in keys:
        if v is None:
            return None
        v = v.get(k) if isinstance(v, dict) else None
    return v

def stat(values, fmt="{:,.0f}"):
    """median (min–max) of the values that exist."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = fmt.format(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return med
    return f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"

def col(*keys, fmt="{:,.0f}", scale=1.0):
    return stat([None if get(r, *keys) is None else get(r, *keys) * scale for r in runs], fmt)

def ratio(r):
    i, b = get(r, "sat", "achieved_rate"), get(r, "bare_sat", "achieved_rate")
    return i / b if i and b else None

print(f"runs: {len(runs)}; medians (range); topic partitions: {partitions}; "
      f"saturation: {connections} connections, {seconds} s")
print("load average (1 min) before / after each run: "
      + ", ".join(f"{r['load_before']:.1f} / {r['load_after']:.1f}" for r in runs))
print()
if get(runs[0], "sat") is not None:
    print("| at saturation (closed loop) | ingest | bare handler |")
    print("|---|---|---|")
    print(f"| pushes/s | {col('sat', 'achieved_rate')} | {col('bare_sat', 'achieved_rate')} |")
    print(f"| ratio ingest / bare | {stat([ratio(r) for r in runs], '{:.3f}')} | |")
    print(f"| failed pushes (of those sent) | {col('sat', 'failed')} of {col('sat', 'sent')} | {col('bare_sat', 'failed')} of {col('bare_sat', 'sent')} |")
    print(f"| p50 / p99 latency (ms) | {col('sat', 'latency_ms', 'p50', fmt='{:.1f}')} / {col('sat', 'latency_ms', 'p99', fmt='{:.1f}')} | {col('bare_sat', 'latency_ms', 'p50', fmt='{:.2f}')} / {col('bare_sat', 'latency_ms', 'p99', fmt='{:.2f}')} |")
    print(f"| CPU per push, the service (µs) | {col('sat', 'watched', 'ingest', 'us_per_push', fmt='{:.1f}')} | {col('bare_sat', 'watched', 'bare', 'us_per_push', fmt='{:.1f}')} |")
    print(f"| CPU per push, Kafka (µs) | {col('sat', 'watched', 'kafka', 'us_per_push', fmt='{:.1f}')} | |")
    print(f"| CPU per push, Redis (µs) | {col('sat', 'watched', 'redis', 'us_per_push', fmt='{:.1f}')} | |")
    print(f"| CPU per push, the generator (µs) | {col('sat', 'generator', 'us_per_push', fmt='{:.1f}')} | {col('bare_sat', 'generator', 'us_per_push', fmt='{:.1f}')} |")
    print(f"| cores busy: service / Kafka / Redis / generator | {col('sat', 'watched', 'ingest', 'cores', fmt='{:.2f}')} / {col('sat', 'watched', 'kafka', 'cores', fmt='{:.2f}')} / {col('sat', 'watched', 'redis', 'cores', fmt='{:.2f}')} / {col('sat', 'generator', 'cores', fmt='{:.2f}')} | {col('bare_sat', 'watched', 'bare', 'cores', fmt='{:.2f}')} / – / – / {col('bare_sat', 'generator', 'cores', fmt='{:.2f}')} |")
    if any(r.get("wrk_bare") for r in runs):
        print(f"| reference: wrk against the bare handler (2 threads, same connections and time; requests/s) | | {stat([r.get('wrk_bare') for r in runs])} |")
    bare = [get(r, "bare_sat", "achieved_rate") for r in runs if get(r, "bare_sat", "achieved_rate")]
    if bare and statistics.median(bare) < 100_000:
        wrk = [r["wrk_bare"] for r in runs if r.get("wrk_bare")]
        print()
        print(f"NOTE: the bare handler saturated at {statistics.median(bare):,.0f}/s, below 100,000/s: this "
              "figure is the ceiling of this machine as it was loaded (the generator, the handler and "
              "everything else sharing its cores), not the handler's own, and the ratio compares "
              "ingest with that.", end=" ")
        if wrk and statistics.median(bare) >= 0.9 * statistics.median(wrk):
            print(f"wrk got about as much from the same handler in the same runs "
                  f"({statistics.median(wrk):,.0f}/s, within 10 %): the shared cores, not this "
                  "generator, were the limit.")
        elif wrk:
            print(f"wrk got more from the same handler in the same runs ({statistics.median(wrk):,.0f}/s): "
                  "the generator was the limit.")
        else:
            print("(wrk is not installed, so the generator cannot be ruled out as the limit.)")
    print()
print(f"| at {fixed_rate:,}/s (open loop, {len(runs)} × fixed run) | ingest | bare handler |")
print("|---|---|---|")
print(f"| p50 latency (ms) | {col('fixed', 'latency_ms', 'p50', fmt='{:.2f}')} | {col('bare_fixed', 'latency_ms', 'p50', fmt='{:.2f}')} |")
print(f"| p99 latency (ms) | {col('fixed', 'latency_ms', 'p99', fmt='{:.2f}')} | {col('bare_fixed', 'latency_ms', 'p99', fmt='{:.2f}')} |")
print(f"| pushes acknowledged (of sent) | {col('fixed', 'acknowledged')} of {col('fixed', 'sent')} | {col('bare_fixed', 'acknowledged')} of {col('bare_fixed', 'sent')} |")
print(f"| CPU per push, the service (µs) | {col('fixed', 'watched', 'ingest', 'us_per_push', fmt='{:.1f}')} | {col('bare_fixed', 'watched', 'bare', 'us_per_push', fmt='{:.1f}')} |")
print(f"| CPU per push, Kafka (µs) | {col('fixed', 'watched', 'kafka', 'us_per_push', fmt='{:.1f}')} | |")
print(f"| CPU per push, Redis (µs) | {col('fixed', 'watched', 'redis', 'us_per_push', fmt='{:.1f}')} | |")
print(f"| CPU per push, the generator (µs) | {col('fixed', 'generator', 'us_per_push', fmt='{:.1f}')} | {col('bare_fixed', 'generator', 'us_per_push', fmt='{:.1f}')} |")
print(f"| ingest RSS after the fixed run (MiB) | {stat([r['rss_kib'] / 1024 for r in runs], '{:.1f}')} | |")
print()

def role(name):
    """Thread names as the kernel truncates them, grouped by role."""
    for pattern, role in ((r"^actix-rt", "actix workers"), (r"^rdk:broker", "librdkafka broker threads"),
                          (r"^producer poll", "delivery-report thread"), (r"^rdk:", "other librdkafka threads")):
        if re.match(pattern, name):
            return role
    return "other threads"

roles = collections.defaultdict(list)
for r in runs:
    ingest = get(r, "fixed", "watched", "ingest")
    if not ingest:
        continue
    acked = max(r["fixed"]["acknowledged"], 1)
    totals = collections.defaultdict(lambda: [0, 0.0])
    for name, use in ingest["threads"].items():
        totals[role(name)][0] += use["voluntary_switches"]
        totals[role(name)][1] += use["cpu_s"]
    for k, (switches, cpu) in totals.items():
        roles[k].append((switches / acked, cpu * 1e6 / acked))
print(f"ingest threads at {fixed_rate:,}/s, per push:")
print("| threads | voluntary context switches | CPU time (µs) |")
print("|---|---|---|")
for k, values in sorted(roles.items(), key=lambda kv: -statistics.median(v[1] for v in kv[1])):
    if not any(v[0] or v[1] for v in values):
        continue
    print(f"| {k} | {stat([v[0] for v in values], '{:.2f}')} | {stat([v[1] for v in values], '{:.0f}')} |")
print()
if any(r.get("base_fixed") for r in runs):
    def ratio_of(*keys):
        values = []
        for r in runs:
            b, c = get(r, "base_" + keys[0], *keys[1:]), get(r, keys[0], *keys[1:])
            values.append(c / b if b and c else None)
        return stat(values, "{:.2f}")
    print(f"baseline ({os.environ.get('BENCH_BASELINE', 'baseline')}) and this build, in the same runs:")
    print("| | baseline | this build | this / baseline (per run) |")
    print("|---|---|---|---|")
    rows = [
        ("pushes/s at saturation", ("sat", "achieved_rate"), "{:,.0f}"),
        ("ingest CPU per push at saturation (µs)", ("sat", "watched", "ingest", "us_per_push"), "{:.1f}"),
        ("Kafka CPU per push at saturation (µs)", ("sat", "watched", "kafka", "us_per_push"), "{:.1f}"),
        ("Redis CPU per push at saturation (µs)", ("sat", "watched", "redis", "us_per_push"), "{:.1f}"),
        (f"ingest CPU per push at {fixed_rate:,}/s (µs)", ("fixed", "watched", "ingest", "us_per_push"), "{:.1f}"),
        (f"Kafka CPU per push at {fixed_rate:,}/s (µs)", ("fixed", "watched", "kafka", "us_per_push"), "{:.1f}"),
        (f"Redis CPU per push at {fixed_rate:,}/s (µs)", ("fixed", "watched", "redis", "us_per_push"), "{:.1f}"),
        (f"p50 at {fixed_rate:,}/s (ms)", ("fixed", "latency_ms", "p50"), "{:.2f}"),
        (f"p99 at {fixed_rate:,}/s (ms)", ("fixed", "latency_ms", "p99"), "{:.2f}"),
    ]
    for label, keys, fmt in rows:
        if get(runs[0], keys[0]) is None:
            continue
        print(f"| {label} | {col('base_' + keys[0], *keys[1:], fmt=fmt)} | {col(*keys, fmt=fmt)} | {ratio_of(*keys)} |")
    print()
print("per run:", json.dumps([{
    "run": r["run"], "load": [r["load_before"], r["load_after"]],
    "bare_sat": get(r, "bare_sat", "achieved_rate"), "wrk_bare": r.get("wrk_bare"), "ingest_sat": get(r, "sat", "achieved_rate"),
    "p99_fixed": get(r, "fixed", "latency_ms", "p99"),
    "cpu_fixed_us": {k: get(r, "fixed", "watched", k, "us_per_push") for k in ("ingest", "kafka", "redis")},
    "cpu_sat_us": {k: get(r, "sat", "watched", k, "us_per_push") for k in ("ingest", "kafka", "redis")},
} for r in runs]))
PY
