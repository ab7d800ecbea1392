#!/usr/bin/env bash
# Starts and stops the real services the pipeline needs on this machine, without Docker, all on
# 127.0.0.1 only. Two topologies:
#   - single (the default, the quick path): one Apache Kafka KRaft node (broker + controller) and
#     one Debian redis-server;
#   - cluster (the production shape, for failure tests): three Kafka nodes, each broker + controller,
#     so the controller quorum has three voters, with cluster defaults for replication factor 3 and
#     min.insync.replicas 2; and a Redis Cluster of six nodes, three primaries with one replica each.
# Kafka runs from the official jars, resolved with Maven into a cache folder outside the repository.
#
#   scripts/services.sh up | down | status            the single broker and the single Redis
#   scripts/services.sh cluster-up | cluster-down | cluster-status
#                                                     the Kafka cluster and the Redis Cluster
#   scripts/services.sh kafka-cluster-up | kafka-cluster-down | redis-cluster-up | redis-cluster-down
#                                                     one of the two clusters only
#   scripts/services.sh cluster-env                   prints the bootstrap list and the Redis node list
#                                                     as shell assignments (eval it)
#   scripts/services.sh cluster-topic NAME PARTITIONS creates a topic on the cluster (RF 3, min ISR 2)
#   scripts/services.sh cluster-clean                 deletes the cluster's state (only when stopped)
#   scripts/services.sh topic NAME PARTITIONS         creates a topic on the single broker (RF 1)
#   scripts/services.sh secure-kafka-up | secure-kafka-down | secure-kafka-env
#                                                     a separate broker with SASL/SCRAM, TLS and
#                                                     ACLs, for the tests of Kafka credentials
# For failure tests (without N: the single service; with N: that node of the cluster):
#   scripts/services.sh kafka-start [N] | kafka-stop [N] | kafka-kill [N]     N = 1..3
#   scripts/services.sh redis-start [N] | redis-stop [N] | redis-kill [N]     N = 1..6
# `stop` shuts down cleanly and waits until the process is gone; `kill` sends SIGKILL and returns at
# once, as a crash would. `start` right after a `kill` waits (up to $WXKF_STOP_WAIT seconds) until the
# killed process has finished exiting and its ports are free, then starts a new one; a process that
# really runs is left alone ("already running").
#
# Ports (all on 127.0.0.1; every one can be moved with the variable beside it):
#   single Kafka        9092, controller 9093                WXKF_KAFKA_PORT, WXKF_KAFKA_CONTROLLER_PORT
#   single Redis        6379                                 WXKF_REDIS_PORT
#   Kafka cluster       node N: 29091+N (29092..29094),      WXKF_CLUSTER_KAFKA_PORT (node 1's; N adds N-1)
#                       controller 29191+N (29192..29194)    WXKF_CLUSTER_CONTROLLER_PORT (node 1's)
#   Redis Cluster       node N: 6999+N (7000..7005),         WXKF_REDIS_CLUSTER_PORT (node 1's)
#                       cluster bus port + 10000 (17000..17005)
#   secured Kafka       SASL_PLAINTEXT 39192, controller 39193, WXKF_SECURE_KAFKA_PORT, WXKF_SECURE_KAFKA_CONTROLLER_PORT,
#                       SASL_SSL 39194                       WXKF_SECURE_KAFKA_TLS_PORT
# Other settings:
#   WXKF_STATE_DIR                state of the single services (default .local/ in the repository)
#   WXKF_CLUSTER_STATE_DIR        state of the clusters, one folder per node with its data, config,
#                                 log and pid file (default $WXKF_STATE_DIR/cluster)
#   WXKF_CLUSTER_KAFKA_HEAP       maximum heap of each cluster node (default 512m)
#   WXKF_REDIS_CLUSTER_NODE_TIMEOUT_MS  Redis cluster-node-timeout: how long a silent primary takes to
#                                 be failed over (default 5000)
#   WXKF_SECURE_STATE_DIR         state of the secured Kafka (default $WXKF_STATE_DIR/secure-kafka),
#                                 deleted and made anew at each secure-kafka-up
#   WXKF_STOP_WAIT                seconds a stop or a start waits for a process to be gone (default 30)
#   WXKF_CACHE_DIR                where the Kafka jars are cached (default ~/.cache/wxkf)
#   WXKF_KAFKA_VERSION            the Kafka version
#
# Idempotent: a second `up` / `cluster-up` finds what runs. `down` and `cluster-down` stop only what
# this script started (by pid file) and keep the data; `cluster-clean` deletes it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=${WXKF_KAFKA_VERSION:-4.1.1}
KAFKA_PORT=${WXKF_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${WXKF_KAFKA_CONTROLLER_PORT:-9093}
REDIS_PORT=${WXKF_REDIS_PORT:-6379}
STATE_DIR=${WXKF_STATE_DIR:-$ROOT/.local}
CACHE_DIR=${WXKF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wxkf}
KAFKA_LIBS=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run
STOP_WAIT=${WXKF_STOP_WAIT:-30}
CLUSTER_DIR=${WXKF_CLUSTER_STATE_DIR:-$STATE_DIR/cluster}
CLUSTER_KAFKA_PORT=${WXKF_CLUSTER_KAFKA_PORT:-29092}
CLUSTER_CONTROLLER_PORT=${WXKF_CLUSTER_CONTROLLER_PORT:-29192}
CLUSTER_KAFKA_HEAP=${WXKF_CLUSTER_KAFKA_HEAP:-512m}
REDIS_CLUSTER_PORT=${WXKF_REDIS_CLUSTER_PORT:-7000}
REDIS_CLUSTER_NODE_TIMEOUT=${WXKF_REDIS_CLUSTER_NODE_TIMEOUT_MS:-5000}
SECURE_DIR=${WXKF_SECURE_STATE_DIR:-$STATE_DIR/secure-kafka}
SECURE_KAFKA_PORT=${WXKF_SECURE_KAFKA_PORT:-39192}
SECURE_KAFKA_CONTROLLER_PORT=${WXKF_SECURE_KAFKA_CONTROLLER_PORT:-39193}
SECURE_KAFKA_TLS_PORT=${WXKF_SECURE_KAFKA_TLS_PORT:-39194}
# Test-only credentials of a broker that listens on 127.0.0.1 alone.
SECURE_KAFKA_ADMIN_PASSWORD=${WXKF_SECURE_KAFKA_ADMIN_PASSWORD:-admin-test-secret}
SECURE_KAFKA_INGEST_PASSWORD=${WXKF_SECURE_KAFKA_INGEST_PASSWORD:-ingest-test-secret}
SECURE_KAFKA_CONSUMER_PASSWORD=${WXKF_SECURE_KAFKA_CONSUMER_PASSWORD:-consumer-test-secret}
SECURE_KAFKA_OUTSIDER_PASSWORD=${WXKF_SECURE_KAFKA_OUTSIDER_PASSWORD:-outsider-test-secret}
KAFKA_NODES=3
REDIS_NODES=6
# The tools' logging configuration (errors only, to stderr); the cluster commands use their own copy.
TOOLS_LOG4J=$RUN_DIR/log4j2-tools.yaml

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- processes
# `kill -0` is not enough to tell whether a service runs: a process killed with SIGKILL answers it
# while its threads are still being torn down (a JVM with a large heap takes a while) and, once
# dead, as long as it is an unreaped zombie, which an init that reaps lazily keeps for seconds.

# proc_state PID: prints `running`, `exiting` (killed, still tearing down: it may hold its ports) or
# `gone` (no such process, or a zombie with no thread left, which holds nothing).
proc_state() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo gone; return; }
  # The fields after the command name, which is in parentheses and may contain anything.
  local -a f; read -r -a f <<<"${stat##*) }"
  case ${f[0]} in
    Z|X)
      local threads; threads=$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
      if [ "$threads" -le 1 ]; then echo gone; else echo exiting; fi
      return ;;
  esac
  # flags (field 9) has PF_EXITING (0x4) once the process is exiting.
  if (( ${f[6]} & 4 )); then echo exiting; return; fi
  # A SIGKILL sent but not acted upon yet (bit 9 of the pending signal masks).
  local mask
  for mask in $(awk '/^(SigPnd|ShdPnd):/ {print $2}' "/proc/$1/status" 2>/dev/null); do
    if (( 16#$mask & 16#100 )); then echo exiting; return; fi
  done
  echo running
}

# owned PID MARKER: the command line of PID contains the word MARKER (so a pid reused by another
# program after a crash is not mistaken for the service).
owned() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2 "; }

# pid_alive PIDFILE: the pid file names a running process.
pid_alive() { [ -f "$1" ] && [ "$(proc_state "$(cat "$1")")" = running ]; }

wait_gone() {
  local deadline=$((SECONDS + STOP_WAIT))
  while [ "$(proc_state "$1")" != gone ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

port_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# prepare_start NAME PIDFILE MARKER PORT...: before starting NAME. Returns 1 when the process of
# PIDFILE runs (nothing to start). Otherwise waits until the previous process is gone and its
# PORTs are free, and fails with a clear error when that takes more than $STOP_WAIT seconds.
prepare_start() {
  local name=$1 pidfile=$2 marker=$3; shift 3
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  case $(proc_state "$pid") in
    running)
      if owned "$pid" "$marker"; then log "$name already running (pid $pid)"; return 1; fi
      log "$name: the pid file names pid $pid, now another program (the service died); ignoring it" ;;
    exiting)
      log "$name: the previous process (pid $pid) is still exiting; waiting for it to be gone"
      wait_gone "$pid" || die "$name: the previous process (pid $pid) is still exiting after ${STOP_WAIT}s; not starting another beside it" ;;
  esac
  rm -f "$pidfile"
  local port deadline=$((SECONDS + STOP_WAIT))
  for port in "$@"; do
    while port_listening "$port"; do
      [ $SECONDS -lt $deadline ] || die "$name: 127.0.0.1:$port is still in use ${STOP_WAIT}s after the previous process (pid $pid) ended: $(ss -Hltnp "sport = :$port" 2>/dev/null | tr -s ' ')"
      sleep 0.1
    done
  done
  return 0
}

# stop_pid NAME PIDFILE MARKER: SIGTERM, wait until gone (SIGKILL after $STOP_WAIT s), remove the pid file.
stop_pid() {
  local name=$1 pidfile=$2 marker=$3
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  case $(proc_state "$pid") in
    running)
      if owned "$pid" "$marker"; then
        kill "$pid" 2>/dev/null || true
        if ! wait_gone "$pid"; then
          log "$name (pid $pid) did not stop within ${STOP_WAIT}s; killing it"
          kill -9 "$pid" 2>/dev/null || true
          wait_gone "$pid" || die "$name (pid $pid) still exits ${STOP_WAIT}s after SIGKILL"
        fi
        log "$name stopped"
      fi ;;
    exiting)
      wait_gone "$pid" || die "$name (pid $pid) is still exiting after ${STOP_WAIT}s"
      log "$name stopped" ;;
  esac
  rm -f "$pidfile"
}

