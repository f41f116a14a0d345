#!/usr/bin/env bash
# Replicas benchmark (issue 26), tests/it/replicas.rs: each kill point's test run RUNS times,
# one at a time (two `slipway serve` on one DynamoDB table on moto, lease period 3 s). Each
# run asserts nothing lost and nothing twice (one UpdateService applied, no second revision,
# one rollback; every acknowledged delivery kept and every push built once); this prints,
# per test, how many runs passed and the time from kill -9 (or SIGTERM) until the other
# replica held the deploy's lease: min / median / max.
#
# Usage: scripts/bench-replicas.sh        env: RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
unset SLIPWAY_TEST_STORE
cargo test --test it --no-run 2>/dev/null
tests=(
  a_replica_killed_after_register_task_definition_the_other_finishes_the_deploy
  a_replica_killed_after_update_service_the_other_finishes_the_deploy_without_a_second_one
  a_replica_killed_while_watching_the_other_finishes_the_deploy
  a_rollout_failing_after_a_takeover_is_rolled_back_once
  sigterm_on_the_replica_holding_a_deploy_hands_it_over
  two_replicas_under_webhook_load_killed_three_times_lose_nothing_and_build_each_push_once
)
printf '%-92s %6s %s\n' test passed 'takeover ms (min / median / max)'
for t in "${tests[@]}"; do
  passed=0
  times=()
  for _ in $(seq "$RUNS"); do
    out=$(cargo test -q --test it "replicas::$t" -- --exact --nocapture 2>&1 || true)
    if grep -q '^test result: ok. 1 passed' <<<"$out"; then passed=$((passed + 1)); fi
    while read -r ms; do times+=("$ms"); done < <(grep -oE 'takeover after [^:]+: [0-9]+ ms' <<<"$out" | grep -oE '[0-9]+ ms$' | cut -d' ' -f1)
  done
  if ((${#times[@]})); then
    sorted=($(printf '%s\n' "${times[@]}" | sort -n))
    n=${#sorted[@]}
    summary="${sorted[0]} / ${sorted[$((n / 2))]} / ${sorted[$((n - 1))]}"
  else
    summary="-"
  fi
  printf '%-92s %3s/%-2s %s\n' "$t" "$passed" "$RUNS" "$summary"
done
