#!/usr/bin/env bash
# The local cluster topology of scripts/services.sh, checked for real:
#   Kafka  — a topic with replication factor 3 and min.insync.replicas 2; records written with
#            acks=all; the broker leading most of its partitions killed with -9; more records written
#            while it is down (two replicas are enough); the broker started again at once; every
#            partition back to three in-sync replicas; every record there (end offsets add up).
#   Redis  — a key written through the cluster; the primary holding it killed with -9; its replica
#            promoted; the key still readable; the killed node started again, back as a replica.
# Prints what it sees and fails on the first surprise.
#
# Runs on ports of its own with its state in a fresh temporary folder, so the services other people
# use are never touched: brokers 29692-29694 (controllers 29792-29794), Redis Cluster 7120-7125
# (bus 17120-17125). Takes about two minutes; stops everything it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVICES=$ROOT/scripts/services.sh

TEST_STATE=$(mktemp -d "${TMPDIR:-/tmp}/wxkf-cluster-smoke.XXXXXX")
export WXKF_STATE_DIR=$TEST_STATE
export WXKF_CLUSTER_STATE_DIR=$TEST_STATE/cluster
export WXKF_CLUSTER_KAFKA_PORT=${SMOKE_KAFKA_PORT:-29692}
export WXKF_CLUSTER_CONTROLLER_PORT=${SMOKE_CONTROLLER_PORT:-29792}
export WXKF_REDIS_CLUSTER_PORT=${SMOKE_REDIS_PORT:-7120}
KAFKA_LIBS=${WXKF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wxkf}/kafka-${WXKF_KAFKA_VERSION:-4.1.1}/libs
TOPIC=wxkf.smoke
PARTITIONS=6

say() { printf '[cluster-smoke] %s\n' "$*" >&2; }
fail() { printf '[cluster-smoke] FAIL: %s\n' "$*" >&2; exit 1; }
trap '"$SERVICES" cluster-down >/dev/null 2>&1 || true; rm -rf "$TEST_STATE"' EXIT

"$SERVICES" cluster-up
eval "$("$SERVICES" cluster-env)"
BOOTSTRAP=$WXKF_CLUSTER_KAFKA_BOOTSTRAP

tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$WXKF_CLUSTER_STATE_DIR/log4j2-tools.yaml" -cp "$KAFKA_LIBS/*" "$@"
}
describe() { tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --describe --topic "$TOPIC"; }
produce() {
  tool org.apache.kafka.tools.ProducerPerformance --topic "$TOPIC" --num-records "$1" --record-size 200 \
    --throughput 2000 --producer-props bootstrap.servers="$BOOTSTRAP" acks=all enable.idempotence=true 2>&1 | tail -1
}
records() {
  tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
    | awk -F: '{s += $NF} END {print s + 0}'
}
isr_of_three() { describe | grep -c 'Isr: [0-9],[0-9],[0-9]' || true; }

# ------------------------------------------------------------------ Kafka
"$SERVICES" cluster-topic "$TOPIC" "$PARTITIONS"
d=$(describe); printf '%s\n' "$d" | sed 's/^/    /' >&2
printf '%s\n' "$d" | grep -q 'ReplicationFactor: 3' || fail "the topic's replication factor is not 3"
printf '%s\n' "$d" | grep -q 'min.insync.replicas=2' || fail "the topic's min.insync.replicas is not 2"
[ "$(isr_of_three)" = $PARTITIONS ] || fail "not every partition has three in-sync replicas"

say "writing 4000 records (acks=all): $(produce 4000)"
victim=$(describe | awk '/Leader:/ {for (i = 1; i <= NF; i++) if ($i == "Leader:") print $(i + 1)}' | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2}')
say "killing broker $victim (it leads the most partitions) with -9"
"$SERVICES" kafka-kill "$victim"
say "writing 2000 records while it is down: $(produce 2000)"
down_desc=$(describe | grep 'Partition:')
printf '%s\n' "$down_desc" | sed 's/^/    /' >&2
printf '%s\n' "$down_desc" | grep -q "Leader: $victim\b" && fail "broker $victim still leads a partition while down"
started=$SECONDS
"$SERVICES" kafka-start "$victim"
"$SERVICES" cluster-wait-isr 120
say "broker $victim back and every partition in sync after $((SECONDS - started)) s"
d=$(describe | grep 'Partition:'); printf '%s\n' "$d" | sed 's/^/    /' >&2
[ "$(isr_of_three)" = $PARTITIONS ] || fail "not every partition is back to three in-sync replicas"
n=$(records)
say "records in $TOPIC: $n (written: 6000)"
[ "$n" = 6000 ] || fail "expected 6000 records in $TOPIC, found $n"

# ------------------------------------------------------------------ Redis Cluster
port_of_node() { echo $((WXKF_REDIS_CLUSTER_PORT + $1 - 1)); }
redis-cli -c -p "$WXKF_REDIS_CLUSTER_PORT" set smoke:user:42 hello >/dev/null
[ "$(redis-cli -c -p "$WXKF_REDIS_CLUSTER_PORT" get smoke:user:42)" = hello ] || fail "set/get through the cluster"
slot=$(redis-cli -p "$WXKF_REDIS_CLUSTER_PORT" cluster keyslot smoke:user:42)
nodes=$(redis-cli -p "$WXKF_REDIS_CLUSTER_PORT" cluster nodes)
owner=$(printf '%s\n' "$nodes" | awk -v s="$slot" '$3 ~ /master/ {for (i = 9; i <= NF; i++) {split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) {split($2, a, "[:@]"); print $1, a[2]}}}')
owner_id=${owner% *}; owner_port=${owner#* }
replica_port=$(printf '%s\n' "$nodes" | awk -v id="$owner_id" '$4 == id {split($2, a, "[:@]"); print a[2]; exit}')
[ -n "$replica_port" ] || fail "no replica of the primary on $owner_port"
owner_node=$((owner_port - WXKF_REDIS_CLUSTER_PORT + 1))
say "slot $slot of smoke:user:42 is on primary 127.0.0.1:$owner_port (node $owner_node), replica 127.0.0.1:$replica_port; killing the primary with -9"
"$SERVICES" redis-kill "$owner_node"
killed_at=$SECONDS
while :; do
  role=$(redis-cli -p "$replica_port" role 2>/dev/null | head -1)
  state=$(redis-cli -p "$replica_port" cluster info 2>/dev/null | tr -d '\r' | awk -F: '$1 == "cluster_state" {print $2}')
  [ "$role" = master ] && [ "$state" = ok ] && break
  [ $((SECONDS - killed_at)) -lt 60 ] || fail "127.0.0.1:$replica_port not promoted within 60 s (role $role, cluster_state $state)"
  sleep 0.5
done
say "127.0.0.1:$replica_port promoted to primary, cluster_state:ok, $((SECONDS - killed_at)) s after the kill"
[ "$(redis-cli -c -p "$replica_port" get smoke:user:42)" = hello ] || fail "the key is gone after the failover"
"$SERVICES" redis-start "$owner_node"
while :; do
  role=$(redis-cli -p "$owner_port" role 2>/dev/null | head -1)
  link=$(redis-cli -p "$owner_port" info replication 2>/dev/null | tr -d '\r' | awk -F: '$1 == "master_link_status" {print $2}')
  [ "$role" = slave ] && [ "$link" = up ] && break
  [ $((SECONDS - killed_at)) -lt 120 ] || fail "127.0.0.1:$owner_port did not come back as a replica (role $role, link $link)"
  sleep 0.5
done
say "127.0.0.1:$owner_port back as a replica of 127.0.0.1:$(redis-cli -p "$owner_port" role | sed -n 2,3p | tr '\n' ':' | cut -d: -f2)"
redis-cli -p "$WXKF_REDIS_CLUSTER_PORT" cluster nodes | sort -k2 | awk '{print "    " $2, $3, $8, $9}' >&2
"$SERVICES" cluster-status | sed 's/^/    /' >&2
say "PASS"