# kill_pid NAME PIDFILE MARKER: SIGKILL, as a crash; returns at once and keeps the pid file, so
# that the next start waits for the process to be gone.
kill_pid() {
  local name=$1 pidfile=$2 marker=$3
  [ -f "$pidfile" ] || { log "$name: not started by this script"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if [ "$(proc_state "$pid")" = running ] && owned "$pid" "$marker"; then
    kill -9 "$pid"
    log "$name (pid $pid) killed with SIGKILL"
  else
    log "$name: not running"
  fi
}

# Runs a Kafka tool class from the cached jars (the same classes as bin/kafka-*.sh).
kafka_tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$KAFKA_LIBS/*" "$@"
}

# ---------------------------------------------------------------- Redis
redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$STATE_DIR/redis" "$LOG_DIR" "$RUN_DIR"
  prepare_start redis "$RUN_DIR/redis.pid" "127.0.0.1:$REDIS_PORT" "$REDIS_PORT" || return 0
  if port_open "$REDIS_PORT"; then log "something already listens on 127.0.0.1:$REDIS_PORT; using it as Redis"; return 0; fi
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" --dir "$STATE_DIR/redis" \
    --save "" --appendonly yes --appendfsync always >/dev/null
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && { log "redis ready on 127.0.0.1:$REDIS_PORT (log: $LOG_DIR/redis.log)"; return 0; }
    sleep 0.1
  done
  die "redis did not answer PING within 10 s; see $LOG_DIR/redis.log"
}

redis_down() { stop_pid redis "$RUN_DIR/redis.pid" "127.0.0.1:$REDIS_PORT"; }
redis_kill() { kill_pid redis "$RUN_DIR/redis.pid" "127.0.0.1:$REDIS_PORT"; }

# ---------------------------------------------------------------- Kafka
kafka_fetch() {
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "resolving Apache Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  local pom_dir; pom_dir=$(mktemp -d)
  # kafka_2.13 is the broker (kafka.Kafka, kafka.tools.StorageTool); kafka-tools has TopicCommand;
  # the slf4j binding routes the broker's logging to log4j2.
  cat >"$pom_dir/pom.xml" <<POM
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.wxkf</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>com.fasterxml.jackson.dataformat</groupId><artifactId>jackson-dataformat-yaml</artifactId><version>2.19.0</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_LIBS"; mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never --no-transfer-progress -f "$pom_dir/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_LIBS" || die "maven could not resolve Apache Kafka $KAFKA_VERSION"
  rm -rf "$pom_dir"
  touch "$KAFKA_LIBS/.complete"
}

kafka_write_config() {
  mkdir -p "$STATE_DIR/kafka" "$LOG_DIR" "$RUN_DIR"
  cat >"$RUN_DIR/kafka.properties" <<PROPS
# Single-node KRaft: this process is both the broker and the only controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE_DIR/kafka
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create and abandon many groups; start rebalances at once instead of waiting 3 s.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  write_broker_log4j "$RUN_DIR/log4j2.yaml" "$LOG_DIR/kafka.log"
  write_tools_log4j "$TOOLS_LOG4J"
}

# write_broker_log4j FILE LOGFILE: a broker's logging, INFO to LOGFILE.
write_broker_log4j() {
  cat >"$1" <<YAML
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$2"
      PatternLayout: { pattern: "[%d] %p %m (%c)%n" }
  Loggers:
    Root: { level: INFO, AppenderRef: [ { ref: file } ] }
    Logger:
      - { name: kafka.log, level: WARN }
      - { name: org.apache.kafka.storage, level: WARN }
YAML
}

write_tools_log4j() {
  cat >"$1" <<YAML
Configuration:
  Appenders:
    Console: { name: stderr, target: SYSTEM_ERR, PatternLayout: { pattern: "%p %m%n" } }
  Loggers:
    Root: { level: ERROR, AppenderRef: [ { ref: stderr } ] }
YAML
}

kafka_ready() { timeout 20 bash -c "$(declare -f kafka_tool); KAFKA_LIBS='$KAFKA_LIBS' TOOLS_LOG4J='$TOOLS_LOG4J' kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:$KAFKA_PORT --list" >/dev/null 2>&1; }

kafka_up() {
  kafka_fetch
  kafka_write_config
  prepare_start kafka "$RUN_DIR/kafka.pid" "$RUN_DIR/kafka.properties" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" || return 0
  if port_open "$KAFKA_PORT"; then log "something already listens on 127.0.0.1:$KAFKA_PORT; using it as Kafka"; return 0; fi
  if [ ! -f "$STATE_DIR/kafka/meta.properties" ]; then
    kafka_tool kafka.tools.StorageTool format --ignore-formatted -c "$RUN_DIR/kafka.properties" \
      -t "$(kafka_tool kafka.tools.StorageTool random-uuid)" >/dev/null
  fi
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2.yaml" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$RUN_DIR/kafka.properties" >"$LOG_DIR/kafka.out" 2>&1 &
  echo $! >"$RUN_DIR/kafka.pid"
  local deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    pid_alive "$RUN_DIR/kafka.pid" || die "kafka exited during start; see $LOG_DIR/kafka.log and $LOG_DIR/kafka.out"
    if port_open "$KAFKA_PORT" && kafka_ready; then
      log "kafka $KAFKA_VERSION ready on 127.0.0.1:$KAFKA_PORT (log: $LOG_DIR/kafka.log)"; return 0
    fi
    sleep 0.5
  done
  die "kafka did not answer a metadata request within 90 s; see $LOG_DIR/kafka.log"
}

kafka_down() { stop_pid kafka "$RUN_DIR/kafka.pid" "$RUN_DIR/kafka.properties"; }
kafka_kill() { kill_pid kafka "$RUN_DIR/kafka.pid" "$RUN_DIR/kafka.properties"; }

# Creates a topic if it does not exist: topic NAME PARTITIONS
topic() {
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
    --create --if-not-exists --topic "$1" --partitions "$2" --replication-factor 1 >/dev/null
  log "topic $1 ($2 partitions) present"
}

# ---------------------------------------------------------------- Kafka cluster
# Three KRaft nodes, each broker and controller (so the controller quorum has three voters and
# survives the loss of one), node N in $CLUSTER_DIR/kafka-N: kafka.properties, data/, kafka.log,
# kafka.out, kafka.pid. One cluster id ($CLUSTER_DIR/kafka-cluster-id) formats all three.

knode_port() { echo $((CLUSTER_KAFKA_PORT + $1 - 1)); }
knode_ctrl_port() { echo $((CLUSTER_CONTROLLER_PORT + $1 - 1)); }
knode_dir() { echo "$CLUSTER_DIR/kafka-$1"; }
cluster_bootstrap() {
  local n out=""
  for n in $(seq 1 $KAFKA_NODES); do out+="${out:+,}127.0.0.1:$(knode_port "$n")"; done
  echo "$out"
}
redis_cluster_urls() {
  local n out=""
  for n in $(seq 1 $REDIS_NODES); do out+="${out:+,}redis://127.0.0.1:$(rnode_port "$n")/"; done
  echo "$out"
}

cluster_prepare_dir() {
  mkdir -p "$CLUSTER_DIR"
  # Marks the folder as this script's, so that cluster-clean deletes nothing else.
  touch "$CLUSTER_DIR/.wxkf-cluster"
  TOOLS_LOG4J=$CLUSTER_DIR/log4j2-tools.yaml
  write_tools_log4j "$TOOLS_LOG4J"
}

knode_check() {
  [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le $KAFKA_NODES ] || die "kafka cluster node: expected a number from 1 to $KAFKA_NODES, got '${1:-}'"
}

knode_write_config() {
  local n=$1 dir; dir=$(knode_dir "$1")
  local voters="" i
  for i in $(seq 1 $KAFKA_NODES); do voters+="${voters:+,}$i@127.0.0.1:$(knode_ctrl_port "$i")"; done
  mkdir -p "$dir/data"
  cat >"$dir/kafka.properties" <<PROPS
# Node $n of the local three-node KRaft cluster: a broker and one of the three controller voters.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(knode_port "$n"),CONTROLLER://127.0.0.1:$(knode_ctrl_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(knode_port "$n")
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# The production settings: every topic and internal topic on three brokers, a write acknowledged
# (acks=all) once two replicas have it, and never a leader that lacks acknowledged records.
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
num.partitions=3
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
auto.create.topics.enable=false
# Tests create and abandon many groups; start rebalances at once instead of waiting 3 s.
group.initial.rebalance.delay.ms=0
# Fewer threads than the defaults: three brokers share two cores with everything else.
num.network.threads=2
num.io.threads=4
background.threads=4
PROPS
  write_broker_log4j "$dir/log4j2.yaml" "$dir/kafka.log"
}

# knode_spawn N: starts node N unless it runs (waiting for a killed one to be gone first); prints
# the byte offset of its log where this start's lines begin, or nothing when it already ran.
knode_spawn() {
  local n=$1 dir port ctrl; dir=$(knode_dir "$1"); port=$(knode_port "$1"); ctrl=$(knode_ctrl_port "$1")
  knode_write_config "$n"
  prepare_start "kafka node $n" "$dir/kafka.pid" "$dir/kafka.properties" "$port" "$ctrl" || return 0
  local p
  for p in "$port" "$ctrl"; do
    port_listening "$p" && die "kafka node $n: 127.0.0.1:$p is in use by a program this script did not start: $(ss -Hltnp "sport = :$p" | tr -s ' ')"
  done
  if [ ! -f "$dir/data/meta.properties" ]; then
    [ -s "$CLUSTER_DIR/kafka-cluster-id" ] || kafka_tool kafka.tools.StorageTool random-uuid >"$CLUSTER_DIR/kafka-cluster-id"
    kafka_tool kafka.tools.StorageTool format --ignore-formatted -c "$dir/kafka.properties" \
      -t "$(cat "$CLUSTER_DIR/kafka-cluster-id")" >/dev/null
  fi
  local offset; offset=$(stat -c %s "$dir/kafka.log" 2>/dev/null || echo 0)
  nohup java -Xms128m -Xmx"$CLUSTER_KAFKA_HEAP" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.yaml" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$dir/kafka.properties" >"$dir/kafka.out" 2>&1 &
  echo $! >"$dir/kafka.pid"
  echo "$offset"
}

# knode_wait N OFFSET: waits until node N's broker is started and unfenced (which needs a quorum:
# two of the three nodes running).
knode_wait() {
  local n=$1 offset=$2 dir; dir=$(knode_dir "$1")
  local deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    pid_alive "$dir/kafka.pid" || die "kafka node $n exited during start; see $dir/kafka.log and $dir/kafka.out"
    if tail -c +"$((offset + 1))" "$dir/kafka.log" 2>/dev/null | grep -q "\[BrokerServer id=$n\] Transition from STARTING to STARTED"; then
      log "kafka node $n ready on 127.0.0.1:$(knode_port "$n") (pid $(cat "$dir/kafka.pid"), log: $dir/kafka.log)"
      return 0
    fi
    sleep 0.5
  done
  die "kafka node $n did not join the cluster within 120 s (a quorum needs two of the three nodes running); see $dir/kafka.log"
}

knode_start() {
  knode_check "${1:-}"; kafka_fetch; cluster_prepare_dir
  local offset; offset=$(knode_spawn "$1")
  [ -z "$offset" ] || knode_wait "$1" "$offset"
}
knode_stop() { knode_check "${1:-}"; stop_pid "kafka node $1" "$(knode_dir "$1")/kafka.pid" "$(knode_dir "$1")/kafka.properties"; }
knode_kill() { knode_check "${1:-}"; kill_pid "kafka node $1" "$(knode_dir "$1")/kafka.pid" "$(knode_dir "$1")/kafka.properties"; }

kafka_cluster_up() {
  kafka_fetch; cluster_prepare_dir
  # All three first: no broker can register before a majority of the controllers runs.
  local n offsets=()
  for n in $(seq 1 $KAFKA_NODES); do offsets[$n]=$(knode_spawn "$n"); done
  for n in $(seq 1 $KAFKA_NODES); do
    [ -z "${offsets[$n]}" ] || knode_wait "$n" "${offsets[$n]}"
  done
  local brokers; brokers=$(kafka_cluster_brokers)
  [ "$brokers" = "$KAFKA_NODES" ] || die "the kafka cluster lists $brokers live brokers, expected $KAFKA_NODES"
  log "kafka cluster ready: $KAFKA_NODES brokers, bootstrap $(cluster_bootstrap)"
}

kafka_cluster_down() {
  local n
  # All at once: stopped one by one, the last node waits in vain for a quorum to shut down cleanly.
  local pids=() pid rc=0
  for n in $(seq 1 $KAFKA_NODES); do knode_stop "$n" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

# kafka_cluster_brokers: how many brokers the cluster's metadata lists as alive.
kafka_cluster_brokers() {
  timeout 30 bash -c "$(declare -f kafka_tool); KAFKA_LIBS='$KAFKA_LIBS' TOOLS_LOG4J='$TOOLS_LOG4J' kafka_tool \
    org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server '$(cluster_bootstrap)'" 2>/dev/null \
    | grep -c 'isFenced: false' || true
}

# cluster_topic NAME PARTITIONS: creates the topic on the cluster when missing (RF 3, min ISR 2).
cluster_topic() {
  [ $# -eq 2 ] || die "usage: cluster-topic NAME PARTITIONS"
  cluster_prepare_dir
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(cluster_bootstrap)" \
    --create --if-not-exists --topic "$1" --partitions "$2" --replication-factor 3 \
    --config min.insync.replicas=2 >/dev/null
  log "topic $1 ($2 partitions, replication factor 3, min.insync.replicas 2) present on the cluster"
}

# cluster_wait_isr [SECONDS]: waits until no partition of the cluster is under-replicated (after a
# broker came back), default 120 s.
cluster_wait_isr() {
  cluster_prepare_dir
  local deadline=$((SECONDS + ${1:-120})) under
  while :; do
    under=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(cluster_bootstrap)" \
      --describe --under-replicated-partitions 2>/dev/null | grep -c 'Partition:' || true)
    [ "$under" = 0 ] && { log "no under-replicated partition"; return 0; }
    [ $SECONDS -lt $deadline ] || die "$under partitions still under-replicated after ${1:-120}s"
    sleep 2
  done
}

# ---------------------------------------------------------------- Redis Cluster
# Six redis-server nodes in cluster mode, node N in $CLUSTER_DIR/redis-N (append-only file,
# nodes.conf, redis.log, redis.pid); created once with `redis-cli --cluster create` as three
# primaries with one replica each. nodes.conf keeps the membership, so a stopped node that starts
# again rejoins (a former primary as a replica of the one promoted in its place).

rnode_port() { echo $((REDIS_CLUSTER_PORT + $1 - 1)); }
rnode_dir() { echo "$CLUSTER_DIR/redis-$1"; }
rnode_check() {
  [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le $REDIS_NODES ] || die "redis cluster node: expected a number from 1 to $REDIS_NODES, got '${1:-}'"
}
rcli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

rnode_start() {
  rnode_check "${1:-}"
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-cli >/dev/null || apt_install redis-tools
  cluster_prepare_dir
  local n=$1 dir port; dir=$(rnode_dir "$1"); port=$(rnode_port "$1")
  mkdir -p "$dir"
  prepare_start "redis node $n" "$dir/redis.pid" "127.0.0.1:$port" "$port" "$((port + 10000))" || return 0
  local p
  for p in "$port" "$((port + 10000))"; do
    port_listening "$p" && die "redis node $n: 127.0.0.1:$p is in use by a program this script did not start: $(ss -Hltnp "sport = :$p" | tr -s ' ')"
  done
  # The single Redis's persistence settings, plus cluster mode.
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
    --save "" --appendonly yes --appendfsync always \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT" >/dev/null
  for _ in $(seq 1 100); do
    rcli "$port" ping 2>/dev/null | grep -q PONG && { log "redis node $n up on 127.0.0.1:$port (pid $(cat "$dir/redis.pid"), log: $dir/redis.log)"; return 0; }
    sleep 0.1
  done
  die "redis node $n did not answer PING within 10 s; see $dir/redis.log"
}
rnode_stop() { rnode_check "${1:-}"; stop_pid "redis node $1" "$(rnode_dir "$1")/redis.pid" "127.0.0.1:$(rnode_port "$1")"; }
rnode_kill() { rnode_check "${1:-}"; kill_pid "redis node $1" "$(rnode_dir "$1")/redis.pid" "127.0.0.1:$(rnode_port "$1")"; }

rinfo() { rcli "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: -v k="$2" '$1 == k {print $2}'; }

redis_cluster_up() {
  local n
  for n in $(seq 1 $REDIS_NODES); do rnode_start "$n"; done
  local fresh=1
  for n in $(seq 1 $REDIS_NODES); do
    [ "$(rinfo "$(rnode_port "$n")" cluster_slots_assigned)" = 0 ] && [ "$(rinfo "$(rnode_port "$n")" cluster_known_nodes)" = 1 ] || fresh=0
  done
  if [ $fresh = 1 ]; then
    local addrs=()
    for n in $(seq 1 $REDIS_NODES); do addrs+=("127.0.0.1:$(rnode_port "$n")"); done
    log "creating the Redis Cluster: three primaries with one replica each"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_DIR/redis-cluster-create.log" 2>&1 \
      || die "redis-cli --cluster create failed; see $CLUSTER_DIR/redis-cluster-create.log"
  fi
  local deadline=$((SECONDS + 60)) ok
  while :; do
    ok=1
    for n in $(seq 1 $REDIS_NODES); do
      [ "$(rinfo "$(rnode_port "$n")" cluster_state)" = ok ] && [ "$(rinfo "$(rnode_port "$n")" cluster_known_nodes)" = $REDIS_NODES ] || ok=0
    done
    # ... and every replica attached: as many primaries as replicas, none failed.
    [ $ok = 1 ] && [ "$(redis_cluster_shape)" = "$((REDIS_NODES / 2)) $((REDIS_NODES / 2)) 0" ] && break
    [ $SECONDS -lt $deadline ] || die "the Redis Cluster is not ok on all $REDIS_NODES nodes after 60 s (partly created? 'cluster-down' then 'cluster-clean' starts afresh); see $CLUSTER_DIR/redis-*/redis.log"
    sleep 0.5
  done
  log "redis cluster ready: cluster_state:ok on $REDIS_NODES nodes, $(redis_cluster_roles)"
}

redis_cluster_down() { local n; for n in $(seq 1 $REDIS_NODES); do rnode_stop "$n"; done; }

# `cluster nodes` from the first node that answers.
redis_cluster_nodes() {
  local n nodes
  for n in $(seq 1 $REDIS_NODES); do
    nodes=$(rcli "$(rnode_port "$n")" cluster nodes 2>/dev/null) && [ -n "$nodes" ] && { printf '%s\n' "$nodes"; return 0; }
  done
  return 0
}

# Reads `cluster nodes`: one line per node, the flags in field 3 (myself,master / slave / fail /
# fail? = suspected by this node only).
REDIS_NODES_AWK='
  { split($2, addr, "@"); split($3, fl, ","); role = ""; failed = 0; suspect = 0
    for (i in fl) { if (fl[i] == "master" || fl[i] == "slave") role = fl[i]; if (fl[i] == "fail") failed = 1; if (fl[i] == "fail?") suspect = 1 } }
  failed { f++; fs = fs " " addr[1]; next }
  role == "master" { p++; ps = ps " " addr[1] (suspect ? "(suspected)" : "") }
  role == "slave" { r++; rs = rs " " addr[1] (suspect ? "(suspected)" : "") }'

# "PRIMARIES REPLICAS FAILED" as the cluster sees them.
redis_cluster_shape() { redis_cluster_nodes | awk "$REDIS_NODES_AWK"' END {printf "%d %d %d", p, r, f}'; }

