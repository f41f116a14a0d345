//! Many deliveries in one transaction (issue 13): imports and the benchmark's seed.

use super::deliveries::{admit_in, Incoming};
use super::{Admission, NewDelivery, SqliteStore, StoreError, Verdict};

impl SqliteStore {
    /// Journals `deliveries` in order, each decided exactly as [`SqliteStore::admit`] decides it,
    /// in one transaction: one sync for all of them. All or nothing: if one cannot be stored,
    /// none is. Not for webhook intake: it bypasses the bounded intake queue.
    pub async fn admit_all(
        &self,
        deliveries: Vec<(NewDelivery, Verdict)>,
    ) -> Result<Vec<(i64, Admission)>, StoreError> {
        let incoming: Vec<(Incoming, Verdict)> = deliveries
            .into_iter()
            .map(|(d, v)| (Incoming::new(d), v))
            .collect();
        self.write(move |tx| {
            incoming
                .into_iter()
                .map(|(d, v)| admit_in(tx, &d, v))
                .collect()
        })
        .await
    }
}
