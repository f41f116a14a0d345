#!/usr/bin/env bash
# ECS events benchmark (issue 22): against the emulator and the tests' proxy (which makes ECS
# rollouts progress), slipway with its default polling (5 s doubling to 30 s) deploys
# alternately with ECS's deployment events (IN_PROGRESS when the watch starts, COMPLETED when
# the rollout completes, written into slipway's queue as EventBridge delivers them) and
# without any (the polling baseline), in the same run. Each deploy's rollout runs 40 s + 7 s
# per run before ECS completes it, so the polls fall at different phases.
# Reports per deploy: the time from ECS's COMPLETED to `succeeded` in the journal, and the AWS
# calls a minute while watching (SQS and CodeBuild calls not counted).
#
# Usage: scripts/bench-ecs-events.sh
#   env: BENCH_RUNS=3 (deploys per mode, at most 3)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_RUNS=${BENCH_RUNS:-3}
cargo test --test it bench_ecs_events -- --ignored --nocapture 2>&1 \
    | sed -n '/^BENCH ECS EVENTS$/,/^test /p' | grep -v '^test '