# The primaries and replicas as the cluster sees them.
redis_cluster_roles() {
  redis_cluster_nodes | awk "$REDIS_NODES_AWK"' END {printf "primaries:%s; replicas:%s%s", ps, rs, (f ? "; failed:" fs : "")}'
}

# ---------------------------------------------------------------- both clusters
cluster_status() {
  local n dir pid state
  for n in $(seq 1 $KAFKA_NODES); do
    dir=$(knode_dir "$n"); pid=$(cat "$dir/kafka.pid" 2>/dev/null || true)
    state=stopped; [ -n "$pid" ] && state=$(proc_state "$pid"); [ "$state" = gone ] && state=stopped
    echo "kafka node $n: $state${pid:+ (pid $pid)}, 127.0.0.1:$(knode_port "$n") controller :$(knode_ctrl_port "$n"), $dir"
  done
  for n in $(seq 1 $REDIS_NODES); do
    dir=$(rnode_dir "$n"); pid=$(cat "$dir/redis.pid" 2>/dev/null || true)
    state=stopped; [ -n "$pid" ] && state=$(proc_state "$pid"); [ "$state" = gone ] && state=stopped
    local role=""
    [ "$state" = running ] && role=$(rcli "$(rnode_port "$n")" role 2>/dev/null | head -1)
    echo "redis node $n: $state${pid:+ (pid $pid)}${role:+ $role}, 127.0.0.1:$(rnode_port "$n"), $dir"
  done
  for n in $(seq 1 $REDIS_NODES); do
    state=$(rinfo "$(rnode_port "$n")" cluster_state)
    [ -n "$state" ] && { echo "redis cluster: cluster_state:$state, $(redis_cluster_roles)"; break; }
  done
  echo "kafka bootstrap: $(cluster_bootstrap)"
  echo "redis nodes: $(redis_cluster_urls)"
}

