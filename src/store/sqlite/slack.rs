//! Slack requests already handled (replay protection), durable across restarts.

use super::{SqliteStore, StoreError};

impl SqliteStore {
    /// Records the Slack request signed with `signature` (its decoded bytes, so a re-encoded
    /// header is the same request) at `now` (Unix seconds). True the first time; false if it
    /// was seen within `window_secs`. Older entries are forgotten.
    pub async fn slack_first_time(
        &self,
        signature: Vec<u8>,
        now: i64,
        window_secs: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM slack_seen WHERE seen_at < ?1",
                [now - window_secs],
            )?;
            let inserted = tx.execute(
                "INSERT INTO slack_seen (signature, seen_at) VALUES (?1, ?2)
                 ON CONFLICT(signature) DO NOTHING",
                rusqlite::params![signature, now],
            )?;
            Ok(inserted == 1)
        })
        .await
    }
}
