#!/usr/bin/env bash
# ECS events benchmark (issue 22): against the emulator and the tests' proxy (which makes ECS
# rollouts progress), slipway with its default polling (5 s doubling to 30 s; 60 s while ECS's
# events arrive) deploys alternately with ECS's deployment events and without any (the
# polling baseline), in the same run. With events, SERVICE_DEPLOYMENT_IN_PROGRESS is written
# into slipway's queue (as EventBridge delivers it) when the watch starts and again every
# BENCH_EVENT_EVERY_SECS, and SERVICE_DEPLOYMENT_COMPLETED when the rollout completes. Each
# rollout runs BENCH_WATCH_SECS (+ 7 s per deploy, so the polls fall at different phases).
# Reports per deploy: the time from ECS's COMPLETED to `succeeded` in the journal, and the AWS
# calls (ECS and ECR; SQS and CodeBuild not counted) at start-up (the deploy until it watches,
# and the watch's first minute), in the steady state (per minute, until ECS completes) and at
# completion.
#
# Usage: scripts/bench-ecs-events.sh
#   env: BENCH_RUNS=1 (deploys per mode, at most 3), BENCH_WATCH_SECS=300,
#        BENCH_EVENT_EVERY_SECS=45
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_RUNS=${BENCH_RUNS:-1}
export BENCH_WATCH_SECS=${BENCH_WATCH_SECS:-300}
export BENCH_EVENT_EVERY_SECS=${BENCH_EVENT_EVERY_SECS:-45}
cargo test --test it bench_ecs_events -- --ignored --nocapture 2>&1 \
    | sed -n '/^BENCH ECS EVENTS$/,/^test /p' | grep -v '^test '
