#!/usr/bin/env bash
# kiln's whole test suite: installs the real Bazel client the end-to-end tests use (npm package
# @bazel/bazel-linux_x64@2.1.0, into target/bazel-npm, once), checks the lint levels of
# Cargo.toml and clippy.toml (any clippy warning fails the suite), then runs `cargo test`.
# Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KILN_BAZEL="$(bash tests/install-bazel.sh)"
export KILN_BAZEL
cargo clippy --locked --all-targets -- -D warnings
# The library as the binary builds it (without the `testing` feature the targets above turn on).
cargo clippy --locked --lib --bins -- -D warnings
exec cargo test --locked "$@"
