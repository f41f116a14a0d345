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
# The end-to-end suite again, every slipway's state in a DynamoDB table (on the emulator).
# Skipped here: what only the SQLite journal has (its file, lock, writer, backups; tests that
# edit journal.db), and the tests that pick their own engine (store*, provision's, replicas).
echo "end-to-end tests on the DynamoDB engine (SLIPWAY_TEST_STORE=dynamodb):"
SLIPWAY_TEST_STORE=dynamodb cargo test --test it -- --test-threads "${SLIPWAY_TEST_THREADS:-4}" \
  --skip backup:: \
  --skip journal_lock:: \
  --skip intake::a_second_slipway_told_not_to_wait_refuses_to_start_naming_the_first \
  --skip intake_history::a_stalled_journal_answers_503_with_retry_after_and_readyz_says_why \
  --skip hardening::the_journal_is_private_whatever_the_umask \
  --skip hardening::the_public_readyz_writes_nothing_and_tells_no_detail \
  --skip notify_outbox::a_notification_given_up_by_age_shows_why_in_the_api_the_status_page_and_metrics \
  --skip cli::without_credentials_readyz_says_why_and_the_log_names_the_source_tried \
  --skip iam_policy:: \
  --skip deploy_files:: \
  --skip proxy_selftest:: \
  --skip store:: \
  --skip store_copy:: \
  --skip store_dynamodb:: \
  --skip replicas::
echo "local pipeline (deploy/local-pipeline.sh --ci):"
deploy/local-pipeline.sh --ci --github