cluster_env() {
  echo "WXKF_CLUSTER_KAFKA_BOOTSTRAP=$(cluster_bootstrap)"
  echo "WXKF_REDIS_CLUSTER_NODES=$(redis_cluster_urls)"
}

cluster_clean() {
  [ -d "$CLUSTER_DIR" ] || return 0
  [ -f "$CLUSTER_DIR/.wxkf-cluster" ] || die "$CLUSTER_DIR was not made by this script; not deleting it"
  local f
  for f in "$CLUSTER_DIR"/kafka-*/kafka.pid "$CLUSTER_DIR"/redis-*/redis.pid; do
    [ -f "$f" ] && [ "$(proc_state "$(cat "$f")")" != gone ] && die "a cluster node still runs ($f); run cluster-down first"
  done
  rm -rf "$CLUSTER_DIR"
  log "deleted $CLUSTER_DIR"
}

# ---------------------------------------------------------------- secured Kafka
# A single KRaft node of its own, from the same jars, for the tests of Kafka authentication and
# authorisation (WXKF_TEST_SECURE_KAFKA): clients connect with SASL/SCRAM-SHA-512, in clear on one
# listener and over TLS on another; every request is authorised by the StandardAuthorizer, with the
# ACLs a production cluster would have for ingest. Its data is thrown away at every start: the
# SCRAM users are created when the storage is formatted, and the TLS certificate is made anew.
#
#   principal       password                          grants (on names with these prefixes)
#   admin           $SECURE_KAFKA_ADMIN_PASSWORD      super user (the broker itself, the tests' admin)
#   wxkf-ingest     $SECURE_KAFKA_INGEST_PASSWORD     Write, Describe on topics `secure-inbound`
#   wxkf-consumer   $SECURE_KAFKA_CONSUMER_PASSWORD   Create, Read, Describe on topics `secure-inbound`;
#                                                     Read on groups `secure-group`; Create, Write,
#                                                     Describe, Read on topics `secure-consumer-`
#                                                     (its dead letters, hand-offs and hold topics)
#   wxkf-outsider   $SECURE_KAFKA_OUTSIDER_PASSWORD   nothing (authenticates, may not write)
#
# The controller listener is PLAINTEXT on 127.0.0.1 (its peer is the node itself, as ANONYMOUS,
# which is why ANONYMOUS is a super user): clients never use it.
secure_kafka_config() {
  mkdir -p "$SECURE_DIR" "$LOG_DIR" "$RUN_DIR"
  local jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$SECURE_KAFKA_ADMIN_PASSWORD\";"
  cat >"$SECURE_DIR/kafka.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$SECURE_KAFKA_CONTROLLER_PORT
listeners=SASL_PLAINTEXT://127.0.0.1:$SECURE_KAFKA_PORT,SASL_SSL://127.0.0.1:$SECURE_KAFKA_TLS_PORT,CONTROLLER://127.0.0.1:$SECURE_KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$SECURE_KAFKA_PORT,SASL_SSL://localhost:$SECURE_KAFKA_TLS_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$jaas
ssl.keystore.type=PEM
ssl.keystore.location=$SECURE_DIR/broker.pem
ssl.key.password=$SECURE_KAFKA_ADMIN_PASSWORD
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$SECURE_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat >"$SECURE_DIR/admin.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$jaas
PROPS
  write_broker_log4j "$SECURE_DIR/log4j2.yaml" "$LOG_DIR/secure-kafka.log"
  write_tools_log4j "$TOOLS_LOG4J"
}

