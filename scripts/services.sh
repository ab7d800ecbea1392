#!/usr/bin/env bash
# Starts and stops the real services the pipeline needs on this machine, without Docker:
#   - Apache Kafka: a single-node KRaft broker (combined broker + controller) run from the official
#     jars, resolved with Maven into a cache folder outside the repository;
#   - Redis: Debian's redis-server.
# Both listen on 127.0.0.1 only.
#
#   scripts/services.sh up       install what is missing, start what is not running, wait until ready
#   scripts/services.sh down     stop what this script started (by pid file), nothing else
#   scripts/services.sh status   say what runs
#   scripts/services.sh kafka-stop | kafka-start | kafka-kill | redis-stop | redis-start | redis-kill
#                                (used by failure tests; `kill` sends SIGKILL and returns at once)
#
# `start` right after a `kill -9` waits until the killed process has finished exiting and its ports
# are free (at most $WXKF_STOP_WAIT seconds, default 30), then starts a new one; a process that
# really runs is left alone ("already running").
# Idempotent: a second `up` finds what runs. State (data, logs, pid files) lives in $WXKF_STATE_DIR
# (default: .local/ in the repository); the Kafka jars in $WXKF_CACHE_DIR (default ~/.cache/wxkf).
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
  java -Xmx256m -Dlog4j2.configurationFile="$RUN_DIR/log4j2-tools.yaml" -cp "$KAFKA_LIBS/*" "$@"
}

# ---------------------------------------------------------------- Redis
redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$STATE_DIR/redis" "$LOG_DIR" "$RUN_DIR"
  prepare_start redis "$RUN_DIR/redis.pid" "127.0.0.1:$REDIS_PORT" "$REDIS_PORT" || return 0
  if port_open "$REDIS_PORT"; then log "something already listens on 127.0.0.1:$REDIS_PORT; using it as Redis"; return 0; fi
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" --dir "$STATE_DIR/redis" \
    --save "" --appendonly yes --appendfsync everysec >/dev/null
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
  cat >"$RUN_DIR/log4j2.yaml" <<YAML
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$LOG_DIR/kafka.log"
      PatternLayout: { pattern: "[%d] %p %m (%c)%n" }
  Loggers:
    Root: { level: INFO, AppenderRef: [ { ref: file } ] }
    Logger:
      - { name: kafka.log, level: WARN }
      - { name: org.apache.kafka.storage, level: WARN }
YAML
  cat >"$RUN_DIR/log4j2-tools.yaml" <<YAML
Configuration:
  Appenders:
    Console: { name: stderr, target: SYSTEM_ERR, PatternLayout: { pattern: "%p %m%n" } }
  Loggers:
    Root: { level: ERROR, AppenderRef: [ { ref: stderr } ] }
YAML
}

kafka_ready() { timeout 20 bash -c "$(declare -f kafka_tool); KAFKA_LIBS='$KAFKA_LIBS' RUN_DIR='$RUN_DIR' kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:$KAFKA_PORT --list" >/dev/null 2>&1; }

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

status() {
  pid_alive "$RUN_DIR/redis.pid" && echo "redis: running, pid $(cat "$RUN_DIR/redis.pid"), 127.0.0.1:$REDIS_PORT" || echo "redis: not started by this script"
  pid_alive "$RUN_DIR/kafka.pid" && echo "kafka: running, pid $(cat "$RUN_DIR/kafka.pid"), 127.0.0.1:$KAFKA_PORT" || echo "kafka: not started by this script"
  echo "logs: $LOG_DIR"
}

case "${1:-}" in
  up) redis_up; kafka_up ;;
  down) kafka_down; redis_down ;;
  status) status ;;
  kafka-start) kafka_up ;;
  kafka-stop) kafka_down ;;
  kafka-kill) kafka_kill ;;
  redis-start) redis_up ;;
  redis-stop) redis_down ;;
  redis-kill) redis_kill ;;
  topic) shift; kafka_write_config; topic "$@" ;;
  *) echo "usage: $0 up|down|status|kafka-start|kafka-stop|kafka-kill|redis-start|redis-stop|redis-kill|topic NAME PARTITIONS" >&2; exit 2 ;;
esac
