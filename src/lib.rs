//! slipway: GitHub push → CodeBuild → ECS Fargate, without CodePipeline.
//!
//! The file tree follows the flow (see `docs/design.md`):
//! `webhook` (intake) → `journal` (durable state) → `build` (StartBuild worker) →
//! `events` (CodeBuild completion via SQS) → `deploy` (task definition swap, rollout watch).
//! `http` is the only module that knows HTTP; `webhook`, `chat` and `ops` are its domains.
//! Modules are private unless the binary or the tests use them (some stay `pub` only because
//! they hold items used by nothing else yet).

mod aws;
mod build;
pub mod chat;
pub mod cli;
mod client;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod events;
mod http;
pub mod ids;
pub mod image;
pub mod journal; // pub for the benchmark's seeder (examples/bench_tool.rs) and the retention test
mod notify;
mod ops;
pub mod provision;
pub mod webhook;