# The TLS listener's certificate: a CA of its own (ca.crt, which clients trust) and a leaf for
# `localhost`, its key encrypted with the admin password (a PEM keystore wants one).
secure_kafka_certificates() {
  command -v openssl >/dev/null || apt_install openssl
  local d=$SECURE_DIR
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=wxkf test CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/leaf.key" -out "$d/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/leaf.ext" -out "$d/leaf.crt" 2>/dev/null
  openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES -in "$d/leaf.key" -passout "pass:$SECURE_KAFKA_ADMIN_PASSWORD" \
    -out "$d/leaf.p8" 2>/dev/null
  cat "$d/leaf.p8" "$d/leaf.crt" >"$d/broker.pem"
  rm -f "$d/ca.key" "$d/leaf.key" "$d/leaf.csr" "$d/leaf.ext" "$d/ca.srl"
}

secure_kafka_up() {
  kafka_fetch
  prepare_start "secured kafka" "$SECURE_DIR/kafka.pid" "$SECURE_DIR/kafka.properties" \
    "$SECURE_KAFKA_PORT" "$SECURE_KAFKA_TLS_PORT" "$SECURE_KAFKA_CONTROLLER_PORT" || return 0
  local port
  for port in "$SECURE_KAFKA_PORT" "$SECURE_KAFKA_TLS_PORT" "$SECURE_KAFKA_CONTROLLER_PORT"; do
    port_open "$port" && die "127.0.0.1:$port is taken by another program; move the secured Kafka with WXKF_SECURE_KAFKA_PORT"
  done
  rm -rf "$SECURE_DIR"
  secure_kafka_config
  secure_kafka_certificates
  kafka_tool kafka.tools.StorageTool format -c "$SECURE_DIR/kafka.properties" \
    -t "$(kafka_tool kafka.tools.StorageTool random-uuid)" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$SECURE_KAFKA_ADMIN_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=wxkf-ingest,password=$SECURE_KAFKA_INGEST_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=wxkf-consumer,password=$SECURE_KAFKA_CONSUMER_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=wxkf-outsider,password=$SECURE_KAFKA_OUTSIDER_PASSWORD]" >/dev/null
  nohup java -Xms128m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SECURE_DIR/log4j2.yaml" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$SECURE_DIR/kafka.properties" >"$LOG_DIR/secure-kafka.out" 2>&1 &
  echo $! >"$SECURE_DIR/kafka.pid"
  local deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    pid_alive "$SECURE_DIR/kafka.pid" || die "the secured kafka exited during start; see $LOG_DIR/secure-kafka.log and $LOG_DIR/secure-kafka.out"
    # The first ACL is the readiness probe too: it needs the broker up and the admin's SCRAM login.
    if port_open "$SECURE_KAFKA_PORT" && secure_kafka_acl --allow-principal User:wxkf-ingest \
        --operation Write --operation Describe --resource-pattern-type prefixed --topic secure-inbound; then
      # The consumer's grants, one tool run each (an ACL's operations must suit all its resources),
      # side by side.
      local pids=() pid
      secure_kafka_acl --allow-principal User:wxkf-consumer --consumer --resource-pattern-type prefixed \
        --topic secure-inbound --group secure-group & pids+=($!)
      secure_kafka_acl --allow-principal User:wxkf-consumer --operation Create \
        --resource-pattern-type prefixed --topic secure-inbound & pids+=($!)
      secure_kafka_acl --allow-principal User:wxkf-consumer --producer \
        --resource-pattern-type prefixed --topic secure-consumer- & pids+=($!)
      # The hold topics (consumer/src/quota/) are read back by the consumer's `.hold` group.
      secure_kafka_acl --allow-principal User:wxkf-consumer --operation Read \
        --resource-pattern-type prefixed --topic secure-consumer- & pids+=($!)
      for pid in "${pids[@]}"; do wait "$pid" || die "adding the consumer's ACLs to the secured kafka failed"; done
      log "secured kafka ready: SASL_PLAINTEXT 127.0.0.1:$SECURE_KAFKA_PORT, SASL_SSL localhost:$SECURE_KAFKA_TLS_PORT (log: $LOG_DIR/secure-kafka.log)"
      return 0
    fi
    sleep 0.5
  done
  die "the secured kafka did not answer within 90 s; see $LOG_DIR/secure-kafka.log"
}

