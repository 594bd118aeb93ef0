#!/usr/bin/env bash
# Installs Bazel 2.1.0 for kiln's real-client end-to-end test
# (tests/bazel_cache.rs) and prints the absolute path of the bazel binary.
#
# Bazel comes from the npm package @bazel/bazel-linux_x64@2.1.0, which ships
# the official self-contained linux-x86_64 binary (with its embedded JDK), so
# no JDK, bazelisk or download from outside the npm registry is needed.
#
# Usage: tests/install-bazel.sh            # installs into $REPO/target/bazel-npm
#        KILN_BAZEL_DIR=/some/dir tests/install-bazel.sh
#
# Idempotent: if the versioned binary is already installed, npm is not run
# again. Only the binary's path goes to
# stdout (npm's chatter goes to stderr), so callers can do
#   export KILN_BAZEL="$(tests/install-bazel.sh)"
set -euo pipefail

readonly BAZEL_VERSION="2.1.0"
readonly NPM_PACKAGE="@bazel/bazel-linux_x64@${BAZEL_VERSION}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${KILN_BAZEL_DIR:-${repo}/target/bazel-npm}"
mkdir -p "${dir}"
dir="$(cd "${dir}" && pwd)"
bin="${dir}/node_modules/@bazel/bazel-linux_x64/bazel-${BAZEL_VERSION}-linux-x86_64"

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install-bazel.sh: only linux x86_64 is supported (got $(uname -s)-$(uname -m))" >&2
    exit 1
fi

if [[ ! -x "${bin}" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-bazel.sh: npm not found; install node/npm first (e.g. apt-get install -y npm)" >&2
        exit 1
    fi
    echo "install-bazel.sh: installing ${NPM_PACKAGE} into ${dir}" >&2
    # --prefix keeps everything inside ${dir}; no package.json/lock is written
    # to the repository.
    npm install --prefix "${dir}" --no-save --no-package-lock --no-audit \
        --no-fund --loglevel=error "${NPM_PACKAGE}" >&2
fi

if [[ ! -x "${bin}" ]]; then
    echo "install-bazel.sh: expected bazel binary not found at ${bin}" >&2
    exit 1
fi

echo "${bin}"
