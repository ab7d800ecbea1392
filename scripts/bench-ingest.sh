#!/usr/bin/env bash
# The ingest benchmark: the same open-loop load generator (wechat-sim push: signed, AES-encrypted
# JSON pushes with unique MsgIds) against `ingest` (real Redis dedup, real Kafka acks=all) and
# against a bare actix-web handler that answers `success`, on this machine, in one run.
#
# Reports, as medians over --repeat runs:
#   (a) the highest rate each sustains with every push acknowledged and p99 < 100 ms, and the ratio;
#   (b) p50/p99 ack latency at 2,000 pushes/s;
#   (c) ingest CPU time per push and resident memory at that rate, and where that CPU goes: per
#       thread (actix workers, librdkafka's broker thread, the delivery-report thread), CPU time
#       and voluntary context switches (sleeps, each paid again by a wake-up) per push.
#
#   scripts/bench-ingest.sh [--repeat 3] [--step-seconds 10] [--rates "1000 2000 ..."]
#                           [--partitions 12] [--fixed-only]
# --partitions sets the benchmark topic's partition count; --fixed-only skips the rate sweeps and
# measures only the fixed rate (for comparing partition counts).
# Traffic goes to 127.0.0.1 only; every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

REPEAT=3
STEP_SECONDS=10
RATES="1000 2000 3000 4000 5000 6000 8000 10000 12000"
FIXED_RATE=2000
PARTITIONS=12
FIXED_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --partitions) PARTITIONS=$2; shift 2 ;;
    --fixed-only) FIXED_ONLY=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --step-seconds) STEP_SECONDS=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

INGEST_PORT=18080
BARE_PORT=18090
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

scripts/setup.sh
scripts/services.sh up
cargo build --release --locked -p ingest --features sim --bins
SIM=target/release/wechat-sim
TOPIC=wxkf.bench-$(date +%s)
scripts/services.sh topic "$TOPIC" "$PARTITIONS"

# Both services start fresh for every run, so each run's memory figures are its own.
start_services() {
  APP_ENVIRONMENT=local INGEST_CONFIG_DIR=config RUST_LOG=warn \
    INGEST__SERVER__PORT=$INGEST_PORT INGEST__KAFKA__TOPIC=$TOPIC \
    INGEST__REDIS__KEY_PREFIX="wxkf:bench:$(date +%s%N):" \
    INGEST__SPOOL__DIR="$(mktemp -d "$WORK/spool.XXXXXX")" \
    target/release/ingest >>"$WORK/ingest.log" 2>&1 &
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
  push "http://127.0.0.1:$INGEST_PORT/wechat/demo" 500 3 >/dev/null
  push "http://127.0.0.1:$BARE_PORT/wechat/demo" 500 3 >/dev/null
}
stop_services() {
  kill "$INGEST_PID" "$BARE_PID" 2>/dev/null || true
  wait "$INGEST_PID" "$BARE_PID" 2>/dev/null || true
}

# push URL RATE SECONDS -> one JSON summary line
push() {
  $SIM push --url "$1" --rate "$2" --duration "${3}s" --users 10000 --mode safe --format json \
    --mix text=100 --max-in-flight 4096 --retries 0 --json 2>/dev/null || true
}

sustains() { # JSON summary -> exit 0 when all acked and p99 < 100 ms
  python3 -c 'import json,sys; s=json.loads(sys.stdin.read()); sys.exit(0 if s["failed"]==0 and s["acknowledged"]==s["sent"] and s["latency_ms"]["p99"]<100 else 1)'
}

