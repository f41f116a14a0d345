//! The one place that turns an AWS SDK error into a sentence for people.
//!
//! Every message names the service and the operation (`ECS DescribeServices: …`) and then one of:
//! the service's error code and message, `could not connect to <endpoint>`, `no credentials
//! found`, `access denied: <action>`, `timed out`. It never prints the SDK's Debug forms: the CLI,
//! the journal's reasons, the API and the notifications all show what comes out of here.

use std::error::Error;
use std::sync::OnceLock;

use aws_sdk_codebuild::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Where the clients send requests, recorded once when they are built, so a connection failure
/// can say which endpoint could not be reached (the SDK's error does not carry it).
static ENDPOINT: OnceLock<Endpoint> = OnceLock::new();

#[derive(Debug)]
struct Endpoint {
    url: Option<String>,
    region: Option<String>,
}

/// Records the endpoint override and region the clients use (first call wins).
pub fn record_endpoint(url: Option<&str>, region: Option<&str>) {
    let _ = ENDPOINT.set(Endpoint {
        url: url.map(str::to_owned),
        region: region.map(str::to_owned),
    });
}

/// The endpoint `service` (e.g. `ECS`) is reached at, as well as slipway knows it: the SDK's
/// service-specific override (`AWS_ENDPOINT_URL_DYNAMODB`, …) before the general one.
pub fn endpoint_of(service: &str) -> String {
    let specific = format!(
        "AWS_ENDPOINT_URL_{}",
        service.to_ascii_uppercase().replace(' ', "_")
    );
    if let Some(url) = std::env::var(specific).ok().filter(|u| !u.is_empty()) {
        return url;
    }
    match ENDPOINT.get() {
        Some(Endpoint { url: Some(url), .. }) => url.clone(),
        Some(Endpoint {
            region: Some(region),
            ..
        }) => format!(
            "https://{}.{region}.amazonaws.com",
            endpoint_prefix(service)
        ),
        _ => format!("the {service} endpoint"),
    }
}

fn endpoint_prefix(service: &str) -> String {
    match service {
        "EventBridge" => "events".to_owned(),
        "ECR" => "api.ecr".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

/// The IAM action of an operation label: `ECS DescribeServices` → `ecs:DescribeServices`.
pub fn iam_action(operation: &str) -> String {
    match operation.split_once(' ') {
        Some((service, op)) => {
            let prefix = match service {
                "EventBridge" => "events".to_owned(),
                other => other.to_ascii_lowercase(),
            };
            format!("{prefix}:{op}")
        }
        None => operation.to_owned(),
    }
}

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "AuthorizationError",
];

const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
];

/// What went wrong, without the operation in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The service answered with an error.
    Service {
        code: Option<String>,
        status: u16,
        message: String,
    },
    AccessDenied {
        action: String,
        /// The service's code (`AccessDeniedException`, …), None for a bare 403.
        code: Option<String>,
        message: String,
    },
    /// The credential chain produced nothing, or AWS rejected what it produced.
    NoCredentials(String),
    CouldNotConnect(String),
    TimedOut,
    /// Anything else: the error chain in Display form.
    Other(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Service {
                code,
                status,
                message,
            } => {
                match code {
                    Some(code) => write!(f, "{code}")?,
                    None => write!(f, "HTTP {status}")?,
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Cause::AccessDenied {
                action,
                code,
                message,
            } => {
                write!(f, "access denied: {action}")?;
                let detail: Vec<&str> = [code.as_deref().unwrap_or(""), message.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
                if !detail.is_empty() {
                    write!(f, " ({})", detail.join(": "))?;
                }
                Ok(())
            }
            Cause::NoCredentials(why) if why.is_empty() => write!(f, "no credentials found"),
            Cause::NoCredentials(why) => write!(f, "no credentials found: {why}"),
            Cause::CouldNotConnect(endpoint) => write!(f, "could not connect to {endpoint}"),
            Cause::TimedOut => write!(f, "timed out"),
            Cause::Other(text) => write!(f, "{text}"),
        }
    }
}

/// Sorts an SDK error of `operation` (`"<Service> <Operation>"`, e.g. `"ECS UpdateService"`).
pub fn cause<E>(operation: &str, err: &SdkError<E, HttpResponse>) -> Cause
where
    E: ProvideErrorMetadata + Error + 'static,
{
    let service = operation.split_once(' ').map_or(operation, |(s, _)| s);
    match err {
        SdkError::ServiceError(failure) => {
            let inner = failure.err();
            let status = failure.raw().status().as_u16();
            let code = inner.code().map(str::to_owned);
            let message = inner.message().unwrap_or("").to_owned();
            let code_str = code.as_deref().unwrap_or("");
            if ACCESS_DENIED_CODES.contains(&code_str) || (code.is_none() && status == 403) {
                Cause::AccessDenied {
                    action: iam_action(operation),
                    code,
                    message,
                }
            } else if CREDENTIAL_CODES.contains(&code_str) {
                Cause::NoCredentials(format!("{code_str}: {message}"))
            } else {
                Cause::Service {
                    code,
                    status,
                    message,
                }
            }
        }
        SdkError::TimeoutError(_) => Cause::TimedOut,
        SdkError::DispatchFailure(failure) => {
            let text = chain(err);
            if mentions_credentials(err) {
                Cause::NoCredentials(String::new())
            } else if failure.is_timeout() {
                Cause::TimedOut
            } else if failure.is_io() {
                Cause::CouldNotConnect(endpoint_of(service))
            } else {
                Cause::Other(text)
            }
        }
        SdkError::ResponseError(_) => Cause::Other(format!("unreadable response: {}", chain(err))),
        _ if mentions_credentials(err) => Cause::NoCredentials(String::new()),
        _ => Cause::Other(chain(err)),
    }
}

/// Whether the error chain says the credential chain came up empty. The SDK reports that as a
/// dispatch failure of kind "other", the same as any other failure before sending.
fn mentions_credentials(err: &(dyn Error + 'static)) -> bool {
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        next = e.source();
    }
    let text = chain(err).to_ascii_lowercase();
    text.contains("credentials") || text.contains("credential provider")
}

/// The Display forms of an error and its sources, joined with ": ", repeats dropped.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_actions_use_the_iam_prefix() {
        assert_eq!(iam_action("ECS DescribeServices"), "ecs:DescribeServices");
        assert_eq!(iam_action("EventBridge PutRule"), "events:PutRule");
        assert_eq!(iam_action("CodeBuild StartBuild"), "codebuild:StartBuild");
    }

    #[test]
    fn causes_read_as_sentences() {
        let denied = Cause::AccessDenied {
            action: "ecs:UpdateService".into(),
            code: Some("AccessDeniedException".into()),
            message: "User: arn:aws:iam::1:user/x is not authorized".into(),
        };
        assert_eq!(
            denied.to_string(),
            "access denied: ecs:UpdateService (AccessDeniedException: User: \
             arn:aws:iam::1:user/x is not authorized)"
        );
        assert_eq!(
            Cause::CouldNotConnect("http://127.0.0.1:9".into()).to_string(),
            "could not connect to http://127.0.0.1:9"
        );
        assert_eq!(
            Cause::NoCredentials(String::new()).to_string(),
            "no credentials found"
        );
        let service = Cause::Service {
            code: Some("ClusterNotFoundException".into()),
            status: 400,
            message: "Cluster not found.".into(),
        };
        assert_eq!(
            service.to_string(),
            "ClusterNotFoundException: Cluster not found."
        );
    }
}
