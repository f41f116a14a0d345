//! CodeBuild completion events, delivered by EventBridge through SQS.

pub mod codebuild;
