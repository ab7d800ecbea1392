#!/usr/bin/env bash
# Installs what building the workspace needs on a Debian machine: a C/C++ toolchain, cmake,
# pkg-config and the zlib, curl and OpenSSL headers for the vendored librdkafka (rdkafka's
# `cmake-build` feature), and the Rust toolchain's rustfmt and clippy. Safe to run repeatedly.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need=()
for pkg in build-essential cmake pkg-config zlib1g-dev libcurl4-openssl-dev libssl-dev curl ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { log "no Rust toolchain: install rustup (https://rustup.rs) and run again"; exit 1; }
if command -v rustup >/dev/null; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi
