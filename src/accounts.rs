//! Other AWS accounts (issue 27, item 3): the ECS and ECR clients an app's calls go through.
//!
//! An app with `role_arn` has every ECS and ECR call made with credentials from STS
//! AssumeRole of that role (with its `external_id`); every other app uses slipway's own
//! credentials. One [`RoleCredentials`] per role keeps STS's answer and asks again
//! [`REFRESH_BEFORE`] its expiry (credentials last [`SESSION`]), so no call goes out with
//! credentials about to expire; a refusal is not kept, the next call asks STS again, and
//! while STS fails the kept credentials serve until they actually expire. The clients have no
//! identity cache of their own (the SDK's would keep credentials until seconds before
//! expiry): this is the one cache.
//!
//! STS is called through slipway's STS client (the endpoint, retries and call metrics every
//! other call has), not `aws_config::sts::AssumeRoleProvider`: that provider keeps nothing
//! itself, and the deploy preflight needs STS's refusal as a sentence of its own
//! ([`AppClients::check_role`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use futures_util::future::BoxFuture;

use crate::aws::{AwsError, Clients};
use crate::config::account::AccountRole;
use crate::config::AppConfig;

/// Credentials are asked for again this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// While STS fails, kept credentials still serve until this long before they expire (time for
/// a call made with them to finish).
pub const LAST_USE_BEFORE: Duration = Duration::from_secs(30);
/// How long assumed credentials last (AssumeRole's `DurationSeconds`; 1 hour is STS's default
/// and within every role's maximum session duration).
pub const SESSION: Duration = Duration::from_secs(60 * 60);

/// Why an app's role could not be assumed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "cannot assume role {arn} (account {account}): {cause}; its trust policy must let \
     slipway's account assume it{external} (`slipway provision --policy` prints it)"
)]
pub struct AssumeError {
    pub arn: String,
    pub account: String,
    /// `, with sts:ExternalId`, when the role is assumed with one.
    external: &'static str,
    pub cause: AwsError,
}

type Fetch = Box<dyn Fn() -> BoxFuture<'static, Result<Credentials, AwsError>> + Send + Sync>;

/// One role's credentials, kept until [`REFRESH_BEFORE`] their expiry; while STS fails,
/// until [`LAST_USE_BEFORE`] it.
pub struct RoleCredentials {
    role: AccountRole,
    fetch: Fetch,
    kept: tokio::sync::Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("role", &self.role.arn)
            .finish_non_exhaustive()
    }
}

impl RoleCredentials {
    /// Credentials of `role`, from STS AssumeRole through `sts` (slipway's own credentials).
    pub fn assume(sts: aws_sdk_sts::Client, role: AccountRole) -> RoleCredentials {
        let fetch_role = role.clone();
        let fetch: Fetch = Box::new(move || {
            let (sts, role) = (sts.clone(), fetch_role.clone());
            Box::pin(async move {
                let out = sts
                    .assume_role()
                    .role_arn(&role.arn)
                    .role_session_name("slipway")
                    .set_external_id(role.external_id.clone())
                    .duration_seconds(SESSION.as_secs() as i32)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("STS AssumeRole", &e))?;
                let c = out.credentials().ok_or_else(|| {
                    AwsError::permanent("STS AssumeRole: the answer carries no credentials")
                })?;
                let expiry = SystemTime::try_from(*c.expiration()).ok();
                Ok(Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_owned()),
                    expiry,
                    "slipway-assume-role",
                ))
            })
        });
        RoleCredentials::with_fetch(role, fetch)
    }

    fn with_fetch(role: AccountRole, fetch: Fetch) -> RoleCredentials {
        RoleCredentials {
            role,
            fetch,
            kept: tokio::sync::Mutex::new(None),
        }
    }

    /// Credentials valid for at least [`REFRESH_BEFORE`]: the kept ones, or new ones from STS
    /// (one request at a time: callers waiting meanwhile get its answer). While STS fails, the
    /// kept ones as long as they are valid for [`LAST_USE_BEFORE`].
    pub async fn credentials(&self) -> Result<Credentials, AssumeError> {
        let mut kept = self.kept.lock().await;
        if let Some(c) = kept.as_ref() {
            let fresh = c
                .expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE);
            if fresh {
                return Ok(c.clone());
            }
        }
        match (self.fetch)().await {
            Ok(c) => {
                tracing::info!(role = %self.role.arn, "assumed the role");
                *kept = Some(c.clone());
                Ok(c)
            }
            Err(cause) => {
                // A throttled or failing STS does not stop calls credentials still allow.
                let usable = kept.as_ref().filter(|c| {
                    c.expiry()
                        .is_some_and(|at| at > SystemTime::now() + LAST_USE_BEFORE)
                });
                if let Some(c) = usable {
                    tracing::warn!(role = %self.role.arn, error = %cause,
                        "cannot renew the role's credentials yet; the current ones still serve");
                    return Ok(c.clone());
                }
                *kept = None;
                Err(AssumeError {
                    arn: self.role.arn.clone(),
                    account: self.role.account.clone(),
                    external: if self.role.external_id.is_some() {
                        ", with sts:ExternalId"
                    } else {
                        ""
                    },
                    cause,
                })
            }
        }
    }
}

