//! The rollouts being watched, by ECS deployment id, so that ECS's own deployment events
//! (`ECS Deployment State Change`, see `events::ecs`) wake the watch they concern at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One watched rollout.
#[derive(Debug, Default)]
pub struct Watch {
    /// Woken by an event that may end the rollout: the watch looks at once (one Describe
    /// call).
    pub wake: Notify,
    /// Events received for it: while they arrive, polling is only the fallback.
    pub events: AtomicU64,
}

/// Watched rollouts by ECS deployment id (`ecs-svc/…`, the event's `deploymentId`).
#[derive(Debug, Default)]
pub struct Watchers {
    by_id: Mutex<HashMap<String, Arc<Watch>>>,
}

impl Watchers {
    /// Registers a watch of `ecs_id`; it is removed when the returned guard drops.
    pub fn watch(self: &Arc<Self>, ecs_id: &str) -> Registered {
        let watch = self
            .by_id
            .lock()
            .expect("watchers")
            .entry(ecs_id.to_owned())
            .or_default()
            .clone();
        Registered {
            watchers: self.clone(),
            ecs_id: ecs_id.to_owned(),
            watch,
        }
    }

    /// An event for `ecs_id` arrived: counts it, and wakes the watch when `look` (an event
    /// that may end the rollout; one saying it is in progress tells the watch nothing new, and
    /// a look for each would make more than the fallback's one call a minute). False when no
    /// rollout of slipway's is watching that deployment.
    pub fn event_for(&self, ecs_id: &str, look: bool) -> bool {
        let watch = self.by_id.lock().expect("watchers").get(ecs_id).cloned();
        match watch {
            Some(w) => {
                w.events.fetch_add(1, Ordering::Relaxed);
                if look {
                    w.wake.notify_one();
                }
                true
            }
            None => false,
        }
    }
}

/// A registration; dropping it ends the watch.
pub struct Registered {
    watchers: Arc<Watchers>,
    ecs_id: String,
    pub watch: Arc<Watch>,
}

impl Registered {
    /// Whether ECS's events have arrived for this rollout.
    pub fn events_arrive(&self) -> bool {
        self.watch.events.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut map = self.watchers.by_id.lock().expect("watchers");
        if map
            .get(&self.ecs_id)
            .is_some_and(|w| Arc::ptr_eq(w, &self.watch))
        {
            map.remove(&self.ecs_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_wakes_only_a_registered_watch_until_it_ends() {
        let watchers = Arc::new(Watchers::default());
        assert!(!watchers.event_for("ecs-svc/1", true));
        let r = watchers.watch("ecs-svc/1");
        assert!(!r.events_arrive());
        assert!(watchers.event_for("ecs-svc/1", true));
        assert!(r.events_arrive());
        assert!(!watchers.event_for("ecs-svc/2", true));
        drop(r);
        assert!(!watchers.event_for("ecs-svc/1", true));
    }

    #[test]
    fn an_event_that_cannot_end_the_rollout_is_counted_without_a_wake() {
        use futures_util::FutureExt;
        let watchers = Arc::new(Watchers::default());
        let r = watchers.watch("ecs-svc/1");
        assert!(watchers.event_for("ecs-svc/1", false));
        assert!(
            r.events_arrive(),
            "counted: polling falls back to once a minute"
        );
        assert!(
            r.watch.wake.notified().now_or_never().is_none(),
            "no look for it"
        );
        assert!(watchers.event_for("ecs-svc/1", true));
        assert!(r.watch.wake.notified().now_or_never().is_some(), "a look");
    }
}
