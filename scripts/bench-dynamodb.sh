#!/usr/bin/env bash
# DynamoDB engine benchmark (issue 25), tests/it/bench_store.rs:
# 1. slipway on `[store] engine = "dynamodb"` against moto, behind the tests' proxy (which
#    counts every DynamoDB call by operation) and a meter that reads each written item before
#    and after its write and every item a read reads: requests, write and read request units
#    (computed from item sizes by DynamoDB's documented rules, not billed) per accepted,
#    ignored and duplicate delivery and per deploy, and slipway's idle polling per second.
# 2. Intake beside SQLite in the same run: new pushes sent by concurrent senders to a slipway
#    on SQLite and one on DynamoDB (moto), alternating; accepted deliveries per second and the
#    webhook answer's p50/p99. moto is not DynamoDB: compare the engines, not with AWS.
#
# Usage: scripts/bench-dynamodb.sh
#   env: BENCH_ROUNDS=3 (events of each kind), BENCH_IDLE_SECS=10, BENCH_DELIVERIES=300 (per
#        engine), BENCH_SENDERS=4
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_ROUNDS=${BENCH_ROUNDS:-3}
export BENCH_IDLE_SECS=${BENCH_IDLE_SECS:-10}
export BENCH_DELIVERIES=${BENCH_DELIVERIES:-300}
export BENCH_SENDERS=${BENCH_SENDERS:-4}
# The benchmark sets each slipway's engine itself.
unset SLIPWAY_TEST_STORE
cargo test --test it bench_store::bench_dynamodb -- --ignored --nocapture 2>&1 \
    | sed -n '/^BENCH DYNAMODB$/,/^test /p' | grep -v '^test '
