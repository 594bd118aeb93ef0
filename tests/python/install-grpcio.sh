#!/usr/bin/env bash
# Installs Python grpcio + grpcio-tools (pinned, from PyPI) for kiln's real-client tests
# (tests/unix_socket_clients.rs) and prints the directory to put on PYTHONPATH.
#
# The packages go into $REPO/target/python-grpcio (or $KILN_GRPCIO_DIR) with
# `pip install --target`, so the system Python is left alone (and PEP 668's
# externally-managed check does not apply). Idempotent: once installed, pip is
# not run again. Only the directory goes to stdout; pip's output goes to stderr.
set -euo pipefail

readonly GRPCIO_VERSION="1.85.1"
# An implementation of BLAKE3 independent of kiln's (the Rust `blake3` crate's Python binding is
# a separate build; digests computed here check kiln's).
readonly BLAKE3_VERSION="1.0.8"
# zstd through the C libzstd (python-zstandard), independent of kiln's zstd crate.
readonly ZSTANDARD_VERSION="0.23.0"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${KILN_GRPCIO_DIR:-${repo}/target/python-grpcio}"
stamp="${dir}/.kiln-installed-${GRPCIO_VERSION}-blake3-${BLAKE3_VERSION}-zstandard-${ZSTANDARD_VERSION}"

python="${PYTHON:-python3}"
if ! command -v "${python}" >/dev/null 2>&1; then
    echo "install-grpcio.sh: ${python} not found; install python3 and pip first" >&2
    exit 1
fi

if [[ ! -f "${stamp}" ]]; then
    tmp="${dir}.tmp.$$"
    rm -rf "${tmp}"
    mkdir -p "$(dirname "${dir}")"
    echo "install-grpcio.sh: installing grpcio==${GRPCIO_VERSION} grpcio-tools==${GRPCIO_VERSION} blake3==${BLAKE3_VERSION} zstandard==${ZSTANDARD_VERSION} into ${dir}" >&2
    "${python}" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "${tmp}" "grpcio==${GRPCIO_VERSION}" "grpcio-tools==${GRPCIO_VERSION}" \
        "blake3==${BLAKE3_VERSION}" "zstandard==${ZSTANDARD_VERSION}" >&2
    touch "${tmp}/$(basename "${stamp}")"
    rm -rf "${dir}"
    mv "${tmp}" "${dir}"
fi

if ! PYTHONPATH="${dir}" "${python}" -c 'import grpc, grpc_tools.protoc, blake3, zstandard' >&2; then
    echo "install-grpcio.sh: grpcio in ${dir} does not import; remove the directory and retry" >&2
    exit 1
fi

echo "${dir}"
