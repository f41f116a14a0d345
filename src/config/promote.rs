//! `[[app]] promote_from`, `approval`, `approvers`, `approval_timeout_hours` (issue 27):
//! an app that never builds and deploys, by digest, the image another app's deploy ran.

use std::time::Duration;

use super::{invalid, AppConfig, ConfigError};
use crate::ids::AppName;

/// The longest a promotion may wait for its approval: a year.
pub const MAX_APPROVAL_TIMEOUT_HOURS: u64 = 365 * 24;
/// How long a promotion waits for its approval unless `approval_timeout_hours` says otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT_HOURS: u64 = 168;

/// Whether a promotion waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// It waits as `awaiting_approval` until one of `approvers` approves or rejects it, a
    /// newer promotion supersedes it, or it expires.
    Manual,
    /// It is deployed as soon as it is made.
    Auto,
}

impl Approval {
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::Manual => "manual",
            Approval::Auto => "auto",
        }
    }
}

/// A promoted app's settings.
#[derive(Debug, Clone)]
pub struct PromoteConfig {
    /// The app whose successful deploys this app's promotions come from.
    pub from: AppName,
    pub approval: Approval,
    /// Who may approve or reject: ops API token names and Slack user ids (`"*"`: anyone who
    /// can reach the ops API or the slash command). Empty: nobody (deny by default).
    pub approvers: Vec<String>,
    /// How long a promotion waits for its approval before it expires.
    pub timeout: Duration,
}

impl PromoteConfig {
    /// Whether `who` (an ops API token's name, or a Slack user id) may approve or reject.
    pub fn may_approve(&self, who: &str) -> bool {
        self.approvers.iter().any(|a| a == "*" || a == who)
    }
}

/// The promotion keys of one `[[app]]`, as written.
pub(super) struct RawPromote {
    pub promote_from: Option<String>,
    pub approval: Option<String>,
    pub approvers: Option<Vec<String>>,
    pub approval_timeout_hours: Option<u64>,
}

/// The keys a promoted app must not have (it never builds), with why.
pub(super) const NOT_FOR_PROMOTED: &str =
    "a promoted app never builds: it deploys the image its `promote_from` app ran; leave it out";

