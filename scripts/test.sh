#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs build dependencies, starts the real
# Redis and Kafka (scripts/services.sh), checks formatting and lints, runs every test, then checks
# the deployment files offline (scripts/check-deploy.sh). The tests that need a Redis Cluster run in
# a stage of their own, on a local cluster started for them and stopped after.
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
# And the Redis Cluster tests (features `redis-cluster-tests`), which run in a stage of their own.
cargo clippy --workspace --all-targets --locked \
  --features ingest/sim,ingest/redis-cluster-tests,consumer/redis-cluster-tests -- -D warnings

step "binaries (the end-to-end tests run them as processes)"
# Cargo rebuilds ingest and wechat-sim for ingest's own tests, but not the consumer binary.
cargo build --workspace --bins --features ingest/sim --locked

step "tests"
export WXKF_TEST_KAFKA=${WXKF_TEST_KAFKA:-127.0.0.1:${WXKF_KAFKA_PORT:-9092}}
export WXKF_TEST_REDIS=${WXKF_TEST_REDIS:-redis://127.0.0.1:${WXKF_REDIS_PORT:-6379}/}
cargo test --workspace --features ingest/sim --locked --no-fail-fast

step "Redis Cluster: the tests that need one (three primaries with a replica each)"
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
scripts/services.sh redis-cluster-down
trap - EXIT

step "deployment files: Dockerfile, compose, Kubernetes manifests, alert rules, dashboard"
# The metric names of the dashboard and the alert rules are checked against what the running
# services really export after a short conversation.
metrics_dir=$(mktemp -d)
scripts/metrics-snapshot.sh "$metrics_dir"
scripts/check-deploy.sh --metrics "$metrics_dir/ingest.metrics" "$metrics_dir/consumer.metrics"

printf '\n==> all checks passed in %ss\n' "$((SECONDS - start))"
