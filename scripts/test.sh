#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs build dependencies, starts the real
# Redis and Kafka (scripts/services.sh), checks formatting and lints, runs every test, runs the
# failure scenarios on a three-broker Kafka cluster, the tests that need a Redis Cluster and those
# that need a secured Kafka (each on services started for them and stopped after), then checks the
# deployment files offline (scripts/check-deploy.sh).
# Tests that need Kafka or Redis fail — never skip — when those are unreachable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
start=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

step "build dependencies"
scripts/setup.sh

step "real services: Redis and Kafka on 127.0.0.1"
scripts/services.sh up

step "format"
cargo fmt --all --check

step "lints"
# With the simulator (`ingest` feature `sim`), so its code and the end-to-end tests are linted.
# And the secured-Kafka and Redis Cluster tests (features `secure-kafka-tests`,
# `redis-cluster-tests`), which run in stages of their own.
cargo clippy --workspace --all-targets --locked --features \
  ingest/sim,ingest/secure-kafka-tests,consumer/secure-kafka-tests,ingest/redis-cluster-tests,consumer/redis-cluster-tests \
  -- -D warnings

step "binaries (the end-to-end tests run them as processes)"
# Cargo rebuilds ingest and wechat-sim for ingest's own tests, but not the consumer binary.
cargo build --workspace --bins --features ingest/sim --locked

step "tests"
export WXKF_TEST_KAFKA=${WXKF_TEST_KAFKA:-127.0.0.1:${WXKF_KAFKA_PORT:-9092}}
export WXKF_TEST_REDIS=${WXKF_TEST_REDIS:-redis://127.0.0.1:${WXKF_REDIS_PORT:-6379}/}
cargo test --workspace --features ingest/sim --locked --no-fail-fast

step "the production topology: a three-broker Kafka cluster (RF 3, min ISR 2) under broker failures"
# The scenarios of ingest/tests/e2e/cluster.rs, ignored in the run above, against the local cluster.
scripts/services.sh kafka-cluster-up
eval "$(scripts/services.sh cluster-env)"
WXKF_TEST_KAFKA=$WXKF_CLUSTER_KAFKA_BOOTSTRAP \
  cargo test -p ingest --features sim --locked --test e2e cluster_ -- --ignored --test-threads=1
scripts/services.sh kafka-cluster-down

step "secured Kafka: SASL/SCRAM, TLS and ACLs (a broker of its own, stopped afterwards)"
# A separate single broker from the same jars (scripts/services.sh secure-kafka-up): ingest
# publishes with its principal, in clear and over TLS, and is refused with a wrong password or
# without Write on the topic; the consumer sets up, consumes, commits and dead-letters with its
# own. The tests fail when the broker's variables are unset.
secure_start=$SECONDS
scripts/services.sh secure-kafka-up
trap 'scripts/services.sh secure-kafka-down' EXIT
eval "$(scripts/services.sh secure-kafka-env | sed 's/^/export /')"
cargo test -p ingest -p consumer --features ingest/secure-kafka-tests,consumer/secure-kafka-tests \
  --test secure_kafka --locked
scripts/services.sh secure-kafka-down
trap - EXIT
printf 'secured Kafka stage: %ss\n' "$((SECONDS - secure_start))"

step "Redis Cluster: the tests that need one (three primaries with a replica each), and a primary killed under load"
# A local Redis Cluster (nodes from $WXKF_REDIS_CLUSTER_PORT, default 7000..7005), stopped again
# afterwards. The failover test kills a primary with scripts/services.sh and restarts it, so it
# reads the same variables; a short node timeout keeps the failover quick.
export WXKF_REDIS_CLUSTER_NODE_TIMEOUT_MS=${WXKF_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}
scripts/services.sh redis-cluster-up
trap 'scripts/services.sh redis-cluster-down' EXIT
WXKF_TEST_REDIS_CLUSTER=$(eval "$(scripts/services.sh cluster-env)"; echo "$WXKF_REDIS_CLUSTER_NODES")
export WXKF_TEST_REDIS_CLUSTER
cargo test -p ingest -p consumer --features ingest/redis-cluster-tests,consumer/redis-cluster-tests \
  --locked --no-fail-fast --test redis_cluster
# The whole pipeline on it (ingest/tests/e2e/redis_failover.rs, ignored in the test run above):
# ingest and two consumers on the cluster, the single Kafka, WeChat's pushes, and the primary
# holding most of the scenario's keys killed with SIGKILL mid-stream; the audit must find nothing
# lost and nothing sent twice.
cargo test -p ingest --features sim --locked --test e2e redis_primary_ -- --ignored
scripts/services.sh redis-cluster-down
trap - EXIT

step "deployment files: Dockerfile, compose, Kubernetes manifests, alert rules, dashboard"
# The metric names of the dashboard and the alert rules are checked against what the running
# services really export after a short conversation.
metrics_dir=$(mktemp -d)
scripts/metrics-snapshot.sh "$metrics_dir"
scripts/check-deploy.sh --metrics "$metrics_dir/ingest.metrics" "$metrics_dir/consumer.metrics"

printf '\n==> all checks passed in %ss\n' "$((SECONDS - start))"
