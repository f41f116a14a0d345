#!/usr/bin/env bash
# The whole pipeline on this machine, against the AWS emulator, no AWS account:
# emulator → sample resources → slipway provision → slipway serve → a signed push →
# the build's completion event → the deploy and its rollout. Then slipway keeps running
# for you to try the CLI; Ctrl-C stops everything.
#
#   deploy/local-pipeline.sh          interactive
#   deploy/local-pipeline.sh --ci     check the result and exit (CI runs this)
#   deploy/local-pipeline.sh --github also show the GitHub statuses and deployments (against a fake)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-emulator.sh
echo "building slipway (the first build takes a few minutes)"
cargo build --quiet --bin slipway --example emulator_proxy --example github_fake
exec .venv/bin/python deploy/local/pipeline.py "$@"
