#!/usr/bin/env bash
# test.sh [CARGO TEST ARGS...]: the README's test command. Installs what the tests run, only what is missing
# (scripts/ci/install-test-deps.sh: apt packages, s3s-fs, Azurite, fake-gcs-server; as root, or through sudo), then
# runs `cargo test --workspace ARGS...`, e.g. `bash scripts/test.sh --test tests transport::`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ci/install-test-deps.sh
exec cargo test --workspace "$@"
