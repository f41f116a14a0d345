//! The table the engine needs (`docs/dynamodb.md`): keys, the three sparse GSIs, on-demand
//! capacity, TTL on `expires`, point-in-time recovery. One definition: `slipway provision`
//! creates and checks the table through [`DynamoStore::create_table`] and
//! [`DynamoStore::table_drift`], and the tests create theirs the same way.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, ContinuousBackupsStatus, CreateGlobalSecondaryIndexAction,
    GlobalSecondaryIndex, GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, PointInTimeRecoveryStatus, Projection, ProjectionType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::{sdk_error, DynamoStore};
use crate::store::StoreError;

/// The GSIs: name, partition key, sort key.
pub const INDEXES: [(&str, &str, &str); 3] = [
    ("due", "due_pk", "due_sk"),
    ("recent", "list_pk", "list_sk"),
    ("lookup", "look_pk", "look_sk"),
];

/// The attribute DynamoDB's TTL reads (seconds since the epoch).
pub const EXPIRES: &str = "expires";

/// How long `create_table` waits for a new table (or index) to become active: DynamoDB
/// answers CreateTable at once and the table is `CREATING` for seconds to minutes.
const ACTIVE_WITHIN: Duration = Duration::from_secs(600);
const POLL_EVERY: Duration = Duration::from_secs(2);

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(super::bad_request)
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(super::bad_request)
}

fn all_attributes() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::All)
        .build()
}

/// How an existing table differs from what the engine needs (`DynamoStore::table_drift`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// Provisioned capacity instead of on-demand (repairable: UpdateTable).
    NotOnDemand,
    /// A GSI is missing (repairable: UpdateTable creates it; DynamoDB backfills it).
    MissingIndex(&'static str),
    /// TTL is off (repairable).
    TtlOff,
    /// Point-in-time recovery is off (repairable).
    PitrOff,
    /// Something that cannot be changed in place: keys, an index's keys or projection, TTL on
    /// another attribute.
    Incompatible(String),
}

impl Drift {
    pub fn is_repairable(&self) -> bool {
        !matches!(self, Drift::Incompatible(_))
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::NotOnDemand => f.write_str("provisioned capacity, not on-demand"),
            Drift::MissingIndex(name) => write!(f, "GSI {name} missing"),
            Drift::TtlOff => write!(f, "TTL off (on {EXPIRES} wanted)"),
            Drift::PitrOff => f.write_str("point-in-time recovery off"),
            Drift::Incompatible(what) => f.write_str(what),
        }
    }
}

impl DynamoStore {
    /// Creates the table (on-demand, the GSIs, encrypted at rest with DynamoDB's default key,
    /// waits until it is active, then TTL on `expires` and point-in-time recovery) and records
    /// when (`now_ms`, [`DynamoStore::created_ms`]).
    pub async fn create_table(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut create = self
            .client()
            .create_table()
            .table_name(self.table())
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(string_attribute("pk")?)
            .attribute_definitions(string_attribute("sk")?);
        for (name, pk, sk) in INDEXES {
            create = create
                .attribute_definitions(string_attribute(pk)?)
                .attribute_definitions(string_attribute(sk)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(name)
                        .key_schema(key(pk, KeyType::Hash)?)
                        .key_schema(key(sk, KeyType::Range)?)
                        .projection(all_attributes())
                        .build()
                        .map_err(super::bad_request)?,
                );
        }
        create
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB CreateTable", e))?;
        self.wait_until_active().await?;
        self.enable_ttl().await?;
        self.enable_pitr().await?;
        self.ensure_created_ms(now_ms).await
    }

