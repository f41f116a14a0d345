//! The DynamoDB engine's table and bodies bucket (`[store] engine = "dynamodb"`, issue 25):
//! created when missing, checked and brought back in line when they exist, as the queue and
//! the rule are. The table's definition is the engine's own ([`DynamoStore::create_table`]).
//! The bucket is private (every public access blocked), encrypted by default (SSE-S3), and
//! its `bodies/` objects expire after `[journal] keep_bodies_days` (the engine's items name
//! them until then, `docs/dynamodb.md` "Retention").

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
};

use super::*;
use crate::store::dynamodb::{Drift, DynamoStore, BODIES_PREFIX};
use crate::store::StoreConfig;

/// The id of the lifecycle rule slipway owns in the bodies bucket.
pub const LIFECYCLE_RULE_ID: &str = "slipway-bodies";

/// The table and (when configured) the bucket, for `engine = "dynamodb"`; nothing otherwise.
pub(super) async fn provision(config: &Config, aws: &Clients, dry_run: bool, report: &mut Report) {
    let StoreConfig::DynamoDb {
        table,
        bodies_bucket,
    } = &config.store
    else {
        return;
    };
    let store = DynamoStore::new(aws.dynamodb.clone(), table.clone(), &config.journal);
    provision_table(&store, dry_run, report).await;
    if let Some(bucket) = bodies_bucket {
        let days = config.journal.keep_bodies_days;
        let (status, detail) = match provision_bucket(aws, bucket, days, dry_run).await {
            Ok(done) => done,
            Err(e) => (Status::Error, e.message),
        };
        report.push(Kind::BodiesBucket, bucket, status, detail);
    }
}

const TABLE_AS_MADE: &str = "on-demand, GSIs due/recent/lookup, TTL on expires, point-in-time \
     recovery on, encrypted at rest";

async fn provision_table(store: &DynamoStore, dry_run: bool, report: &mut Report) {
    let name = store.table().to_owned();
    let (status, detail) = match table_step(store, dry_run).await {
        Ok(done) => done,
        Err(e) => (Status::Error, e.to_string()),
    };
    report.push(Kind::DynamodbTable, &name, status, detail);
}

async fn table_step(
    store: &DynamoStore,
    dry_run: bool,
) -> Result<(Status, String), crate::store::StoreError> {
    let Some(drift) = store.table_drift().await? else {
        if dry_run {
            return Ok((Status::WouldCreate, TABLE_AS_MADE.to_owned()));
        }
        store
            .create_table(crate::store::millis(crate::clock::Clock::now(
                &crate::clock::SystemClock,
            )))
            .await?;
        return Ok((Status::Created, TABLE_AS_MADE.to_owned()));
    };
    if drift.is_empty() {
        return Ok((Status::Unchanged, TABLE_AS_MADE.to_owned()));
    }
    let said = drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    // A table slipway cannot use as it is (other keys, an index keyed otherwise) is left
    // alone: repairing the rest would only make a stranger's table look like ours.
    let status = match (drift.iter().all(Drift::is_repairable), dry_run) {
        (false, _) => Status::Error,
        (true, true) => Status::WouldUpdate,
        (true, false) => {
            for d in &drift {
                store.repair(d).await?;
            }
            return Ok((Status::Updated, format!("repaired: {said}")));
        }
    };
    Ok((status, said))
}

/// The bucket's differences from what slipway needs, each with its fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BucketDrift {
    PublicAccessNotBlocked,
    NoDefaultEncryption,
    NoLifecycleRule,
}

impl BucketDrift {
    fn describe(self, days: u64) -> String {
        match self {
            BucketDrift::PublicAccessNotBlocked => "public access not blocked".to_owned(),
            BucketDrift::NoDefaultEncryption => "no default encryption".to_owned(),
            BucketDrift::NoLifecycleRule => format!(
                "no lifecycle rule {LIFECYCLE_RULE_ID} expiring {BODIES_PREFIX} after {days} days"
            ),
        }
    }
}

fn bucket_as_made(days: u64) -> String {
    format!(
        "private (public access blocked), encrypted (SSE-S3), {BODIES_PREFIX} expires after \
         {days} days"
    )
}

async fn provision_bucket(
    aws: &Clients,
    bucket: &str,
    days: u64,
    dry_run: bool,
) -> Result<(Status, String), AwsError> {
    let exists = match aws.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => false,
        Err(e) => return Err(AwsError::from_sdk(&format!("S3 HeadBucket {bucket}"), &e)),
    };
    if !exists {
        if dry_run {
            return Ok((Status::WouldCreate, bucket_as_made(days)));
        }
        create_bucket(aws, bucket).await?;
        for fix in [
            BucketDrift::PublicAccessNotBlocked,
            BucketDrift::NoDefaultEncryption,
            BucketDrift::NoLifecycleRule,
        ] {
            repair_bucket(aws, bucket, days, fix).await?;
        }
        return Ok((Status::Created, bucket_as_made(days)));
    }
    let drift = bucket_drift(aws, bucket, days).await?;
    if drift.is_empty() {
        return Ok((Status::Unchanged, bucket_as_made(days)));
    }
    let said = drift
        .iter()
        .map(|d| d.describe(days))
        .collect::<Vec<_>>()
        .join("; ");
    if dry_run {
        return Ok((Status::WouldUpdate, said));
    }
    for fix in drift {
        repair_bucket(aws, bucket, days, fix).await?;
    }
    Ok((Status::Updated, format!("repaired: {said}")))
}

