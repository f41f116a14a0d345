//! What decides whether `serve` is ready, besides the journal's own health: what it is still
//! doing at start (waiting for the journal lock, opening the journal), whether the AWS
//! credentials work (STS GetCallerIdentity), where build results come from (the SQS queue, or
//! only the reconciler), whether the first round of webhook delivery recovery has run, and how
//! the last backup went. `/readyz` reads it.
//! Each [`Reason`] has a severity, the detail the admin listener shows, and the short generic
//! label the public listener shows instead.

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
    /// What `serve` is still doing before it serves (None: it serves).
    pub starting: Option<String>,
    /// Webhook delivery recovery: pushes GitHub failed to deliver while slipway was down.
    pub recovery: Recovery,
    /// The last backup (None: none since start).
    pub last_backup: Option<BackupOutcome>,
}

/// Where delivery recovery is.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Recovery {
    /// The first round has not finished: pushes sent while slipway was down may not have been
    /// asked for again yet.
    #[default]
    Pending,
    /// The first round finished.
    Done,
    /// The first round failed (the reason is logged too); later rounds try again.
    Failed(String),
    /// Not configured: why.
    Off(String),
}

/// When the last backup ran and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BackupOutcome {
    /// RFC 3339.
    pub at: String,
    pub to: String,
    /// None: it succeeded.
    pub error: Option<String>,
}

/// What `/readyz` says while delivery recovery is off.
pub const RECOVERY_OFF: &str = "recovery off: pushes sent while slipway is down are lost";

impl Readiness {
    pub fn set_credentials_error(&self, error: Option<String>) {
        self.facts.write().expect("not poisoned").credentials_error = error;
    }

    pub fn set_queue_warning(&self, warning: Option<String>) {
        self.facts.write().expect("not poisoned").queue_warning = warning;
    }

    pub fn set_starting(&self, what: Option<String>) {
        self.facts.write().expect("not poisoned").starting = what;
    }

    pub fn set_recovery(&self, recovery: Recovery) {
        self.facts.write().expect("not poisoned").recovery = recovery;
    }

    pub fn set_last_backup(&self, outcome: BackupOutcome) {
        self.facts.write().expect("not poisoned").last_backup = Some(outcome);
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
        let problem = |public, detail| Reason {
            severity: Severity::Problem,
            public,
            detail,
        };
        let warning = |public, detail| Reason {
            severity: Severity::Warning,
            public,
            detail,
        };
        let mut reasons: Vec<Reason> = self
            .starting
            .iter()
            .map(|s| problem("starting", s.clone()))
            .collect();
        reasons.extend(
            self.credentials_error
                .iter()
                .map(|e| problem("AWS unavailable", format!("AWS credentials: {e}"))),
        );
        if self.recovery == Recovery::Pending {
            reasons.push(problem(
                "starting",
                "the first round of webhook delivery recovery has not finished (pushes sent \
                 while slipway was down are being asked for again)"
                    .to_owned(),
            ));
        }
        reasons.extend(
            self.queue_warning
                .iter()
                .map(|w| warning("build results delayed", w.clone())),
        );
        match &self.recovery {
            Recovery::Off(why) => {
                reasons.push(warning("recovery off", format!("{RECOVERY_OFF} ({why})")))
            }
            Recovery::Failed(why) => reasons.push(warning(
                "recovery failed",
                format!("the first round of webhook delivery recovery failed: {why}"),
            )),
            Recovery::Pending | Recovery::Done => {}
        }
        if let Some(BackupOutcome {
            at,
            to,
            error: Some(e),
        }) = &self.last_backup
        {
            reasons.push(warning(
                "last backup failed",
                format!("the last backup (to {to}, at {at}) failed: {e}"),
            ));
        }
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
        r.set_recovery(Recovery::Done);
        r.set_queue_warning(Some("no queue".into()));
        assert!(r.facts().problems().is_empty());
        r.set_credentials_error(Some("no credentials found".into()));
        assert_eq!(
            r.facts().problems(),
            ["AWS credentials: no credentials found"]
        );
    }
}
