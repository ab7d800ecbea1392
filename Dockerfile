# syntax=docker/dockerfile:1.7
#
# Container images of the pipeline, one target per binary:
#
#   docker build --target ingest     -t wxkf/ingest .
#   docker build --target consumer   -t wxkf/consumer .
#   docker build --target wechat-sim -t wxkf/wechat-sim .    # the WeChat simulator, for demos
#
# Stages: `chef` (toolchain + cargo-chef) → `planner` (dependency recipe from the manifests) →
# `builder` (dependencies compiled in their own layer, which Docker reuses for as long as
# Cargo.toml/Cargo.lock do not change; then the workspace itself) → one slim runtime per binary.
#
# The runtime images hold the binary, the commented default configuration files of config/ (the
# base layer of the configuration loader, always matching the binary they ship with) and curl for
# the HEALTHCHECK. Deployment-specific settings come from INGEST__… / CONSUMER__… environment
# variables or an environment file mounted beside the defaults; see deploy/README.md.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
# rdkafka builds its vendored librdkafka with cmake. The -dev packages cover its features: zlib
# and OpenSSL (TLS and SASL/SCRAM) are linked; curl only if that feature gets enabled later.
# Versions are not pinned: the Debian release of the base image pins them.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
ARG CARGO_CHEF_VERSION=0.1.78
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# ------------------------------------------------------------------------------------------------
FROM chef AS planner
COPY . .
# recipe.json depends only on the manifests and the lock file, so the `cook` layer below stays
# cached across source-only changes.
RUN cargo chef prepare --recipe-path recipe.json

# ------------------------------------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: every third-party crate (librdkafka included, the slowest) compiled once.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked -p ingest -p consumer --bins \
 && cargo build --release --locked -p ingest --features sim --bin wechat-sim \
 && mkdir -p /out/config \
 && for bin in ingest consumer wechat-sim; do \
      if [ -x "target/release/$bin" ]; then cp "target/release/$bin" /out/; fi; \
    done \
 && cp config/ingest.toml config/consumer.toml /out/config/ \
 && if [ -f config/rules.toml ]; then cp config/rules.toml /out/config/; fi

# ------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# The binaries link glibc, libgcc, zlib and OpenSSL's libssl3 (librdkafka's TLS and SCRAM; the
# Redis client and reqwest use rustls). ca-certificates holds the platform roots that Kafka's
# TLS (without ssl.ca.location) and Redis' (without redis.ca_file) trust; curl is the
# HEALTHCHECK probe.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 wxkf \
 && useradd --system --uid 10001 --gid wxkf --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin wxkf
WORKDIR /app
# Owned by root and read-only to the service user: configuration is never written at run time.
COPY --from=builder /out/config/ /app/config/
# "production" so that no config/*.local.toml (test values) is ever picked up by accident; an
# environment file config/<kind>.production.toml is read if one is mounted. RUST_LOG is left
# unset on purpose: each service then applies its own default filter, which is quieter than a
# plain `info` (the consumer keeps librdkafka's messages at warn); set it at run time to debug.
ENV APP_ENVIRONMENT=production
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# ------------------------------------------------------------------------------------------------
FROM runtime AS consumer
COPY --from=builder /out/consumer /usr/local/bin/consumer
ENV CONSUMER_CONFIG_DIR=/app/config \
    CONSUMER__SERVER__HOST=0.0.0.0 \
    CONSUMER__TELEMETRY__LOG_FORMAT=json
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${CONSUMER__SERVER__PORT:-9090}/healthz\" || exit 1"]
# `consumer setup` creates the topics; `consumer explain` dry-runs the rules.
ENTRYPOINT ["/usr/local/bin/consumer"]
CMD ["run"]

# ------------------------------------------------------------------------------------------------
FROM runtime AS wechat-sim
COPY --from=builder /out/wechat-sim /usr/local/bin/wechat-sim
ENTRYPOINT ["/usr/local/bin/wechat-sim"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# Last, so a plain `docker build .` gives the edge service.
FROM runtime AS ingest
COPY --from=builder /out/ingest /usr/local/bin/ingest
# spool.dir (config/ingest.toml; docs/spool.md), owned by the service user. Meant to be a volume
# of its own (a PersistentVolumeClaim per pod, a named volume in docker-compose.yml): a new named
# volume takes this directory's owner, and without any volume the default still works, in the
# container's writable layer (when the root filesystem is not read-only), which a new container
# does not keep.
USER 0:0
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/wxkf/spool
USER 10001:10001
ENV INGEST_CONFIG_DIR=/app/config \
    INGEST__SERVER__HOST=0.0.0.0 \
    INGEST__TELEMETRY__LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${INGEST__SERVER__PORT:-8080}/healthz\" || exit 1"]
ENTRYPOINT ["/usr/local/bin/ingest"]
