//! Deploying one commit to an ECS service.

pub mod taskdef;
