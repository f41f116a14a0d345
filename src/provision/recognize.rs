//! Recognising slipway's plumbing when someone else made it: deploy/cloudformation.yml
//! creates the same rule, a target with its own Id (`slipway-events-queue`, with a dead-letter
//! queue and a retry policy) and a queue-policy statement with its own Sid. `provision` takes
//! those for what they are (`ok`) instead of adding its own target (every event would then
//! arrive twice) or rewriting the policy under another Sid (drift in the stack).

use aws_sdk_eventbridge::types::Target;
use serde_json::Value;

use super::plumbing::{normalize, target_is};
use super::TARGET_ID;

/// How the queue's current policy compares with the one statement slipway wants.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PolicyMatch {
    /// One statement, the desired one but for its Sid (which is returned, empty if none).
    Same { sid: String },
    /// Anything else. When there is one statement, its Sid, to keep when it is rewritten
    /// (the stack's Sid stays the stack's).
    Differs { sid: Option<String> },
}

/// The statements of a policy document (a single statement may be written without a list).
fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(_) => vec![&policy["Statement"]],
        _ => Vec::new(),
    }
}

fn without_sid(statement: &Value) -> Value {
    let mut statement = statement.clone();
    if let Some(map) = statement.as_object_mut() {
        map.remove("Sid");
    }
    normalize(&statement)
}

/// Compares the queue's policy (its JSON text, if any) with `desired` (one statement).
pub(super) fn match_policy(current: Option<&str>, desired: &Value) -> PolicyMatch {
    let Some(current) = current.and_then(|text| serde_json::from_str::<Value>(text).ok()) else {
        return PolicyMatch::Differs { sid: None };
    };
    let wanted = statements(desired);
    let found = statements(&current);
    let sid = match found.as_slice() {
        [one] => Some(one["Sid"].as_str().unwrap_or_default().to_owned()),
        _ => None,
    };
    let same_document = normalize(&current["Version"]) == normalize(&desired["Version"]);
    match (found.as_slice(), wanted.as_slice(), sid) {
        ([one], [want], Some(sid)) if same_document && without_sid(one) == without_sid(want) => {
            PolicyMatch::Same { sid }
        }
        (_, _, sid) => PolicyMatch::Differs {
            sid: sid.filter(|s| !s.is_empty()),
        },
    }
}

/// The targets of the rule that concern slipway: the one to keep (and bring in line), and the
/// others that also send to the queue (each event then arrives once more per extra target).
#[derive(Debug, Default)]
pub(super) struct Targets {
    pub(super) keep: Option<Target>,
    pub(super) extra: Vec<String>,
}

/// Picks, among the rule's targets: one that sends the whole event to the queue, whatever its
/// Id (one with a dead-letter queue first, as the stack's has, then slipway's own); else
/// slipway's own (`TARGET_ID`, to be brought in line); else one that sends something else to
/// the queue (to be brought in line under its own Id).
pub(super) fn pick_targets(targets: &[Target], queue_arn: Option<&str>) -> Targets {
    let to_queue = |t: &&Target| queue_arn.is_some_and(|arn| t.arn() == arn);
    let ours = |t: &&Target| t.id() == TARGET_ID;
    let whole = |t: &&Target| queue_arn.is_some_and(|arn| target_is(t, arn));
    let keep = targets
        .iter()
        .filter(whole)
        .max_by_key(|t| (t.dead_letter_config().is_some(), t.id() == TARGET_ID))
        .or_else(|| targets.iter().find(ours))
        .or_else(|| targets.iter().find(to_queue))
        .cloned();
    let extra = targets
        .iter()
        .filter(to_queue)
        .filter(|t| keep.as_ref().is_none_or(|k| k.id() != t.id()))
        .map(|t| t.id().to_owned())
        .collect();
    Targets { keep, extra }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eventbridge::types::DeadLetterConfig;
    use serde_json::json;

    const QUEUE: &str = "arn:aws:sqs:eu-west-1:123456789012:slipway-events";
    const RULE: &str = "arn:aws:events:eu-west-1:123456789012:rule/slipway-events-codebuild";

    fn target(id: &str, arn: &str) -> Target {
        Target::builder().id(id).arn(arn).build().unwrap()
    }

    #[test]
    fn the_stacks_statement_is_the_same_whatever_its_sid() {
        let desired = super::super::queue_policy(QUEUE, RULE);
        let mut stack = desired.clone();
        stack["Statement"][0]["Sid"] = json!("BuildStateRuleSends");
        // CloudFormation writes the statement; SQS may hand back a lone statement unlisted.
        stack["Statement"] = stack["Statement"][0].clone();
        assert_eq!(
            match_policy(Some(&stack.to_string()), &desired),
            PolicyMatch::Same {
                sid: "BuildStateRuleSends".into()
            }
        );
    }

    #[test]
    fn another_rule_or_a_second_statement_differs() {
        let desired = super::super::queue_policy(QUEUE, RULE);
        let other_rule = super::super::queue_policy(QUEUE, &format!("{RULE}-other"));
        assert_eq!(
            match_policy(Some(&other_rule.to_string()), &desired),
            PolicyMatch::Differs {
                sid: Some(super::super::POLICY_SID.into())
            }
        );
        let mut two = desired.clone();
        let extra = json!({"Sid": "Everyone", "Effect": "Allow", "Principal": "*",
                           "Action": "sqs:SendMessage", "Resource": QUEUE});
        two["Statement"].as_array_mut().unwrap().push(extra);
        assert_eq!(
            match_policy(Some(&two.to_string()), &desired),
            PolicyMatch::Differs { sid: None }
        );
        assert_eq!(
            match_policy(None, &desired),
            PolicyMatch::Differs { sid: None }
        );
    }

    #[test]
    fn the_stacks_target_is_kept_and_a_second_one_named() {
        let stack = target("slipway-events-queue", QUEUE);
        let picked = pick_targets(std::slice::from_ref(&stack), Some(QUEUE));
        assert_eq!(picked.keep.unwrap().id(), "slipway-events-queue");
        assert!(picked.extra.is_empty());

        // Both: the one with a dead-letter queue (the stack's) stays, the other is named.
        let with_dlq = Target::builder()
            .id("slipway-events-queue")
            .arn(QUEUE)
            .dead_letter_config(DeadLetterConfig::builder().arn("arn:dlq").build())
            .build()
            .unwrap();
        let both = [
            target(TARGET_ID, QUEUE),
            with_dlq,
            target("audit", "arn:other"),
        ];
        let picked = pick_targets(&both, Some(QUEUE));
        assert_eq!(picked.keep.unwrap().id(), "slipway-events-queue");
        assert_eq!(picked.extra, [TARGET_ID]);
        // Without one, slipway's own stays.
        let plain = [stack, target(TARGET_ID, QUEUE)];
        let picked = pick_targets(&plain, Some(QUEUE));
        assert_eq!(picked.keep.unwrap().id(), TARGET_ID);
        assert_eq!(picked.extra, ["slipway-events-queue"]);

        // slipway's own target pointing elsewhere is brought back under its own Id.
        let moved = [target(TARGET_ID, "arn:elsewhere")];
        let picked = pick_targets(&moved, Some(QUEUE));
        assert_eq!(picked.keep.unwrap().id(), TARGET_ID);
        assert!(pick_targets(&[], Some(QUEUE)).keep.is_none());
    }
}
