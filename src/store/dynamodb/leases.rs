//! Leases in the table (issue 26; see [`crate::store::Lease`]): one item each, `pk = "lease"`,
//! `sk = <name>`, so one strongly consistent Query lists them all. Taking one is a conditional
//! `PutItem` on the fence read just before (optimistic: two replicas racing for a free lease
//! both read fence N, one writes N + 1, the other's condition fails); renewing and releasing
//! are `UpdateItem`s conditional on the fence. A fenced write adds a `ConditionCheck` on the
//! lease item to its transaction
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).

use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem};

use super::item::{get_n, get_s, key, n, s, Item};
use super::{bad_request, put_if, sdk_error, update_if, DynamoStore};
use crate::store::{Fence, Lease, StoreError};

const PK: &str = "lease";

fn lease_from(item: &Item) -> Result<Lease, StoreError> {
    Ok(Lease {
        name: get_s(item, "sk")?,
        holder: get_s(item, "holder")?,
        fence: get_n(item, "fence")?,
        expires_ms: get_n(item, "expires_ms")?,
        since_ms: get_n(item, "since_ms")?,
    })
}

impl DynamoStore {
    /// The transaction item that makes a write conditional on `fence`.
    pub(super) fn fence_check(&self, fence: &Fence) -> Result<TransactWriteItem, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(self.table())
            .set_key(Some(key(PK, fence.name.clone())))
            .condition_expression("fence = :fence AND expires_ms > :zero")
            .expression_attribute_values(":fence", n(fence.fence))
            .expression_attribute_values(":zero", n(0))
            .build()
            .map_err(bad_request)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    pub async fn claim_lease(
        &self,
        name: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let before = self.lease(name.clone()).await?;
        let fence = match &before {
            Some(l) if l.is_live(now_ms) => return Ok(None),
            Some(l) => l.fence + 1,
            None => 1,
        };
        let lease = Lease {
            name,
            holder,
            fence,
            expires_ms: now_ms + ttl_ms,
            since_ms: now_ms,
        };
        let mut item = key(PK, lease.name.clone());
        item.insert("holder".into(), s(&lease.holder));
        item.insert("fence".into(), n(lease.fence));
        item.insert("expires_ms".into(), n(lease.expires_ms));
        item.insert("since_ms".into(), n(lease.since_ms));
        let mut put = self
            .client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(item));
        put = match &before {
            None => put.condition_expression("attribute_not_exists(pk)"),
            // Still as read: nobody took it in between.
            Some(l) => put
                .condition_expression("fence = :fence AND expires_ms = :expires")
                .expression_attribute_values(":fence", n(l.fence))
                .expression_attribute_values(":expires", n(l.expires_ms)),
        };
        Ok(put_if(put).await?.then_some(lease))
    }

    pub async fn renew_lease(
        &self,
        lease: Lease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let expires = now_ms + ttl_ms;
        let update = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(PK, lease.name.clone())))
            .update_expression("SET expires_ms = :expires")
            .condition_expression("fence = :fence AND holder = :holder AND expires_ms > :zero")
            .expression_attribute_values(":expires", n(expires))
            .expression_attribute_values(":fence", n(lease.fence))
            .expression_attribute_values(":holder", s(&lease.holder))
            .expression_attribute_values(":zero", n(0));
        Ok(update_if(update).await?.then_some(Lease {
            expires_ms: expires,
            ..lease
        }))
    }

    pub async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        let update = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(PK, lease.name.clone())))
            .update_expression("SET expires_ms = :zero")
            .condition_expression("fence = :fence")
            .expression_attribute_values(":fence", n(lease.fence))
            .expression_attribute_values(":zero", n(0));
        update_if(update).await?;
        Ok(())
    }

    pub async fn lease(&self, name: String) -> Result<Option<Lease>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key(PK, name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        out.item().map(lease_from).transpose()
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let query = self
            .client()
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(PK))
            .consistent_read(true);
        self.query_items(query, None)
            .await?
            .iter()
            .map(lease_from)
            .collect()
    }
}

impl DynamoStore {
    /// Runs a transaction whose last item is `fence`'s check: `Fenced` when the lease no longer
    /// carries the fence. A conflict with another write of the lease item (its renewal) is
    /// tried again, a few times; an item that is not there is no change, as an UPDATE of no row.
    pub(super) async fn fenced_transact(
        &self,
        writes: Vec<TransactWriteItem>,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        for attempt in 1..=5u64 {
            let result = self
                .client()
                .transact_write_items()
                .set_transact_items(Some(writes.clone()))
                .send()
                .await;
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let codes: Vec<Option<String>> = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned))
                    .collect(),
                _ => return Err(super::deliveries::transaction_error(e)),
            };
            let is = |i: usize, code: &str| {
                codes
                    .get(i)
                    .and_then(|c| c.as_deref())
                    .is_some_and(|c| c == code)
            };
            let last = writes.len() - 1;
            if is(last, "ConditionalCheckFailed") {
                return Err(StoreError::Fenced(fence.name.clone()));
            }
            if codes.iter().flatten().any(|c| c == "TransactionConflict") {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                continue;
            }
            if (0..last).any(|i| is(i, "ConditionalCheckFailed")) {
                return Ok(());
            }
            // No reasons said which item (an emulator may give none): the lease decides.
            return match self.lease(fence.name.clone()).await? {
                Some(l) if l.fence == fence.fence && l.expires_ms > 0 => Ok(()),
                _ => Err(StoreError::Fenced(fence.name.clone())),
            };
        }
        Err(StoreError::Unavailable {
            reason: format!(
                "DynamoDB TransactWriteItems: conflicted with other writes of lease {} five times",
                fence.name
            ),
        })
    }
}