impl RawPromote {
    pub(super) fn validate(
        self,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<PromoteConfig>, ConfigError> {
        let Some(from) = self.promote_from else {
            for (field, set) in [
                ("approval", self.approval.is_some()),
                ("approvers", self.approvers.is_some()),
                (
                    "approval_timeout_hours",
                    self.approval_timeout_hours.is_some(),
                ),
            ] {
                if set {
                    return Err(invalid(
                        key(field),
                        "is for promoted apps only: set `promote_from` too",
                    ));
                }
            }
            return Ok(None);
        };
        let from = AppName::parse(&from).map_err(|e| invalid(key("promote_from"), e.0))?;
        let approval = match self.approval.as_deref() {
            None | Some("manual") => Approval::Manual,
            Some("auto") => Approval::Auto,
            Some(other) => {
                return Err(invalid(
                    key("approval"),
                    format!("\"{other}\" is not \"manual\" or \"auto\""),
                ))
            }
        };
        if approval == Approval::Auto && self.approvers.as_ref().is_some_and(|a| !a.is_empty()) {
            // Silently unused otherwise: nobody approves an automatic promotion.
            return Err(invalid(
                key("approvers"),
                "nobody approves with approval = \"auto\": leave it out, or set approval = \"manual\"",
            ));
        }
        let approvers = self.approvers.unwrap_or_default();
        for (i, a) in approvers.iter().enumerate() {
            if a.trim().is_empty() || a.trim() != a {
                return Err(invalid(
                    format!("{}[{i}]", key("approvers")),
                    "must be an ops API token name or a Slack user id, without spaces",
                ));
            }
        }
        let hours = match self.approval_timeout_hours {
            None => DEFAULT_APPROVAL_TIMEOUT_HOURS,
            Some(0) => {
                return Err(invalid(
                    key("approval_timeout_hours"),
                    "must be greater than 0",
                ))
            }
            Some(h) if h > MAX_APPROVAL_TIMEOUT_HOURS => {
                return Err(invalid(
                    key("approval_timeout_hours"),
                    format!("{h} is too large (at most {MAX_APPROVAL_TIMEOUT_HOURS})"),
                ))
            }
            Some(h) => h,
        };
        Ok(Some(PromoteConfig {
            from,
            approval,
            approvers,
            timeout: Duration::from_secs(hours * 3600),
        }))
    }
}

/// Every `promote_from` names another configured app, and following them never comes back
/// to where it started. `apps`: (name, promote_from) in the file's order.
pub(super) fn check_chains(apps: &[(AppName, Option<AppName>)]) -> Result<(), ConfigError> {
    let from_of = |name: &AppName| {
        apps.iter()
            .find(|(n, _)| n == name)
            .map(|(_, from)| from.as_ref())
    };
    for (i, (name, from)) in apps.iter().enumerate() {
        let Some(from) = from else { continue };
        let key = format!("app[{i}] ({name}).promote_from");
        if from_of(from).is_none() {
            return Err(invalid(key, format!("\"{from}\" names no app")));
        }
        let mut path = vec![name.clone()];
        let mut at = from.clone();
        loop {
            path.push(at.clone());
            if &at == name {
                let chain: Vec<&str> = path.iter().map(|a| a.as_str()).collect();
                return Err(invalid(
                    key,
                    format!(
                        "promotions go round in a cycle ({}): one app of a chain must build",
                        chain.join(" ← ")
                    ),
                ));
            }
            match from_of(&at).flatten() {
                Some(next) if path.len() <= apps.len() => at = next.clone(),
                // The chain ends at an app that builds (or at a cycle not through `name`,
                // reported for an app in it).
                _ => break,
            }
        }
    }
    Ok(())
}

/// A promoted app deploys its images from the repository of the app whose build made them
/// (the head of its chain): its own `ecr_repository` must name that repository, so the key is
/// never silently unused. The chains are already checked.
pub(super) fn check_repositories(apps: &[AppConfig]) -> Result<(), ConfigError> {
    for (i, app) in apps.iter().enumerate() {
        if app.promote.is_none() {
            continue;
        }
        let builder = super::builder_in(apps, app);
        let (repo, builder_repo) = (&app.ecr_repository, &builder.ecr_repository);
        if repo != builder_repo {
            return Err(invalid(
                format!("app[{i}] ({}).ecr_repository", app.name),
                format!(
                    "\"{repo}\" is not where its images are: a promoted app deploys the image \
                     {} built, from {}'s repository \"{builder_repo}\"",
                    builder.name, builder.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MINIMAL_FOR_TESTS};

    /// `web` builds; `name` is promoted from `from` with `settings`.
    fn with_promoted(name: &str, from: &str, settings: &str) -> String {
        format!(
            "{MINIMAL_FOR_TESTS}\n[[app]]\nname = \"{name}\"\nrepository = \"octo-org/web\"\n\
             cluster = \"web\"\nservice = \"{name}\"\ncontainer = \"web\"\n\
             ecr_repository = \"web\"\npromote_from = \"{from}\"\n{settings}\n"
        )
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_promoted_app_needs_no_project_and_waits_for_approval_by_default() {
        let c = Config::parse(&with_promoted("prod", "web", "approvers = [\"alice\"]")).unwrap();
        let prod = c.app("prod").unwrap();
        let p = prod.promote.as_ref().unwrap();
        assert_eq!(p.from.as_str(), "web");
        assert_eq!(p.approval, super::Approval::Manual);
        assert_eq!(p.timeout, std::time::Duration::from_secs(168 * 3600));
        assert!(p.may_approve("alice") && !p.may_approve("bob"));
        assert_eq!(prod.codebuild_project, None);
        assert_eq!(prod.branch, None, "a promoted app deploys no branch");
        assert!(!prod.deploys_ref("refs/heads/master"));
        assert!(c.app("web").unwrap().promote.is_none());
        let auto = Config::parse(&with_promoted(
            "prod",
            "web",
            "approval = \"auto\"\napproval_timeout_hours = 2",
        ))
        .unwrap();
        let p = auto.app("prod").unwrap().promote.clone().unwrap();
        assert_eq!(p.approval, super::Approval::Auto);
        assert_eq!(p.timeout, std::time::Duration::from_secs(2 * 3600));
        assert!(p.approvers.is_empty(), "nobody by default");
    }

    #[test]
    fn chains_work_and_a_cycle_or_an_unknown_source_is_refused() {
        // dev (builds) -> staging -> prod.
        let chain = format!(
            "{}{}",
            with_promoted("staging", "web", ""),
            with_promoted("prod", "staging", "").replace(MINIMAL_FOR_TESTS, "")
        );
        let c = Config::parse(&chain).unwrap();
        assert_eq!(
            c.app("prod")
                .unwrap()
                .promote
                .as_ref()
                .unwrap()
                .from
                .as_str(),
            "staging"
        );

        let e = err(&with_promoted("prod", "stagin", ""));
        assert_eq!(
            e,
            "config: app[1] (prod).promote_from: \"stagin\" names no app"
        );

        let e = err(&with_promoted("prod", "prod", ""));
        assert_eq!(
            e,
            "config: app[1] (prod).promote_from: promotions go round in a cycle \
             (prod ← prod): one app of a chain must build"
        );
        let cycle = format!(
            "{}{}",
            with_promoted("a", "b", ""),
            with_promoted("b", "a", "").replace(MINIMAL_FOR_TESTS, "")
        );
        let e = err(&cycle);
        assert_eq!(
            e,
            "config: app[1] (a).promote_from: promotions go round in a cycle (a ← b ← a): \
             one app of a chain must build"
        );
    }

    #[test]
    fn build_keys_and_stray_approval_keys_are_refused_not_dropped() {
        for (line, field) in [
            ("codebuild_project = \"x\"", "codebuild_project"),
            ("branch = \"main\"", "branch"),
            ("paths = [\"src/**\"]", "paths"),
            ("deploy_foreign_builds = true", "deploy_foreign_builds"),
        ] {
            let e = err(&with_promoted("prod", "web", line));
            assert!(
                e.contains(&format!(
                    "app[1] (prod).{field}: a promoted app never builds"
                )),
                "{e}"
            );
        }
        let e = err(&format!("{MINIMAL_FOR_TESTS}approval = \"auto\"\n"));
        assert!(
            e.contains("app[0] (web).approval: is for promoted apps only: set `promote_from` too"),
            "{e}"
        );
        let e = err(&with_promoted("prod", "web", "approval = \"yes\""));
        assert!(
            e.contains("app[1] (prod).approval: \"yes\" is not \"manual\" or \"auto\""),
            "{e}"
        );
        let e = err(&with_promoted("prod", "web", "approval_timeout_hours = 0"));
        assert!(
            e.contains("approval_timeout_hours: must be greater than 0"),
            "{e}"
        );
        let e = err(&with_promoted(
            "prod",
            "web",
            "approval = \"auto\"\napprovers = [\"alice\"]",
        ));
        assert_eq!(
            e,
            "config: app[1] (prod).approvers: nobody approves with approval = \"auto\": leave \
             it out, or set approval = \"manual\""
        );
        let e = err(&with_promoted("prod", "web", "").replace(
            "ecr_repository = \"web\"\npromote_from",
            "ecr_repository = \"web-prod\"\npromote_from",
        ));
        assert_eq!(
            e,
            "config: app[1] (prod).ecr_repository: \"web-prod\" is not where its images are: \
             a promoted app deploys the image web built, from web's repository \"web\""
        );
        let e = err(&with_promoted("prod", "web", "approvers = [\"\"]"));
        assert!(e.contains("app[1] (prod).approvers[0]"), "{e}");
        let e = err(&MINIMAL_FOR_TESTS.replace("codebuild_project = \"web-build\"\n", ""));
        assert!(e.contains("app[0] (web).codebuild_project: missing"), "{e}");
    }
}
