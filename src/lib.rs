//! slipway: GitHub push → CodeBuild → ECS Fargate, without CodePipeline.
//!
//! The file tree follows the flow (see `docs/design.md`):
//! `webhook` (intake) → `journal` (durable state) → `build` (StartBuild worker) →
//! `events` (CodeBuild completion via SQS) → `deploy` (task definition swap, rollout watch).

pub mod api;
pub mod aws;
pub mod build;
pub mod chat;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod events;
pub mod ids;
pub mod image;
pub mod journal;
pub mod notify;
pub mod ops;
pub mod provision;
pub mod server;
pub mod webhook;
