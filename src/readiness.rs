//! What `serve` found out at start that decides whether it is ready: whether the AWS
//! credentials work (STS GetCallerIdentity) and where build results come from (the SQS queue,
//! or only the reconciler). `/readyz` reads it; nothing else writes it after start. Each
//! [`Reason`] has a severity, the detail the admin listener shows, and the short generic label
//! the public listener shows instead.

use std::sync::RwLock;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Readiness {
    facts: RwLock<Facts>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Facts {
    /// Why slipway cannot call AWS (None: the credentials were accepted).
    pub credentials_error: Option<String>,
    /// Set when no queue was found: build results then come only from the reconciler.
    pub queue_warning: Option<String>,
}

impl Readiness {
    pub fn set_credentials_error(&self, error: Option<String>) {
        self.facts.write().expect("not poisoned").credentials_error = error;
    }

    pub fn set_queue_warning(&self, warning: Option<String>) {
        self.facts.write().expect("not poisoned").queue_warning = warning;
    }

    pub fn facts(&self) -> Facts {
        self.facts.read().expect("not poisoned").clone()
    }
}

/// How much a [`Reason`] weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// slipway is not ready.
    Problem,
    /// slipway works, but worse than it should.
    Warning,
}

/// One thing `/readyz` reports: the detail for the admin listener, and a short generic
/// `public` label for the public one (no ARNs, account ids, URLs or queue names).
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    pub severity: Severity,
    #[serde(skip)]
    pub public: &'static str,
    pub detail: String,
}

impl Facts {
    /// Everything that keeps slipway from being ready or makes it work worse, problems first.
    pub fn reasons(&self) -> Vec<Reason> {
        let mut reasons: Vec<Reason> = self
            .credentials_error
            .iter()
            .map(|e| Reason {
                severity: Severity::Problem,
                public: "AWS unavailable",
                detail: format!("AWS credentials: {e}"),
            })
            .collect();
        reasons.extend(self.queue_warning.iter().map(|w| Reason {
            severity: Severity::Warning,
            public: "build results delayed",
            detail: w.clone(),
        }));
        reasons
    }

    /// What keeps slipway from being ready (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        self.of(Severity::Problem)
    }

    /// What works, but worse than it should.
    pub fn warnings(&self) -> Vec<String> {
        self.of(Severity::Warning)
    }

    fn of(&self, severity: Severity) -> Vec<String> {
        self.reasons()
            .into_iter()
            .filter(|r| r.severity == severity)
            .map(|r| r.detail)
            .collect()
    }
}

/// Which credential source the default chain tries first, from the environment, so a failure
/// can say where slipway looked.
pub fn credential_source(env: impl Fn(&str) -> Option<String>) -> String {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("AWS_ACCESS_KEY_ID") {
        "environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)".to_owned()
    } else if let Some(profile) = env("AWS_PROFILE").filter(|p| !p.is_empty()) {
        format!("profile \"{profile}\" (AWS_PROFILE)")
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)".to_owned()
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    {
        "ECS container credentials (AWS_CONTAINER_CREDENTIALS_*)".to_owned()
    } else {
        "the default chain: environment, profile \"default\" in ~/.aws, web identity, \
         container and EC2 instance metadata"
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_source_follows_the_chain_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(
            credential_source(env(&[("AWS_ACCESS_KEY_ID", "x"), ("AWS_PROFILE", "p")]))
                .contains("AWS_ACCESS_KEY_ID")
        );
        assert!(credential_source(env(&[("AWS_PROFILE", "ops")])).contains("\"ops\""));
        assert!(credential_source(env(&[])).contains("default chain"));
    }

    #[test]
    fn only_credentials_make_slipway_unready() {
        let r = Readiness::default();
        r.set_queue_warning(Some("no queue".into()));
        assert!(r.facts().problems().is_empty());
        r.set_credentials_error(Some("no credentials found".into()));
        assert_eq!(
            r.facts().problems(),
            ["AWS credentials: no credentials found"]
        );
    }
}
