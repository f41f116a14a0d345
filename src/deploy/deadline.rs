//! How long slipway waits for a rollout: at least what ECS itself needs for the service's
//! deployment strategy, and never less than the app's `rollout_timeout_secs`.
//!
//! ECS's own strategies wait on purpose (ECS API reference, `DeploymentConfiguration`,
//! `LinearConfiguration`, `CanaryConfiguration`):
//! - `LINEAR` shifts `stepPercent` (default 10) of the traffic a step and waits
//!   `stepBakeTimeInMinutes` (default 6) between steps, not after the last one, then bakes
//!   `bakeTimeInMinutes`: with the defaults 9 × 6 = 54 minutes plus the bake time.
//! - `CANARY` shifts `canaryPercent`, waits `canaryBakeTimeInMinutes` (default 10), shifts the
//!   rest, then bakes.
//! - `BLUE_GREEN` bakes `bakeTimeInMinutes` (up to 1440) after the production traffic shift.
//!
//! A rolling update has no wait of its own: `rollout_timeout_secs` alone.

use std::time::Duration;

use aws_sdk_ecs::types::{DeploymentConfiguration, DeploymentStrategy};

/// Added to a strategy's waits, for what ECS does besides waiting (starting the new tasks,
/// health checks, shifting traffic, lifecycle hooks).
pub const MARGIN: Duration = Duration::from_secs(5 * 60);

const LINEAR_STEP_PERCENT: f64 = 10.0;
const LINEAR_STEP_BAKE_MINUTES: i32 = 6;
const CANARY_BAKE_MINUTES: i32 = 10;

/// The time slipway gives a rollout, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub after: Duration,
    pub why: String,
}

/// The waits of the service's strategy, described; `None` for a rolling update.
fn strategy_waits(config: &DeploymentConfiguration) -> Option<(Duration, String)> {
    let bake = config.bake_time_in_minutes().unwrap_or(0).max(0) as u64;
    let minutes = |m: u64| Duration::from_secs(m * 60);
    match config.strategy()? {
        DeploymentStrategy::Linear => {
            let linear = config.linear_configuration();
            let percent = linear
                .and_then(|l| l.step_percent())
                .filter(|p| *p > 0.0)
                .unwrap_or(LINEAR_STEP_PERCENT);
            let step_bake = linear
                .and_then(|l| l.step_bake_time_in_minutes())
                .unwrap_or(LINEAR_STEP_BAKE_MINUTES)
                .max(0) as u64;
            let steps = linear_steps(percent);
            Some((
                minutes(steps * step_bake + bake),
                format!(
                    "LINEAR: {steps} steps of {percent}% × {step_bake} min + {bake} min bake time"
                ),
            ))
        }
        DeploymentStrategy::Canary => {
            let canary_bake = config
                .canary_configuration()
                .and_then(|c| c.canary_bake_time_in_minutes())
                .unwrap_or(CANARY_BAKE_MINUTES)
                .max(0) as u64;
            Some((
                minutes(canary_bake + bake),
                format!("CANARY: {canary_bake} min canary bake time + {bake} min bake time"),
            ))
        }
        DeploymentStrategy::BlueGreen => {
            Some((minutes(bake), format!("BLUE_GREEN: {bake} min bake time")))
        }
        _ => None,
    }
}

/// The number of waits between traffic shifts: the step bake time is not applied after the
/// shift that reaches 100 % (CloudFormation's `LinearConfiguration` documents the same count).
fn linear_steps(percent: f64) -> u64 {
    let shifts = (100.0 / percent).ceil() as u64;
    shifts.saturating_sub(1)
}

