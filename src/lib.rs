//! slipway: GitHub push → CodeBuild → ECS Fargate, without CodePipeline.
//!
//! The file tree follows the flow (see `docs/design.md`):
//! `webhook` (intake) → `journal` (durable state) → `build` (StartBuild worker) →
//! `events` (CodeBuild completion via SQS) → `deploy` (task definition swap, rollout watch).
//! `http` is the only module that knows HTTP; `webhook`, `chat` and `ops` are its domains.
//! Modules are private unless the binary or the tests use them (some stay `pub` only because
//! they hold items used by nothing else yet).

mod accounts;
mod aws;
mod aws_error;
mod backup;
mod build;
pub mod chat;
pub mod cli;
mod client;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod events;
pub mod github;
mod healthcheck;
mod http;
pub mod ids;
pub mod image;
mod init;
mod metrics;
mod notify;
mod ops;
mod page;
mod promote;
pub mod provision;
mod push_filter;
pub mod readiness;
pub mod replicas;
mod startup;
pub mod store;
pub mod webhook;
mod webhook_keys;

#[cfg(test)]
mod tests_imports;
