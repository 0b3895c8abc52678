#!/usr/bin/env bash
# Checks, before anything is installed, started or built, that this machine can build the agent:
# a Rust toolchain at least as new as Cargo.toml's rust-version. Each failure says how to fix it.
# (protoc, which etcd-client's build needs, comes from Debian's protobuf-compiler: `make deps`
# installs it, and every make target that builds runs that first.)
set -euo pipefail
cd "$(dirname "$0")/.."

need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
CARGO=${CARGO:-cargo}
RUSTC=${RUSTC:-rustc}
rustup_line="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""

if ! command -v "$CARGO" >/dev/null 2>&1 || ! command -v "$RUSTC" >/dev/null 2>&1; then
  echo "etcd-sync is built with Rust >= $need (cargo and rustc), which this machine lacks. Install it with rustup:" >&2
  echo "  $rustup_line" >&2
  exit 1
fi
have=$("$RUSTC" --version | awk '{print $2}')
have=${have%%-*}
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "etcd-sync needs Rust >= $need, but $RUSTC is $have (Debian's own rustc is too old). Install a current toolchain with rustup:" >&2
  echo "  $rustup_line" >&2
  echo "(or, if rustup is there already: rustup update stable)" >&2
  exit 1
fi