async fn create_bucket(aws: &Clients, bucket: &str) -> Result<(), AwsError> {
    let mut create = aws.s3.create_bucket().bucket(bucket);
    // us-east-1 takes no location constraint; every other region needs its own.
    if let Some(region) = aws.s3.config().region().map(|r| r.as_ref().to_owned()) {
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
    }
    create
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&format!("S3 CreateBucket {bucket}"), &e))?;
    Ok(())
}

/// Whether an S3 error is the "not configured" answer of a Get…Configuration call.
fn is_code<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, HttpResponse>,
    code: &str,
) -> bool {
    e.as_service_error().and_then(|e| e.code()) == Some(code)
}

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

async fn bucket_drift(
    aws: &Clients,
    bucket: &str,
    days: u64,
) -> Result<Vec<BucketDrift>, AwsError> {
    let mut drift = Vec::new();
    let blocked = match aws.s3.get_public_access_block().bucket(bucket).send().await {
        Ok(out) => out.public_access_block_configuration().is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        }),
        Err(e) if is_code(&e, "NoSuchPublicAccessBlockConfiguration") => false,
        Err(e) => {
            return Err(AwsError::from_sdk(
                &format!("S3 GetPublicAccessBlock {bucket}"),
                &e,
            ))
        }
    };
    if !blocked {
        drift.push(BucketDrift::PublicAccessNotBlocked);
    }
    let encrypted = match aws.s3.get_bucket_encryption().bucket(bucket).send().await {
        Ok(out) => out.server_side_encryption_configuration().is_some_and(|c| {
            c.rules()
                .iter()
                .any(|r| r.apply_server_side_encryption_by_default().is_some())
        }),
        Err(e) if is_code(&e, "ServerSideEncryptionConfigurationNotFoundError") => false,
        Err(e) => {
            return Err(AwsError::from_sdk(
                &format!("S3 GetBucketEncryption {bucket}"),
                &e,
            ))
        }
    };
    if !encrypted {
        drift.push(BucketDrift::NoDefaultEncryption);
    }
    let rules = lifecycle_rules(aws, bucket).await?;
    let ours = rules.iter().find(|r| r.id() == Some(LIFECYCLE_RULE_ID));
    if ours != Some(&lifecycle_rule(days)?) {
        drift.push(BucketDrift::NoLifecycleRule);
    }
    Ok(drift)
}

/// The bucket's lifecycle rules (none when it has no configuration).
async fn lifecycle_rules(aws: &Clients, bucket: &str) -> Result<Vec<LifecycleRule>, AwsError> {
    match aws
        .s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => Ok(out.rules().to_vec()),
        Err(e) if is_code(&e, "NoSuchLifecycleConfiguration") => Ok(Vec::new()),
        Err(e) => Err(AwsError::from_sdk(
            &format!("S3 GetBucketLifecycleConfiguration {bucket}"),
            &e,
        )),
    }
}

/// The rule slipway owns: `bodies/` objects expire `days` after they were written.
fn lifecycle_rule(days: u64) -> Result<LifecycleRule, AwsError> {
    LifecycleRule::builder()
        .id(LIFECYCLE_RULE_ID)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(BODIES_PREFIX).build())
        .expiration(
            LifecycleExpiration::builder()
                .days(i32::try_from(days).unwrap_or(i32::MAX))
                .build(),
        )
        .build()
        .map_err(|e| AwsError::permanent(format!("cannot make the lifecycle rule: {e}")))
}

async fn repair_bucket(
    aws: &Clients,
    bucket: &str,
    days: u64,
    fix: BucketDrift,
) -> Result<(), AwsError> {
    match fix {
        BucketDrift::PublicAccessNotBlocked => {
            aws.s3
                .put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .block_public_acls(true)
                        .ignore_public_acls(true)
                        .block_public_policy(true)
                        .restrict_public_buckets(true)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    AwsError::from_sdk(&format!("S3 PutPublicAccessBlock {bucket}"), &e)
                })?;
        }
        BucketDrift::NoDefaultEncryption => {
            let by_default = ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::Aes256)
                .build()
                .map_err(|e| AwsError::permanent(format!("cannot make the encryption: {e}")))?;
            let encryption = ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(by_default)
                        .build(),
                )
                .build()
                .map_err(|e| AwsError::permanent(format!("cannot make the encryption: {e}")))?;
            aws.s3
                .put_bucket_encryption()
                .bucket(bucket)
                .server_side_encryption_configuration(encryption)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(&format!("S3 PutBucketEncryption {bucket}"), &e))?;
        }
        BucketDrift::NoLifecycleRule => {
            // The configuration replaces every rule: the bucket's other rules are kept.
            let mut rules: Vec<LifecycleRule> = lifecycle_rules(aws, bucket)
                .await?
                .into_iter()
                .filter(|r| r.id() != Some(LIFECYCLE_RULE_ID))
                .collect();
            rules.push(lifecycle_rule(days)?);
            let configuration = BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules))
                .build()
                .map_err(|e| AwsError::permanent(format!("cannot make the lifecycle: {e}")))?;
            aws.s3
                .put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(configuration)
                .send()
                .await
                .map_err(|e| {
                    AwsError::from_sdk(&format!("S3 PutBucketLifecycleConfiguration {bucket}"), &e)
                })?;
        }
    }
    Ok(())
}