impl ProvideCredentials for RoleCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.credentials()
                .await
                .map_err(CredentialsError::provider_error) as provider::Result
        })
    }
}

/// The clients one app's ECS and ECR calls go through.
#[derive(Debug, Clone)]
pub struct AppClients {
    pub ecs: aws_sdk_ecs::Client,
    pub ecr: aws_sdk_ecr::Client,
    /// The role they are made as; None: slipway's own credentials.
    role: Option<Arc<RoleCredentials>>,
}

impl AppClients {
    /// Whether the app's role can be assumed now (Ok for an app without one). The deploy
    /// preflight asks first, so a refusal reads as itself rather than as every call failing.
    pub async fn check_role(&self) -> Result<(), AssumeError> {
        match &self.role {
            Some(role) => role.credentials().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The role's account, when the app has a role.
    pub fn account(&self) -> Option<&str> {
        self.role.as_ref().map(|r| r.role.account.as_str())
    }
}

/// Every app's clients.
#[derive(Debug, Clone)]
pub struct Accounts {
    own: AppClients,
    by_app: Arc<HashMap<String, AppClients>>,
}

impl Accounts {
    /// Clients for `apps`: slipway's own for apps without `role_arn`, one set per role for
    /// the others (apps naming the same role and external id share its credentials).
    pub fn new(aws: &Clients, apps: &[AppConfig]) -> Accounts {
        let own = AppClients {
            ecs: aws.ecs.clone(),
            ecr: aws.ecr.clone(),
            role: None,
        };
        let mut roles: HashMap<AccountRole, AppClients> = HashMap::new();
        let mut by_app = HashMap::new();
        for app in apps {
            let Some(role) = &app.role else { continue };
            let clients = roles
                .entry(role.clone())
                .or_insert_with(|| {
                    let creds = Arc::new(RoleCredentials::assume(aws.sts.clone(), role.clone()));
                    AppClients {
                        ecs: aws_sdk_ecs::Client::from_conf(
                            aws.ecs
                                .config()
                                .to_builder()
                                .identity_cache(aws_sdk_ecs::config::IdentityCache::no_cache())
                                .credentials_provider(ShareCreds(creds.clone()))
                                .build(),
                        ),
                        ecr: aws_sdk_ecr::Client::from_conf(
                            aws.ecr
                                .config()
                                .to_builder()
                                .identity_cache(aws_sdk_ecr::config::IdentityCache::no_cache())
                                .credentials_provider(ShareCreds(creds.clone()))
                                .build(),
                        ),
                        role: Some(creds),
                    }
                })
                .clone();
            by_app.insert(app.name.to_string(), clients);
        }
        Accounts {
            own,
            by_app: Arc::new(by_app),
        }
    }

    /// Slipway's own clients for every app (no app has a role).
    pub fn own(ecs: aws_sdk_ecs::Client, ecr: aws_sdk_ecr::Client) -> Accounts {
        Accounts {
            own: AppClients {
                ecs,
                ecr,
                role: None,
            },
            by_app: Arc::default(),
        }
    }

    /// The clients of `app`.
    pub fn of(&self, app: &AppConfig) -> &AppClients {
        self.by_app.get(app.name.as_str()).unwrap_or(&self.own)
    }

    /// The same accounts with every client rebuilt by `ecs` and `ecr` (an interceptor added).
    pub fn map(
        &self,
        ecs: impl Fn(&aws_sdk_ecs::Client) -> aws_sdk_ecs::Client,
        ecr: impl Fn(&aws_sdk_ecr::Client) -> aws_sdk_ecr::Client,
    ) -> Accounts {
        let one = |c: &AppClients| AppClients {
            ecs: ecs(&c.ecs),
            ecr: ecr(&c.ecr),
            role: c.role.clone(),
        };
        Accounts {
            own: one(&self.own),
            by_app: Arc::new(
                self.by_app
                    .iter()
                    .map(|(k, v)| (k.clone(), one(v)))
                    .collect(),
            ),
        }
    }
}

/// An `Arc<RoleCredentials>` as a credentials provider (the SDK takes providers by value).
#[derive(Debug, Clone)]
struct ShareCreds(Arc<RoleCredentials>);

impl ProvideCredentials for ShareCreds {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn role() -> AccountRole {
        AccountRole {
            arn: "arn:aws:iam::222222222222:role/slipway-deploy".into(),
            account: "222222222222".into(),
            external_id: None,
        }
    }

    /// A role whose STS answers last `lasting` (None: STS refuses), counting the requests.
    fn counted(lasting: Option<Duration>) -> (RoleCredentials, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let fetch: Fetch = Box::new(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match lasting {
                    Some(d) => Ok(Credentials::new(
                        format!("ASIA{n}"),
                        "secret",
                        Some("token".into()),
                        Some(SystemTime::now() + d),
                        "test",
                    )),
                    None => Err(AwsError::permanent(
                        "STS AssumeRole: access denied: sts:AssumeRole",
                    )),
                }
            })
        });
        (RoleCredentials::with_fetch(role(), fetch), asked)
    }

    #[tokio::test]
    async fn credentials_are_kept_until_shortly_before_they_expire() {
        let (creds, asked) = counted(Some(SESSION));
        let first = creds.credentials().await.unwrap();
        let again = creds.credentials().await.unwrap();
        assert_eq!(first.access_key_id(), again.access_key_id());
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        // Credentials within REFRESH_BEFORE of their expiry are asked for again, every time.
        let (creds, asked) = counted(Some(REFRESH_BEFORE - Duration::from_secs(1)));
        let first = creds.credentials().await.unwrap();
        let second = creds.credentials().await.unwrap();
        assert_ne!(first.access_key_id(), second.access_key_id());
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn while_sts_fails_credentials_that_still_work_serve() {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        // The first answer is inside the refresh window; every later request fails.
        let fetch: Fetch = Box::new(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    Ok(Credentials::new(
                        "ASIA0",
                        "secret",
                        Some("token".into()),
                        Some(SystemTime::now() + REFRESH_BEFORE - Duration::from_secs(60)),
                        "test",
                    ))
                } else {
                    Err(AwsError::permanent("STS AssumeRole: ThrottlingException"))
                }
            })
        });
        let creds = RoleCredentials::with_fetch(role(), fetch);
        assert_eq!(creds.credentials().await.unwrap().access_key_id(), "ASIA0");
        assert_eq!(creds.credentials().await.unwrap().access_key_id(), "ASIA0");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "STS was asked again");
    }

    #[tokio::test]
    async fn a_refusal_is_not_kept_and_says_what_to_fix() {
        let (creds, asked) = counted(None);
        let err = creds.credentials().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot assume role arn:aws:iam::222222222222:role/slipway-deploy (account \
             222222222222): STS AssumeRole: access denied: sts:AssumeRole; its trust policy \
             must let slipway's account assume it (`slipway provision --policy` prints it)"
        );
        creds.credentials().await.unwrap_err();
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked again, not kept");
    }
}
