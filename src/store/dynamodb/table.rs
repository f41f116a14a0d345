//! The table the engine needs (`docs/dynamodb.md`): keys, the three sparse GSIs, on-demand
//! capacity, TTL on `expires`. `slipway provision` is to create it this way (issue 25, item 3);
//! today the tests do.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
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

impl DynamoStore {
    /// Creates the table (on-demand, the GSIs, TTL on `expires`) and records when (`now_ms`,
    /// [`DynamoStore::created_ms`]). DynamoDB answers before the table is active; waiting for
    /// it is `provision`'s part (moto makes it active at once).
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
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .map_err(super::bad_request)?,
                );
        }
        create
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB CreateTable", e))?;
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
        let mut created = super::item::key("meta", "created_ms");
        created.insert("value".into(), super::item::n(now_ms));
        self.client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(created))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB PutItem", e))?;
        Ok(())
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
