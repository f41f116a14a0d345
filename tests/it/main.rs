//! End-to-end tests: slipway over real HTTP on 127.0.0.1, AWS through the real SDK clients
//! against the emulator (moto, server mode), with a controllable proxy in front of it where
//! the emulator cannot behave like AWS.

mod support;

mod backup;
mod bench_store;
mod chat;
mod cli;
mod deploy;
mod deploy_ecs;
mod deploy_files;
mod deploy_safety;
mod durability;
mod edge;
mod event_trust;
mod github;
mod hardening;
mod healthcheck;
mod iam_policy;
mod intake;
mod intake_history;
mod journal_lock;
mod metrics;
mod monorepo;
mod notify_outbox;
mod ops;
mod promote;
mod promote_accounts;
mod provision;
mod proxy_selftest;
mod recovery_ready;
mod replicas;
mod status_page;
mod store;
mod store_copy;
mod store_dynamodb;
mod tags;