# secure_kafka_acl ARGS...: adds an ACL as the admin, bounded.
secure_kafka_acl() {
  timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$SECURE_KAFKA_PORT" \
    --command-config "$SECURE_DIR/admin.properties" --add "$@" >/dev/null 2>&1
}

secure_kafka_down() { stop_pid "secured kafka" "$SECURE_DIR/kafka.pid" "$SECURE_DIR/kafka.properties"; }

# The tests' variables (eval it): the two listeners, the CA of the TLS one, the credentials.
secure_kafka_env() {
  echo "WXKF_TEST_SECURE_KAFKA=127.0.0.1:$SECURE_KAFKA_PORT"
  echo "WXKF_TEST_SECURE_KAFKA_TLS=localhost:$SECURE_KAFKA_TLS_PORT"
  echo "WXKF_TEST_SECURE_KAFKA_CA=$SECURE_DIR/ca.crt"
  echo "WXKF_TEST_SECURE_KAFKA_ADMIN=admin:$SECURE_KAFKA_ADMIN_PASSWORD"
  echo "WXKF_TEST_SECURE_KAFKA_INGEST=wxkf-ingest:$SECURE_KAFKA_INGEST_PASSWORD"
  echo "WXKF_TEST_SECURE_KAFKA_CONSUMER=wxkf-consumer:$SECURE_KAFKA_CONSUMER_PASSWORD"
  echo "WXKF_TEST_SECURE_KAFKA_OUTSIDER=wxkf-outsider:$SECURE_KAFKA_OUTSIDER_PASSWORD"
}

