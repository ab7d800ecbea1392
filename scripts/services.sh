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
#   scripts/services.sh kafka-stop | kafka-start | redis-stop | redis-start   (used by failure tests)
#
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

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Runs a Kafka tool class from the cached jars (the same classes as bin/kafka-*.sh).
kafka_tool() {
  java -Xmx256m -Dlog4j2.configurationFile="$RUN_DIR/log4j2-tools.yaml" -cp "$KAFKA_LIBS/*" "$@"
}

# ---------------------------------------------------------------- Redis
redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$STATE_DIR/redis" "$LOG_DIR" "$RUN_DIR"
  if pid_alive "$RUN_DIR/redis.pid"; then log "redis already running (pid $(cat "$RUN_DIR/redis.pid"))"; return 0; fi
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

redis_down() {
  if pid_alive "$RUN_DIR/redis.pid"; then
    local pid; pid=$(cat "$RUN_DIR/redis.pid")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "redis stopped"
  fi
  rm -f "$RUN_DIR/redis.pid"
}

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
  if pid_alive "$RUN_DIR/kafka.pid"; then log "kafka already running (pid $(cat "$RUN_DIR/kafka.pid"))"; return 0; fi
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

kafka_down() {
  if pid_alive "$RUN_DIR/kafka.pid"; then
    local pid; pid=$(cat "$RUN_DIR/kafka.pid")
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "kafka stopped"
  fi
  rm -f "$RUN_DIR/kafka.pid"
}

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
  redis-start) redis_up ;;
  redis-stop) redis_down ;;
  topic) shift; kafka_write_config; topic "$@" ;;
  *) echo "usage: $0 up|down|status|kafka-start|kafka-stop|redis-start|redis-stop|topic NAME PARTITIONS" >&2; exit 2 ;;
esac