    /// Waits until the table and its indexes are `ACTIVE` (or [`ACTIVE_WITHIN`] has passed).
    async fn wait_until_active(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + ACTIVE_WITHIN;
        loop {
            let out = self
                .client()
                .describe_table()
                .table_name(self.table())
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB DescribeTable", e))?;
            let table = out.table();
            let active = table.and_then(|t| t.table_status()) == Some(&TableStatus::Active)
                && table
                    .map(|t| t.global_secondary_indexes())
                    .unwrap_or_default()
                    .iter()
                    .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
            if active {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable {
                    reason: format!(
                        "DynamoDB table {} is not active after {} s",
                        self.table(),
                        ACTIVE_WITHIN.as_secs()
                    ),
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn enable_ttl(&self) -> Result<(), StoreError> {
        self.client()
            .update_time_to_live()
            .table_name(self.table())
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(EXPIRES)
                    .enabled(true)
                    .build()
                    .map_err(super::bad_request)?,
            )
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB UpdateTimeToLive", e))?;
        Ok(())
    }

    /// Turns point-in-time recovery on. A table made moments ago answers
    /// `ContinuousBackupsUnavailableException` ("backups have not yet been enabled for this
    /// table", UpdateContinuousBackups in the DynamoDB API Reference) until its backups are
    /// ready: asked again every [`POLL_EVERY`], within [`ACTIVE_WITHIN`].
    async fn enable_pitr(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + ACTIVE_WITHIN;
        loop {
            let sent = self
                .client()
                .update_continuous_backups()
                .table_name(self.table())
                .point_in_time_recovery_specification(
                    PointInTimeRecoverySpecification::builder()
                        .point_in_time_recovery_enabled(true)
                        .build()
                        .map_err(super::bad_request)?,
                )
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e)
                    if tokio::time::Instant::now() < deadline
                        && e.as_service_error()
                            .is_some_and(|e| e.is_continuous_backups_unavailable_exception()) =>
                {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => return Err(sdk_error("DynamoDB UpdateContinuousBackups", e)),
            }
        }
    }

    /// How the table differs from what [`DynamoStore::create_table`] makes; `None` when there
    /// is no table. Encryption at rest is not checked: DynamoDB encrypts every table (with its
    /// own key unless another is chosen), and none can be unencrypted.
    pub async fn table_drift(&self) -> Result<Option<Vec<Drift>>, StoreError> {
        let out = match self
            .client()
            .describe_table()
            .table_name(self.table())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_error("DynamoDB DescribeTable", e)),
        };
        let Some(table) = out.table() else {
            return Ok(None);
        };
        let mut drift = Vec::new();
        let keys = |schema: &[KeySchemaElement]| -> Vec<(String, String)> {
            schema
                .iter()
                .map(|k| {
                    (
                        k.attribute_name().to_owned(),
                        k.key_type().as_str().to_owned(),
                    )
                })
                .collect()
        };
        let wanted = |pk: &str, sk: &str| {
            vec![
                (pk.to_owned(), "HASH".to_owned()),
                (sk.to_owned(), "RANGE".to_owned()),
            ]
        };
        if keys(table.key_schema()) != wanted("pk", "sk") {
            drift.push(Drift::Incompatible(format!(
                "keys are {:?}, not pk (HASH) and sk (RANGE): the table cannot be changed, \
                 use another table name",
                keys(table.key_schema())
            )));
        }
        let billing = table.billing_mode_summary().and_then(|b| b.billing_mode());
        if billing != Some(&BillingMode::PayPerRequest) {
            drift.push(Drift::NotOnDemand);
        }
        for (name, pk, sk) in INDEXES {
            let found = table
                .global_secondary_indexes()
                .iter()
                .find(|i| i.index_name() == Some(name));
            match found {
                None => drift.push(Drift::MissingIndex(name)),
                Some(index) => {
                    let all = index.projection().and_then(|p| p.projection_type())
                        == Some(&ProjectionType::All);
                    if keys(index.key_schema()) != wanted(pk, sk) || !all {
                        drift.push(Drift::Incompatible(format!(
                            "GSI {name} is not keyed {pk} (HASH), {sk} (RANGE) with projection \
                             ALL: delete the index and run provision again"
                        )));
                    }
                }
            }
        }
        let ttl = self
            .client()
            .describe_time_to_live()
            .table_name(self.table())
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB DescribeTimeToLive", e))?;
        let ttl = ttl.time_to_live_description();
        let status = ttl.and_then(|t| t.time_to_live_status());
        let attribute = ttl.and_then(|t| t.attribute_name());
        match status {
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                if attribute != Some(EXPIRES) =>
            {
                drift.push(Drift::Incompatible(format!(
                    "TTL is on {}, not {EXPIRES}: turn it off (DynamoDB then waits up to an \
                     hour before it can be turned on again) and run provision again",
                    attribute.unwrap_or("another attribute")
                )))
            }
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {}
            _ => drift.push(Drift::TtlOff),
        }
        let backups = self
            .client()
            .describe_continuous_backups()
            .table_name(self.table())
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB DescribeContinuousBackups", e))?;
        let pitr = backups
            .continuous_backups_description()
            .filter(|d| d.continuous_backups_status() == &ContinuousBackupsStatus::Enabled)
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status());
        if pitr != Some(&PointInTimeRecoveryStatus::Enabled) {
            drift.push(Drift::PitrOff);
        }
        Ok(Some(drift))
    }

    /// Brings the table back in line for one repairable difference.
    pub async fn repair(&self, drift: &Drift) -> Result<(), StoreError> {
        match drift {
            Drift::NotOnDemand => {
                self.client()
                    .update_table()
                    .table_name(self.table())
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DynamoDB UpdateTable", e))?;
                self.wait_until_active().await
            }
            Drift::MissingIndex(name) => {
                let (name, pk, sk) = INDEXES
                    .into_iter()
                    .find(|(n, _, _)| n == name)
                    .ok_or_else(|| super::bad_request(format!("no index {name}")))?;
                self.client()
                    .update_table()
                    .table_name(self.table())
                    .attribute_definitions(string_attribute(pk)?)
                    .attribute_definitions(string_attribute(sk)?)
                    .global_secondary_index_updates(
                        GlobalSecondaryIndexUpdate::builder()
                            .create(
                                CreateGlobalSecondaryIndexAction::builder()
                                    .index_name(name)
                                    .key_schema(key(pk, KeyType::Hash)?)
                                    .key_schema(key(sk, KeyType::Range)?)
                                    .projection(all_attributes())
                                    .build()
                                    .map_err(super::bad_request)?,
                            )
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| sdk_error("DynamoDB UpdateTable", e))?;
                // One index is created at a time: the next waits for this one.
                self.wait_until_active().await
            }
            Drift::TtlOff => self.enable_ttl().await,
            Drift::PitrOff => self.enable_pitr().await,
            Drift::Incompatible(what) => Err(StoreError::Invalid(what.clone())),
        }
    }

    /// When the table was created (ms since the epoch): delivery recovery asks for nothing
    /// older.
    pub async fn created_ms(&self) -> Result<Option<i64>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(super::item::key("meta", "created_ms")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        match out.item() {
            Some(item) => super::item::get_opt_n(item, "value"),
            None => Ok(None),
        }
    }

    /// `slipway backup` copies the SQLite journal's file; DynamoDB's own backups are its
    /// point-in-time recovery (on for the table `provision` makes), so there is no copy to take.
    pub async fn snapshot_into(
        &self,
        dest: std::path::PathBuf,
    ) -> Result<crate::store::sqlite::backup::BackupSummary, StoreError> {
        Err(StoreError::Invalid(format!(
            "not copying the DynamoDB table {} to {}: its backups are DynamoDB's point-in-time \
             recovery (or AWS Backup), not a file",
            self.table(),
            dest.display()
        )))
    }
}
