//! AWS clients and what slipway makes of their errors.
//!
//! Clients come from `aws_config::defaults(BehaviorVersion::latest())`, so `AWS_REGION`,
//! `AWS_PROFILE`, the credential chain and `AWS_ENDPOINT_URL` work as everywhere else.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_codebuild::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// The AWS clients slipway uses, built once and handed to the parts that need them.
#[derive(Clone, Debug)]
pub struct Clients {
    pub codebuild: aws_sdk_codebuild::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub sts: aws_sdk_sts::Client,
    /// For backups to `s3://` (issue 21). Path-style addressing when an endpoint is set (an
    /// emulator or a VPC endpoint), so a bucket name needs no DNS of its own.
    pub s3: aws_sdk_s3::Client,
    /// The DynamoDB engine's table (`[store] engine = "dynamodb"`, issue 25).
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub async fn from_env() -> Clients {
        Clients::from_config(&shared_config().await)
    }
}

/// How often the SDK tries one call: the only retry layer under slipway's own schedules (the
/// journaled StartBuild retries, the rollout polls). Throttling, 5xx, timeouts and connection
/// failures are retried with jittered exponential backoff.
pub const MAX_ATTEMPTS: u32 = 5;

/// The SDK configuration from the environment (region, credential chain, `AWS_ENDPOINT_URL`),
/// with slipway's timeouts and retries.
pub async fn shared_config() -> aws_config::SdkConfig {
    // Attempts may take longer than an SQS long poll (20 s).
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(90))
        .build();
    let retries = RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(10));
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(retries)
        .load()
        .await;
    crate::aws_error::record_endpoint(shared.endpoint_url(), shared.region().map(|r| r.as_ref()));
    shared
}

impl Clients {
    pub fn from_config(shared: &aws_config::SdkConfig) -> Clients {
        // Every call is counted in `slipway_aws_calls_total` (issue 10).
        let calls = crate::metrics::AwsCallCounter;
        Clients {
            codebuild: aws_sdk_codebuild::Client::from_conf(
                aws_sdk_codebuild::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            ecs: aws_sdk_ecs::Client::from_conf(
                aws_sdk_ecs::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            ecr: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            events: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(shared)
                    .interceptor(calls)
                    .force_path_style(shared.endpoint_url().is_some())
                    .build(),
            ),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(shared)
                    .interceptor(calls)
                    .build(),
            ),
        }
    }
}

/// An AWS call that failed, sorted into "try again" and "give up".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AwsError {
    pub retryable: bool,
    /// The service's error code (`ThrottlingException`, …) when there is one.
    pub code: Option<String>,
    pub message: String,
}

const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServerException",
    "RequestTimeout",
    "RequestTimeoutException",
];

impl AwsError {
    pub fn permanent(message: impl Into<String>) -> Self {
        AwsError {
            retryable: false,
            code: None,
            message: message.into(),
        }
    }

    /// Sorts an SDK error. Throttling, 5xx, timeouts and connection failures are retryable;
    /// everything else (no such resource, access denied, invalid input, no credentials) is
    /// permanent. `operation` is `"<Service> <Operation>"`; the message is
    /// `"<operation>: <cause>"` with the cause from [`crate::aws_error::cause`].
    pub fn from_sdk<E>(operation: &str, err: &SdkError<E, HttpResponse>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        use crate::aws_error::Cause;
        let cause = crate::aws_error::cause(operation, err);
        let (retryable, code) = match (&cause, err) {
            (Cause::Service { code, status, .. }, _) => (
                *status >= 500
                    || *status == 429
                    || code
                        .as_deref()
                        .is_some_and(|c| RETRYABLE_CODES.contains(&c)),
                code.clone(),
            ),
            (Cause::AccessDenied { .. } | Cause::NoCredentials(_), SdkError::ServiceError(s)) => {
                (false, s.err().code().map(str::to_owned))
            }
            // The credential chain came up empty before sending (an instance metadata hiccup,
            // a role not yet assumed): as retryable as any failure to send, so a pending build
            // waits for fixed credentials instead of failing for good.
            (Cause::NoCredentials(_), SdkError::DispatchFailure(f)) => (!f.is_user(), None),
            (Cause::AccessDenied { .. } | Cause::NoCredentials(_), _) => (false, None),
            (Cause::CouldNotConnect(_) | Cause::TimedOut, _) => (true, None),
            (Cause::Other(_), SdkError::DispatchFailure(f)) => (!f.is_user(), None),
            (Cause::Other(_), SdkError::ResponseError(_)) => (true, None),
            (Cause::Other(_), _) => (false, None),
        };
        AwsError {
            retryable,
            code,
            message: format!("{operation}: {cause}"),
        }
    }

    pub fn is_throttling(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.contains("Throttl") || c == "TooManyRequestsException")
    }
}
