//! What `serve` finds out about AWS before it starts listening: whether the credentials work,
//! and where the build results queue is when slipway.toml does not say.

use crate::aws::{AwsError, Clients};
use crate::config::Config;
use crate::readiness::{credential_source, Readiness};

/// Asks STS who slipway is. On failure slipway still starts (the journal keeps taking pushes),
/// but `/readyz` answers 503 with the reason and the log says which credential source was tried.
pub async fn check_credentials(aws: &Clients, readiness: &Readiness) {
    match aws.sts.get_caller_identity().send().await {
        Ok(me) => {
            tracing::info!(
                account = me.account().unwrap_or("?"),
                arn = me.arn().unwrap_or("?"),
                "AWS credentials accepted"
            );
            readiness.set_credentials_error(None);
        }
        Err(e) => {
            let err = AwsError::from_sdk("STS GetCallerIdentity", &e);
            let source = credential_source(|name| std::env::var(name).ok());
            tracing::error!(
                error = %err,
                credential_source = %source,
                "AWS credentials do not work: slipway takes pushes but cannot build or deploy \
                 until this is fixed (/readyz answers 503)"
            );
            readiness.set_credentials_error(Some(format!("{err} (tried {source})")));
        }
    }
}

/// Without `queue_url` in slipway.toml, looks the queue up by `[provision] queue_name` and puts
/// its URL in `config`. If that fails, build results come only from the reconciler (minutes
/// late): said loudly in the log and by `/readyz`.
pub async fn find_queue(config: &mut Config, aws: &Clients, readiness: &Readiness) {
    if config.queue_url.is_some() {
        return;
    }
    let name = config.provision.queue_name.clone();
    match aws.sqs.get_queue_url().queue_name(&name).send().await {
        Ok(out) if out.queue_url().is_some_and(|u| !u.is_empty()) => {
            let url = out.queue_url().unwrap_or_default().to_owned();
            tracing::info!(queue = %name, queue_url = %url, "found the events queue by name");
            config.queue_url = Some(url);
        }
        result => {
            let why = match result {
                Ok(_) => "GetQueueUrl returned no URL".to_owned(),
                Err(e) => AwsError::from_sdk("SQS GetQueueUrl", &e).message,
            };
            let warning = format!(
                "no events queue (no queue_url, and queue \"{name}\" was not found: {why}): \
                 build results come only from the reconciler, minutes late; run `slipway \
                 provision` or set queue_url"
            );
            tracing::warn!("{warning}");
            readiness.set_queue_warning(Some(warning));
        }
    }
}
