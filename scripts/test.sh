#!/usr/bin/env bash
# Runs every test: installs the emulator if needed, then cargo's checks and tests, then the
# local pipeline in CI mode. The tests start the emulator (and slipway) themselves, on free
# ports of 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-emulator.sh
scripts/setup-github-contract.sh
scripts/setup-test-tools.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets -- --test-threads "${SLIPWAY_TEST_THREADS:-4}"
echo "local pipeline (deploy/local-pipeline.sh --ci):"
deploy/local-pipeline.sh --ci --github
