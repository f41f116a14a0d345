//! Time, injected so the engine and the journal agree on one clock.

use std::sync::Arc;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;

    /// Waits `d` by this clock. Long waits that follow the clock (a rate limit's reset, an
    /// outbox's backoff) go through it, so a clock that runs faster makes them shorter; the
    /// system clock waits on tokio's timer.
    fn sleep(&self, d: std::time::Duration) -> BoxSleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// What [`Clock::sleep`] returns.
pub type BoxSleep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// RFC 3339 with second precision in UTC, the journal's time format (sorts as text).
pub fn format(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}
