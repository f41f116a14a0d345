//! `[store]`: which engine holds slipway's state (issue 25).
//!
//! ```toml
//! [store]
//! engine = "dynamodb"      # or "sqlite" (the default: journal.db in state_dir)
//! table = "slipway"        # DynamoDB only; the default is "slipway"
//! bodies_bucket = "…"      # DynamoDB only, optional: where bodies over 350 KB go
//! ```

use serde::Deserialize;

use crate::config::ConfigError;

/// The `[store]` table as written. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreConfig {
    engine: Option<String>,
    table: Option<String>,
    bodies_bucket: Option<String>,
}

/// Which engine holds the state, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// The SQLite journal in `state_dir`.
    #[default]
    Sqlite,
    DynamoDb {
        table: String,
        /// The S3 bucket for bodies too large for an item (None: such a body is refused).
        bodies_bucket: Option<String>,
    },
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("store.{key}"),
        message,
    }
}

impl RawStoreConfig {
    pub fn validate(self) -> Result<StoreConfig, ConfigError> {
        match self.engine.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                // A DynamoDB setting under the SQLite engine would be silently unused.
                for (key, value) in [
                    ("table", &self.table),
                    ("bodies_bucket", &self.bodies_bucket),
                ] {
                    if value.is_some() {
                        return Err(invalid(
                            key,
                            "is only used with engine = \"dynamodb\" (the engine is \"sqlite\")"
                                .to_owned(),
                        ));
                    }
                }
                Ok(StoreConfig::Sqlite)
            }
            "dynamodb" => {
                let table = self.table.unwrap_or_else(|| "slipway".to_owned());
                table_name(&table).map_err(|m| invalid("table", m))?;
                if let Some(bucket) = &self.bodies_bucket {
                    bucket_name(bucket).map_err(|m| invalid("bodies_bucket", m))?;
                }
                Ok(StoreConfig::DynamoDb {
                    table,
                    bodies_bucket: self.bodies_bucket,
                })
            }
            other => Err(invalid(
                "engine",
                format!("\"{other}\" is not an engine: use \"sqlite\" or \"dynamodb\""),
            )),
        }
    }
}

/// DynamoDB's rule for table names: 3 to 255 of `a-z A-Z 0-9 _ - .`
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html>).
fn table_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !(3..=255).contains(&name.len()) || !ok_chars {
        return Err(format!(
            "\"{name}\" is not a DynamoDB table name (3 to 255 letters, digits, _ - .)"
        ));
    }
    Ok(())
}

/// S3's rule for bucket names: 3 to 63 of `a-z 0-9 . -`, starting and ending with a letter or
/// a digit (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html>).
fn bucket_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !ends_ok(name.chars().next())
        || !ends_ok(name.chars().last())
    {
        return Err(format!(
            "\"{name}\" is not an S3 bucket name (3 to 63 lowercase letters, digits, . -, \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StoreConfig;
    use crate::config::Config;

    /// One app, nothing else: the `[store]` table is appended.
    const BASE: &str = crate::config::MINIMAL_FOR_TESTS;

    fn store(table: &str) -> Result<StoreConfig, String> {
        Config::parse(&format!("{BASE}\n[store]\n{table}"))
            .map(|c| c.store)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sqlite_is_the_default_and_dynamodb_takes_a_table_and_a_bucket() {
        assert_eq!(Config::parse(BASE).unwrap().store, StoreConfig::Sqlite);
        assert_eq!(store("engine = \"sqlite\"\n"), Ok(StoreConfig::Sqlite));
        assert_eq!(
            store("engine = \"dynamodb\"\n"),
            Ok(StoreConfig::DynamoDb {
                table: "slipway".into(),
                bodies_bucket: None
            })
        );
        assert_eq!(
            store("engine = \"dynamodb\"\ntable = \"team.slipway-1\"\nbodies_bucket = \"acme-slipway-bodies\"\n"),
            Ok(StoreConfig::DynamoDb {
                table: "team.slipway-1".into(),
                bodies_bucket: Some("acme-slipway-bodies".into())
            })
        );
    }

    #[test]
    fn bad_store_settings_are_refused_naming_the_key() {
        for (table, key, says) in [
            (
                "engine = \"postgres\"\n",
                "store.engine",
                "\"postgres\" is not an engine",
            ),
            (
                "engine = \"DynamoDB\"\n",
                "store.engine",
                "use \"sqlite\" or \"dynamodb\"",
            ),
            (
                "table = \"slipway\"\n",
                "store.table",
                "only used with engine = \"dynamodb\"",
            ),
            (
                "engine = \"sqlite\"\nbodies_bucket = \"b-1\"\n",
                "store.bodies_bucket",
                "only used with engine = \"dynamodb\"",
            ),
            (
                "engine = \"dynamodb\"\ntable = \"ab\"\n",
                "store.table",
                "not a DynamoDB table name",
            ),
            (
                "engine = \"dynamodb\"\ntable = \"my table\"\n",
                "store.table",
                "not a DynamoDB table name",
            ),
            (
                "engine = \"dynamodb\"\nbodies_bucket = \"Bodies\"\n",
                "store.bodies_bucket",
                "not an S3 bucket name",
            ),
            (
                "engine = \"dynamodb\"\nbodies_bucket = \"-bodies\"\n",
                "store.bodies_bucket",
                "not an S3 bucket name",
            ),
        ] {
            let e = store(table).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{table}: {e}");
        }
        let e = store("engine = \"dynamodb\"\ntabel = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `tabel`"), "{e}");
    }

    #[test]
    fn a_journal_backup_schedule_is_refused_with_the_dynamodb_engine() {
        let e = Config::parse(&format!(
            "{BASE}\n[journal]\nbackup_to = \"s3://b/slipway/journal.db\"\n[store]\nengine = \"dynamodb\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("journal.backup_to"), "{e}");
        assert!(e.contains("point-in-time recovery"), "{e}");
        // With SQLite it is taken.
        Config::parse(&format!(
            "{BASE}\n[journal]\nbackup_to = \"s3://b/slipway/journal.db\"\n"
        ))
        .unwrap();
    }
}