/// The deadline of a rollout of a service with this deployment configuration.
pub fn for_service(
    config: Option<&DeploymentConfiguration>,
    rollout_timeout: Duration,
) -> Deadline {
    let own = format!("rollout_timeout_secs = {}", rollout_timeout.as_secs());
    match config.and_then(strategy_waits) {
        Some((waits, what)) if !waits.is_zero() => {
            let needs = waits + MARGIN;
            if needs > rollout_timeout {
                Deadline {
                    after: needs,
                    why: format!(
                        "{what} + {} min margin, longer than {own}",
                        MARGIN.as_secs() / 60
                    ),
                }
            } else {
                Deadline {
                    after: rollout_timeout,
                    why: format!("{own}, longer than ECS needs ({what})"),
                }
            }
        }
        Some((_, what)) => Deadline {
            after: rollout_timeout,
            why: format!("{own} ({what}: no wait of ECS's own)"),
        },
        None => Deadline {
            after: rollout_timeout,
            why: format!("{own} (rolling update)"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{CanaryConfiguration, LinearConfiguration};

    const FIFTEEN_MIN: Duration = Duration::from_secs(900);

    fn config(
        strategy: DeploymentStrategy,
    ) -> aws_sdk_ecs::types::builders::DeploymentConfigurationBuilder {
        DeploymentConfiguration::builder().strategy(strategy)
    }

    #[test]
    fn a_default_linear_deploy_gets_its_54_minutes_and_the_bake_time() {
        let c = config(DeploymentStrategy::Linear)
            .bake_time_in_minutes(5)
            .build();
        let d = for_service(Some(&c), FIFTEEN_MIN);
        // 9 waits of 6 minutes, 5 minutes of bake time, 5 minutes of margin.
        assert_eq!(d.after, Duration::from_secs((54 + 5 + 5) * 60), "{d:?}");
        assert!(
            d.why
                .contains("LINEAR: 9 steps of 10% × 6 min + 5 min bake time"),
            "{d:?}"
        );
        assert!(d.why.contains("rollout_timeout_secs = 900"), "{d:?}");
    }

    #[test]
    fn linear_steps_follow_the_step_percent() {
        assert_eq!(linear_steps(10.0), 9);
        assert_eq!(linear_steps(11.0), 9);
        assert_eq!(linear_steps(100.0), 0);
        assert_eq!(linear_steps(3.0), 33);
        let c = config(DeploymentStrategy::Linear)
            .linear_configuration(
                LinearConfiguration::builder()
                    .step_percent(25.0)
                    .step_bake_time_in_minutes(2)
                    .build(),
            )
            .build();
        let d = for_service(Some(&c), Duration::from_secs(60));
        assert_eq!(d.after, Duration::from_secs((3 * 2 + 5) * 60), "{d:?}");
    }

    #[test]
    fn canary_waits_its_canary_bake_time_and_the_bake_time() {
        let c = config(DeploymentStrategy::Canary)
            .bake_time_in_minutes(20)
            .build();
        let d = for_service(Some(&c), FIFTEEN_MIN);
        assert_eq!(d.after, Duration::from_secs((10 + 20 + 5) * 60), "{d:?}");
        let c = config(DeploymentStrategy::Canary)
            .canary_configuration(
                CanaryConfiguration::builder()
                    .canary_bake_time_in_minutes(1)
                    .build(),
            )
            .build();
        let d = for_service(Some(&c), FIFTEEN_MIN);
        assert_eq!(d.after, FIFTEEN_MIN, "the app's timeout is longer: {d:?}");
        assert!(d.why.contains("longer than ECS needs"), "{d:?}");
    }

    #[test]
    fn blue_green_waits_its_bake_time_up_to_a_day() {
        let c = config(DeploymentStrategy::BlueGreen)
            .bake_time_in_minutes(1440)
            .build();
        let d = for_service(Some(&c), FIFTEEN_MIN);
        assert_eq!(d.after, Duration::from_secs((1440 + 5) * 60), "{d:?}");
        let c = config(DeploymentStrategy::BlueGreen)
            .bake_time_in_minutes(0)
            .build();
        let d = for_service(Some(&c), Duration::from_secs(2));
        assert_eq!(d.after, Duration::from_secs(2), "no wait, no margin: {d:?}");
    }

    #[test]
    fn a_rolling_update_keeps_the_apps_timeout() {
        let c = config(DeploymentStrategy::Rolling)
            .bake_time_in_minutes(30)
            .build();
        assert_eq!(for_service(Some(&c), FIFTEEN_MIN).after, FIFTEEN_MIN);
        assert_eq!(for_service(None, FIFTEEN_MIN).after, FIFTEEN_MIN);
    }
}
