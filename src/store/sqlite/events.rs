//! CodeBuild events slipway refused to believe (see `events::trust`).

use rusqlite::params;

use super::{SqliteStore, StoreError};
use crate::store::events::*;

impl SqliteStore {
    /// Records a refused event. Written before the message is deleted.
    pub async fn event_rejected(&self, event: RejectedEvent) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO rejected_events (message_id, build_id, source, account, reason,
                     received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    event.message_id,
                    event.build_id,
                    event.source,
                    event.account,
                    event.reason,
                    event.received_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest refused events first.
    pub async fn rejected_events(&self, limit: u32) -> Result<Vec<RejectedEvent>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT message_id, build_id, source, account, reason, received_ms
                 FROM rejected_events ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(RejectedEvent {
                    message_id: r.get(0)?,
                    build_id: r.get(1)?,
                    source: r.get(2)?,
                    account: r.get(3)?,
                    reason: r.get(4)?,
                    received_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The `SLIPWAY_RUN` token of the build slipway journaled under this CodeBuild id, if any.
    pub async fn run_token_of(&self, build_id: &str) -> Result<Option<String>, StoreError> {
        let build_id = build_id.to_owned();
        self.read(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT token FROM builds WHERE build_id = ?1",
                [build_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}
