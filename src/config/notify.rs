//! The `[notify]` table: where Slack and generic-webhook notifications go (by the names of the
//! environment variables holding the URLs, which are secrets) and how their journaled outbox
//! retries. `notify` reads these settings; this module knows nothing of it.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// The `[notify]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifyConfig {
    slack_webhook_url_env: Option<String>,
    webhook_url_env: Option<String>,
    give_up_after_hours: Option<u64>,
    retry_initial_secs: Option<u64>,
    retry_max_secs: Option<u64>,
}

/// The validated `[notify]` table. Both `*_env` keys name environment variables, never hold
/// the URLs themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Environment variable holding a Slack incoming-webhook URL.
    pub slack_webhook_url_env: Option<String>,
    /// Environment variable holding a generic JSON webhook URL.
    pub webhook_url_env: Option<String>,
    /// A notification its target has not taken by this age is given up (never by a count of
    /// attempts). Shared by both targets.
    pub give_up_after: Duration,
    /// The pause after a failed attempt doubles from `retry_initial` up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        RawNotifyConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl RawNotifyConfig {
    pub fn validate(self) -> Result<NotifyConfig, ConfigError> {
        let give_up = super::duration(
            "notify.give_up_after_hours",
            self.give_up_after_hours,
            24,
            |h| Duration::from_secs(h * 3600),
            super::MAX_GIVE_UP_AFTER_HOURS,
        )?;
        let initial = super::duration(
            "notify.retry_initial_secs",
            self.retry_initial_secs,
            2,
            Duration::from_secs,
            3600,
        )?;
        let max = super::duration(
            "notify.retry_max_secs",
            self.retry_max_secs,
            300,
            Duration::from_secs,
            86_400,
        )?;
        if max < initial {
            return Err(invalid(
                "notify.retry_max_secs",
                format!(
                    "must be at least notify.retry_initial_secs ({})",
                    initial.as_secs()
                ),
            ));
        }
        Ok(NotifyConfig {
            slack_webhook_url_env: self.slack_webhook_url_env,
            webhook_url_env: self.webhook_url_env,
            give_up_after: give_up,
            retry_initial: initial,
            retry_max: max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, ConfigError> {
        toml::from_str::<RawNotifyConfig>(text).unwrap().validate()
    }

    #[test]
    fn defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.give_up_after, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.retry_initial, Duration::from_secs(2));
        assert_eq!(cfg.retry_max, Duration::from_secs(300));
        assert!(cfg.slack_webhook_url_env.is_none() && cfg.webhook_url_env.is_none());
        let cfg = parse(
            "slack_webhook_url_env = \"S\"\ngive_up_after_hours = 6\nretry_initial_secs = 1\nretry_max_secs = 1",
        )
        .unwrap();
        assert_eq!(cfg.slack_webhook_url_env.as_deref(), Some("S"));
        assert_eq!(cfg.give_up_after, Duration::from_secs(6 * 3600));
        assert_eq!(cfg.retry_max, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("give_up_after_hours = 0", "notify.give_up_after_hours"),
            (
                "give_up_after_hours = 9223372036854775807",
                "notify.give_up_after_hours",
            ),
            ("retry_max_secs = 86401", "notify.retry_max_secs"),
            ("retry_initial_secs = 0", "notify.retry_initial_secs"),
            (
                "retry_initial_secs = 10\nretry_max_secs = 5",
                "notify.retry_max_secs",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(toml::from_str::<RawNotifyConfig>("give_up_after = 3").is_err());
    }
}