max_rate() { # URL -> highest sustained rate of the sweep
  local best=0
  for rate in $RATES; do
    local out; out=$(push "$1" "$rate" "$STEP_SECONDS")
    echo "  $1 @ $rate/s: $out" >&2
    if [ -n "$out" ] && echo "$out" | sustains; then best=$rate; else break; fi
  done
  echo "$best"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# threads PID -> one line per thread: name;voluntary context switches;user+system ticks
threads() {
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s;%s;%s\n' "$(cat "$t/comm")" \
      "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")" \
      "$(awk '{print $14 + $15}' "$t/stat")"
  done
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

RESULTS=$WORK/results.txt
for run in $(seq 1 "$REPEAT"); do
  echo "run $run of $REPEAT" >&2
  start_services
  # (b) and (c) first, on fresh processes: the fixed rate.
  before=$(cpu_ticks "$INGEST_PID")
  threads "$INGEST_PID" >"$WORK/threads-$run-before"
  fixed=$(push "http://127.0.0.1:$INGEST_PORT/wechat/demo" "$FIXED_RATE" 20)
  threads "$INGEST_PID" >"$WORK/threads-$run-after"
  after=$(cpu_ticks "$INGEST_PID")
  rss=$(rss_kib "$INGEST_PID")
  bare_before=$(cpu_ticks "$BARE_PID")
  threads "$BARE_PID" >"$WORK/bare-threads-$run-before"
  bare_fixed=$(push "http://127.0.0.1:$BARE_PORT/wechat/demo" "$FIXED_RATE" 20)
  threads "$BARE_PID" >"$WORK/bare-threads-$run-after"
  bare_after=$(cpu_ticks "$BARE_PID")
  bare_rss=$(rss_kib "$BARE_PID")
  # (a) then the sweeps, which end in overload; the peak RSS they leave is reported apart.
  ingest_max=0 bare_max=0
  if [ "$FIXED_ONLY" = 0 ]; then
    ingest_max=$(max_rate "http://127.0.0.1:$INGEST_PORT/wechat/demo")
    bare_max=$(max_rate "http://127.0.0.1:$BARE_PORT/wechat/demo")
  fi
  peak=$(peak_rss_kib "$INGEST_PID")
  stop_services
  echo "$ingest_max $bare_max $((after - before)) $rss $((bare_after - bare_before)) $bare_rss $peak $fixed $bare_fixed" >>"$RESULTS"
done

python3 - "$RESULTS" "$(getconf CLK_TCK)" "$FIXED_RATE" "$WORK" "$PARTITIONS" "$FIXED_ONLY" <<'PY'
import collections, json, re, statistics, sys
path, clk, fixed_rate, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
partitions, fixed_only = int(sys.argv[5]), sys.argv[6] == "1"

def group(name):
    """Thread names as the kernel truncates them, grouped by role."""
    for pattern, role in ((r"^actix-rt", "actix workers"), (r"^rdk:broker", "librdkafka broker threads"),
                          (r"^producer poll", "delivery-report thread"), (r"^rdk:", "other librdkafka threads")):
        if re.match(pattern, name):
            return role
    return "other threads"

def threads(run, service="threads"):
    """Per role: (voluntary context switches, CPU ticks) over the fixed-rate run."""
    def read(which):
        seen = collections.Counter()
        out = {}
        for line in open(f"{work}/{service}-{run}-{which}"):
            name, switches, ticks = line.rstrip("\n").rsplit(";", 2)
            seen[name] += 1
            out[(name, seen[name])] = (int(switches or 0), int(ticks or 0))
        return out
    before, after = read("before"), read("after")
    totals = collections.defaultdict(lambda: [0, 0])
    for key, (switches, ticks) in after.items():
        s0, t0 = before.get(key, (0, 0))
        totals[group(key[0])][0] += switches - s0
        totals[group(key[0])][1] += ticks - t0
    return totals

rows = []
roles = collections.defaultdict(list)
for run, line in enumerate(open(path), start=1):
    parts = line.split(" ", 7)
    ingest_max, bare_max, ticks, rss, bare_ticks, bare_rss, peak = map(int, parts[:7])
    dec = json.JSONDecoder()
    rest = parts[7].strip()
    fixed, end = dec.raw_decode(rest)
    bare_fixed, _ = dec.raw_decode(rest[end:].strip())
    rows.append(dict(ingest_max=ingest_max, bare_max=bare_max,
                     cpu_us=ticks / clk * 1e6 / max(fixed["acknowledged"], 1), rss_mib=rss / 1024,
                     bare_cpu_us=bare_ticks / clk * 1e6 / max(bare_fixed["acknowledged"], 1),
                     bare_rss_mib=bare_rss / 1024, peak_rss_mib=peak / 1024,
                     p50=fixed["latency_ms"]["p50"], p99=fixed["latency_ms"]["p99"],
                     bare_p50=bare_fixed["latency_ms"]["p50"], bare_p99=bare_fixed["latency_ms"]["p99"],
                     acked=fixed["acknowledged"], sent=fixed["sent"]))
    acked = max(fixed["acknowledged"], 1)
    for role, (switches, ticks) in threads(run).items():
        roles[role].append((switches / acked, ticks / clk * 1e6 / acked))
    bare_acked = max(bare_fixed["acknowledged"], 1)
    bare = threads(run, "bare-threads")
    roles["bare handler, all threads (for comparison)"].append(
        (sum(v[0] for v in bare.values()) / bare_acked,
         sum(v[1] for v in bare.values()) / clk * 1e6 / bare_acked))
med = lambda k: statistics.median(r[k] for r in rows)
print(f"runs: {len(rows)} (medians below), topic partitions: {partitions}")
print(f"| measure | ingest | bare handler | ratio |")
print(f"|---|---|---|---|")
if not fixed_only:
    print(f"| highest rate with p99 < 100 ms (pushes/s) | {med('ingest_max'):.0f} | {med('bare_max'):.0f} | {med('ingest_max')/max(med('bare_max'),1):.2f} |")
print(f"| p50 ack latency at {fixed_rate}/s (ms) | {med('p50'):.2f} | {med('bare_p50'):.2f} | |")
print(f"| p99 ack latency at {fixed_rate}/s (ms) | {med('p99'):.2f} | {med('bare_p99'):.2f} | |")
print(f"| CPU time per push at {fixed_rate}/s (µs) | {med('cpu_us'):.1f} | {med('bare_cpu_us'):.1f} | {med('cpu_us')/max(med('bare_cpu_us'),1e-9):.2f} |")
print(f"| RSS after {fixed_rate}/s for 20 s (MiB) | {med('rss_mib'):.1f} | {med('bare_rss_mib'):.1f} | |")
if not fixed_only:
    print(f"| peak RSS, after the sweep into overload (MiB) | {med('peak_rss_mib'):.1f} | | |")
print()
print(f"ingest threads at {fixed_rate}/s, per push:")
print("| threads | voluntary context switches | CPU time (µs) |")
print("|---|---|---|")
for role, values in sorted(roles.items(), key=lambda kv: -statistics.median(v[1] for v in kv[1])):
    print(f"| {role} | {statistics.median(v[0] for v in values):.2f} | {statistics.median(v[1] for v in values):.0f} |")
print("per run:", json.dumps(rows))
PY