status() {
  pid_alive "$RUN_DIR/redis.pid" && echo "redis: running, pid $(cat "$RUN_DIR/redis.pid"), 127.0.0.1:$REDIS_PORT" || echo "redis: not started by this script"
  pid_alive "$RUN_DIR/kafka.pid" && echo "kafka: running, pid $(cat "$RUN_DIR/kafka.pid"), 127.0.0.1:$KAFKA_PORT" || echo "kafka: not started by this script"
  echo "logs: $LOG_DIR"
}

usage() {
  cat >&2 <<USAGE
usage: $0 COMMAND
  single:   up | down | status | topic NAME PARTITIONS
  cluster:  cluster-up | cluster-down | cluster-status | cluster-env | cluster-clean
            kafka-cluster-up | kafka-cluster-down | redis-cluster-up | redis-cluster-down
            cluster-topic NAME PARTITIONS | cluster-wait-isr [SECONDS]
  secured:  secure-kafka-up | secure-kafka-down | secure-kafka-env
  failures: kafka-start|kafka-stop|kafka-kill [N]   (no N: the single broker; N = 1..$KAFKA_NODES: a cluster node)
            redis-start|redis-stop|redis-kill [N]   (no N: the single Redis; N = 1..$REDIS_NODES: a cluster node)
USAGE
  exit 2
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) redis_up; kafka_up ;;
  down) kafka_down; redis_down ;;
  status) status ;;
  kafka-start) if [ $# -gt 0 ]; then knode_start "$1"; else kafka_up; fi ;;
  kafka-stop) if [ $# -gt 0 ]; then knode_stop "$1"; else kafka_down; fi ;;
  kafka-kill) if [ $# -gt 0 ]; then knode_kill "$1"; else kafka_kill; fi ;;
  redis-start) if [ $# -gt 0 ]; then rnode_start "$1"; else redis_up; fi ;;
  redis-stop) if [ $# -gt 0 ]; then rnode_stop "$1"; else redis_down; fi ;;
  redis-kill) if [ $# -gt 0 ]; then rnode_kill "$1"; else redis_kill; fi ;;
  topic) kafka_write_config; topic "$@" ;;
  cluster-up) redis_cluster_up; kafka_cluster_up ;;
  cluster-down) kafka_cluster_down; redis_cluster_down ;;
  cluster-status) cluster_status ;;
  cluster-env) cluster_env ;;
  cluster-clean) cluster_clean ;;
  kafka-cluster-up) kafka_cluster_up ;;
  kafka-cluster-down) kafka_cluster_down ;;
  redis-cluster-up) redis_cluster_up ;;
  redis-cluster-down) redis_cluster_down ;;
  cluster-topic) kafka_fetch; cluster_topic "$@" ;;
  cluster-wait-isr) kafka_fetch; cluster_wait_isr "$@" ;;
  secure-kafka-up) secure_kafka_up ;;
  secure-kafka-down) secure_kafka_down ;;
  secure-kafka-env) secure_kafka_env ;;
  *) usage ;;
esac
