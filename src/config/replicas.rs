//! `[replicas]`: how this process takes part when several share one DynamoDB table (issue 26).
//!
//! ```toml
//! [replicas]
//! replica_id = "web-1"   # default: the ECS task ARN, else the hostname and the process id
//! lease_secs = 15        # how long a lease lasts without renewal (3 to 60)
//! ```
//!
//! With SQLite there is one process (the `state_dir` lock); the settings still name it.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The `[replicas]` table as written. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplicasConfig {
    replica_id: Option<String>,
    lease_secs: Option<u64>,
}

/// Validated `[replicas]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicasConfig {
    /// This replica's id, when set; otherwise found at start (task ARN, hostname).
    pub replica_id: Option<String>,
    /// How long a lease lasts without renewal: a replica that dies hands its work over after
    /// at most this long (a clean stop hands it back at once).
    pub lease: Duration,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            replica_id: None,
            lease: Duration::from_secs(DEFAULT_LEASE_SECS),
        }
    }
}

pub const DEFAULT_LEASE_SECS: u64 = 15;

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("replicas.{key}"),
        message,
    }
}

impl RawReplicasConfig {
    pub fn validate(self) -> Result<ReplicasConfig, ConfigError> {
        let lease_secs = self.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(3..=60).contains(&lease_secs) {
            return Err(invalid(
                "lease_secs",
                format!("{lease_secs} is out of range: 3 to 60 seconds"),
            ));
        }
        if let Some(id) = &self.replica_id {
            let ok = !id.is_empty()
                && id.len() <= 200
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c));
            if !ok {
                return Err(invalid(
                    "replica_id",
                    format!(
                        "{id:?} is not a replica id (1 to 200 letters, digits and - _ . : / @)"
                    ),
                ));
            }
        }
        Ok(ReplicasConfig {
            replica_id: self.replica_id,
            lease: Duration::from_secs(lease_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = crate::config::MINIMAL_FOR_TESTS;

    fn parse(table: &str) -> Result<super::ReplicasConfig, String> {
        Config::parse(&format!("{BASE}\n[replicas]\n{table}"))
            .map(|c| c.replicas)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bounds() {
        let d = Config::parse(BASE).unwrap().replicas;
        assert_eq!(d.lease.as_secs(), 15);
        assert_eq!(d.replica_id, None);
        let c = parse("replica_id = \"web-1\"\nlease_secs = 3\n").unwrap();
        assert_eq!(c.replica_id.as_deref(), Some("web-1"));
        assert_eq!(c.lease.as_secs(), 3);
        let e = parse("lease_secs = 2\n").unwrap_err();
        assert!(
            e.contains("replicas.lease_secs") && e.contains("3 to 60"),
            "{e}"
        );
        let e = parse("lease_secs = 61\n").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse("replica_id = \"a b\"\n").unwrap_err();
        assert!(e.contains("replicas.replica_id"), "{e}");
        let e = parse("replica = \"x\"\n").unwrap_err();
        assert!(e.contains("replica"), "{e}");
    }
}
