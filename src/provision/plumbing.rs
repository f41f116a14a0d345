//! slipway's own plumbing: the desired queue, dead-letter queue, queue policy, rule and
//! target, and the steps that create them or bring them back in line.

use super::recognize::{match_policy, pick_targets, PolicyMatch, Targets};
use super::*;

// Desired state.

/// The rule's event pattern: final build states of these projects.
pub fn event_pattern(projects: &[String]) -> Value {
    let projects: BTreeSet<&str> = projects.iter().map(String::as_str).collect();
    json!({
        "source": ["aws.codebuild"],
        "detail-type": ["CodeBuild Build State Change"],
        "detail": {
            "project-name": projects,
            "build-status": FINAL_BUILD_STATUSES,
        },
    })
}

/// The queue policy: only this rule, through EventBridge, may send to the queue.
pub fn queue_policy(queue_arn: &str, rule_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": POLICY_SID,
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
        }],
    })
}

pub fn redrive_policy(dead_letter_arn: &str, max_receive_count: u32) -> Value {
    json!({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count})
}

/// JSON compared by meaning: arrays are sets (sorted, a single element equals the element
/// itself, as in IAM policies), numbers written as strings are numbers.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(normalize).collect();
            items.sort_by_key(|v| v.to_string());
            items.dedup();
            if items.len() == 1 {
                items.pop().expect("one element")
            } else {
                Value::Array(items)
            }
        }
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) if n.to_string() == *s => Value::from(n),
            _ => v.clone(),
        },
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

pub(super) fn same_json(current: Option<&str>, desired: &Value) -> bool {
    current
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .is_some_and(|v| normalize(&v) == normalize(desired))
}

/// Another resource's ARN in the same partition, region and account as `arn`.
pub(super) fn sibling_arn(arn: &str, service: &str, resource: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, _, region, account, _] => Some(format!(
            "arn:{partition}:{service}:{region}:{account}:{resource}"
        )),
        _ => None,
    }
}

pub(super) fn last_segment(s: &str) -> &str {
    s.rsplit(['/', ':']).next().unwrap_or(s)
}

// slipway's plumbing.

/// A failed step; its item is already in the report.
pub(super) struct Stopped;

pub(super) struct Queue {
    url: String,
    arn: Option<String>,
    attributes: HashMap<String, String>,
}

pub(super) struct Plumbing<'a> {
    pub(super) aws: &'a Clients,
    pub(super) names: &'a ProvisionConfig,
    pub(super) dry_run: bool,
    pub(super) report: &'a mut Report,
}

impl Plumbing<'_> {
    fn failed(&mut self, kind: Kind, name: &str, e: AwsError) -> Stopped {
        self.report.push(kind, name, Status::Error, e.message);
        Stopped
    }

    /// The steps build on each other: the first failure stops them.
    pub(super) async fn run(
        &mut self,
        projects: &[String],
        services: &[String],
    ) -> Result<(), Stopped> {
        let dlq_arn = self.dead_letter_queue().await?;
        let (queue, queue_is_new, queue_arn) = self.events_queue(dlq_arn).await?;
        let (rule_exists, rule_arn) = self.rule(projects, services, queue_arn.as_deref()).await?;
        self.queue_policy(
            queue.as_ref(),
            queue_is_new,
            queue_arn.as_deref(),
            rule_arn.as_deref(),
        )
        .await?;
        self.target(rule_exists, queue_arn.as_deref()).await
    }

    /// The dead-letter queue: created if missing. Its ARN (None in a dry run without it).
    async fn dead_letter_queue(&mut self) -> Result<Option<String>, Stopped> {
        let dlq_name = self.names.dead_letter_queue_name.clone();
        let found = self
            .find_queue(&dlq_name)
            .await
            .map_err(|e| self.failed(Kind::DeadLetterQueue, &dlq_name, e))?;
        let arn = match found {
            Some(q) => {
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::Unchanged,
                    "exists",
                );
                q.arn
            }
            None if self.dry_run => {
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::WouldCreate,
                    "keeps messages 14 days",
                );
                None
            }
            None => {
                let q = self
                    .create_queue(
                        &dlq_name,
                        &[(
                            QueueAttributeName::MessageRetentionPeriod,
                            DLQ_RETENTION_SECS.to_owned(),
                        )],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::DeadLetterQueue, &dlq_name, e))?;
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::Created,
                    "keeps messages 14 days",
                );
                q.arn
            }
        };
        Ok(arn)
    }

    /// The events queue with its redrive policy. The queue (None in a dry run without it),
    /// whether it is new, and its (predicted) ARN.
    async fn events_queue(
        &mut self,
        dlq_arn: Option<String>,
    ) -> Result<(Option<Queue>, bool, Option<String>), Stopped> {
        let dlq_name = self.names.dead_letter_queue_name.clone();
        let queue_name = self.names.queue_name.clone();
        let found = self
            .find_queue(&queue_name)
            .await
            .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
        let mut dlq_arn = dlq_arn;
        if dlq_arn.is_none() {
            dlq_arn = found
                .as_ref()
                .and_then(|q| q.arn.as_deref())
                .and_then(|arn| sibling_arn(arn, "sqs", &dlq_name));
        }
        let max = self.names.max_receive_count;
        let redrive_text = format!("after {max} receives to {dlq_name}");
        let desired_redrive = dlq_arn.as_deref().map(|arn| redrive_policy(arn, max));
        let mut queue = None;
        let mut queue_is_new = false;
        match found {
            None if self.dry_run => {
                self.report.push(
                    Kind::Queue,
                    &queue_name,
                    Status::WouldCreate,
                    format!("dead letters {redrive_text}"),
                );
                queue_is_new = true;
            }
            None => {
                let redrive = desired_redrive
                    .as_ref()
                    .expect("the dead-letter queue exists when not a dry run");
                let q = self
                    .create_queue(
                        &queue_name,
                        &[(QueueAttributeName::RedrivePolicy, redrive.to_string())],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
                self.report.push(
                    Kind::Queue,
                    &queue_name,
                    Status::Created,
                    format!("dead letters {redrive_text}"),
                );
                queue_is_new = true;
                queue = Some(q);
            }
            Some(q) => {
                let current = q.attributes.get("RedrivePolicy").map(String::as_str);
                let same = desired_redrive
                    .as_ref()
                    .is_some_and(|d| same_json(current, d));
                if same {
                    self.report.push(
                        Kind::Queue,
                        &queue_name,
                        Status::Unchanged,
                        format!("dead letters {redrive_text}"),
                    );
                } else {
                    let was = describe_redrive(current);
                    if self.dry_run {
                        self.report.push(
                            Kind::Queue,
                            &queue_name,
                            Status::WouldUpdate,
                            format!("redrive: {was}; would send dead letters {redrive_text}"),
                        );
                    } else {
                        let redrive = desired_redrive
                            .as_ref()
                            .expect("the dead-letter queue exists when not a dry run");
                        // The current policy goes along unchanged: AWS leaves attributes that are
                        // not named alone, but the emulator drops a policy that is not restated.
                        let mut attributes =
                            vec![(QueueAttributeName::RedrivePolicy, redrive.to_string())];
                        if let Some(policy) = q.attributes.get("Policy") {
                            attributes.push((QueueAttributeName::Policy, policy.clone()));
                        }
                        self.set_queue_attributes(&q.url, attributes)
                            .await
                            .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
                        self.report.push(
                            Kind::Queue,
                            &queue_name,
                            Status::Updated,
                            format!("redrive was: {was}; now dead letters {redrive_text}"),
                        );
                    }
                }
                queue = Some(q);
            }
        }
        let queue_arn = queue.as_ref().and_then(|q| q.arn.clone()).or_else(|| {
            dlq_arn
                .as_deref()
                .and_then(|arn| sibling_arn(arn, "sqs", &queue_name))
        });
        self.report.queue_url = queue.as_ref().map(|q| q.url.clone());
        self.report.queue_arn = queue_arn.clone();
        Ok((queue, queue_is_new, queue_arn))
    }

    /// The EventBridge rule, restored if edited. Whether it exists (now), and its ARN.
    async fn rule(
        &mut self,
        projects: &[String],
        services: &[String],
        queue_arn: Option<&str>,
    ) -> Result<(bool, Option<String>), Stopped> {
        let rule_name = self.names.rule_name.clone();
        let pattern = super::ecs_events::rule_pattern(event_pattern(projects), services, queue_arn);
        let pattern_text = format!(
            "CodeBuild final states of {}; ECS deployment events of {}",
            projects.join(", "),
            services.join(", ")
        );
        let rule = self
            .describe_rule(&rule_name)
            .await
            .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
        let mut rule_exists = rule.is_some();
        let rule_arn = match rule {
            None if self.dry_run => {
                self.report
                    .push(Kind::Rule, &rule_name, Status::WouldCreate, &pattern_text);
                queue_arn.and_then(|arn| sibling_arn(arn, "events", &format!("rule/{rule_name}")))
            }
            None => {
                let arn = self
                    .put_rule(&rule_name, &pattern)
                    .await
                    .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
                self.report
                    .push(Kind::Rule, &rule_name, Status::Created, &pattern_text);
                rule_exists = true;
                arn
            }
            Some(current) => {
                let same_pattern = same_json(current.pattern.as_deref(), &pattern);
                let enabled = current.state.as_deref() == Some("ENABLED");
                if same_pattern && enabled {
                    self.report
                        .push(Kind::Rule, &rule_name, Status::Unchanged, &pattern_text);
                    current.arn
                } else {
                    let mut why = Vec::new();
                    if !same_pattern {
                        why.push("event pattern had been changed".to_owned());
                    }
                    if !enabled {
                        why.push(format!(
                            "was {}",
                            current.state.as_deref().unwrap_or("without state")
                        ));
                    }
                    let why = why.join(", ");
                    if self.dry_run {
                        self.report.push(
                            Kind::Rule,
                            &rule_name,
                            Status::WouldUpdate,
                            format!("{why}; would restore: {pattern_text}"),
                        );
                        current.arn
                    } else {
                        let arn = self
                            .put_rule(&rule_name, &pattern)
                            .await
                            .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
                        self.report.push(
                            Kind::Rule,
                            &rule_name,
                            Status::Updated,
                            format!("{why}; restored: {pattern_text}"),
                        );
                        arn.or(current.arn)
                    }
                }
            }
        };
        self.report.rule_arn = rule_arn.clone();
        Ok((rule_exists, rule_arn))
    }

    /// The queue policy: only the rule may send.
    async fn queue_policy(
        &mut self,
        queue: Option<&Queue>,
        queue_is_new: bool,
        queue_arn: Option<&str>,
        rule_arn: Option<&str>,
    ) -> Result<(), Stopped> {
        let policy_name = self.names.queue_name.clone();
        let rule_name = &self.names.rule_name;
        let policy_text = format!("only rule {rule_name} may send, through EventBridge");
        let desired_policy = match (queue_arn, rule_arn) {
            (Some(q), Some(r)) => Some(queue_policy(q, r)),
            _ => None,
        };
        match queue {
            None => {
                // Only in a dry run: the queue would be created.
                self.report.push(
                    Kind::QueuePolicy,
                    &policy_name,
                    Status::WouldCreate,
                    &policy_text,
                );
            }
            Some(q) => {
                let current = q.attributes.get("Policy").map(String::as_str);
                // The stack's statement is the same statement under another Sid: `ok`, and a
                // rewrite keeps the Sid it found.
                let (same_sid, keep_sid) =
                    match desired_policy.as_ref().map(|d| match_policy(current, d)) {
                        Some(PolicyMatch::Same { sid }) => (Some(sid), None),
                        Some(PolicyMatch::Differs { sid }) => (None, sid),
                        None => (None, None),
                    };
                let foreign_sid = same_sid.as_deref().filter(|sid| *sid != POLICY_SID);
                let status = match (same_sid.is_some(), current.is_some() && !queue_is_new) {
                    (true, _) if foreign_sid.is_some() => Status::Ok,
                    (true, _) => Status::Unchanged,
                    (false, false) if self.dry_run => Status::WouldCreate,
                    (false, true) if self.dry_run => Status::WouldUpdate,
                    (false, false) => Status::Created,
                    (false, true) => Status::Updated,
                };
                if matches!(status, Status::Created | Status::Updated) {
                    let mut policy = desired_policy
                        .clone()
                        .expect("queue and rule exist when not a dry run");
                    if let Some(sid) = keep_sid {
                        policy["Statement"][0]["Sid"] = Value::from(sid);
                    }
                    self.set_queue_attributes(
                        &q.url,
                        vec![(QueueAttributeName::Policy, policy.to_string())],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::QueuePolicy, &policy_name, e))?;
                }
                let detail = match (status, foreign_sid) {
                    (Status::Updated | Status::WouldUpdate, _) => {
                        format!("differed; {policy_text}")
                    }
                    (_, Some(sid)) => format!("statement {sid}: {policy_text}"),
                    _ => policy_text,
                };
                self.report
                    .push(Kind::QueuePolicy, &policy_name, status, detail);
            }
        }
        Ok(())
    }

    /// The rule's target: the queue, the whole event as the message.
    async fn target(&mut self, rule_exists: bool, queue_arn: Option<&str>) -> Result<(), Stopped> {
        let rule_name = self.names.rule_name.clone();
        let queue_name = self.names.queue_name.clone();
        let target_text = format!("sends to {queue_name}");
        if !rule_exists {
            self.report.push(
                Kind::RuleTarget,
                &format!("{rule_name}/{TARGET_ID}"),
                Status::WouldCreate,
                &target_text,
            );
            return Ok(());
        }
        let targets = self
            .list_targets(&rule_name)
            .await
            .map_err(|e| self.failed(Kind::RuleTarget, &format!("{rule_name}/{TARGET_ID}"), e))?;
        // The stack's target (another Id) counts as the target: no second one is added.
        let Targets {
            keep: current,
            extra,
        } = pick_targets(&targets, queue_arn);
        let id = current.as_ref().map_or(TARGET_ID, |t| t.id()).to_owned();
        let target_name = format!("{rule_name}/{id}");
        let status = match (&current, queue_arn) {
            (Some(t), Some(arn)) if target_is(t, arn) && id != TARGET_ID => Status::Ok,
            (Some(t), Some(arn)) if target_is(t, arn) => Status::Unchanged,
            (None, _) if self.dry_run => Status::WouldCreate,
            (Some(_), _) if self.dry_run => Status::WouldUpdate,
            (None, _) => Status::Created,
            (Some(_), _) => Status::Updated,
        };
        let detail = match (&current, status) {
            (Some(t), Status::Updated | Status::WouldUpdate) => {
                format!("was {}; {target_text}", last_segment(t.arn()))
            }
            (Some(t), Status::Ok) if t.dead_letter_config().is_some() => {
                format!("{target_text}, with its dead-letter queue")
            }
            _ => target_text,
        };
        if matches!(status, Status::Created | Status::Updated) {
            let arn = queue_arn.expect("the queue exists when not a dry run");
            // An existing target keeps its Id, retry policy and dead-letter queue.
            let target = match current {
                Some(mut t) => {
                    t.arn = arn.to_owned();
                    t.input = None;
                    t.input_path = None;
                    t.input_transformer = None;
                    t
                }
                None => Target::builder()
                    .id(TARGET_ID)
                    .arn(arn)
                    .build()
                    .map_err(|e| AwsError::permanent(format!("EventBridge PutTargets: {e}")))
                    .map_err(|e| self.failed(Kind::RuleTarget, &target_name, e))?,
            };
            self.put_target(&rule_name, target)
                .await
                .map_err(|e| self.failed(Kind::RuleTarget, &target_name, e))?;
        }
        self.report
            .push(Kind::RuleTarget, &target_name, status, detail);
        // A second target to the same queue delivers every event twice: said, not removed
        // (it may be the stack's, and provision does not delete what it did not make).
        for extra_id in extra {
            self.report.push(
                Kind::RuleTarget,
                &format!("{rule_name}/{extra_id}"),
                Status::Warning,
                format!(
                    "also sends to {queue_name}: every build event arrives twice; remove one \
                     (aws events remove-targets --rule {rule_name} --ids {extra_id})"
                ),
            );
        }
        Ok(())
    }

    /// The queue named `name`, with all its attributes, if it exists.
    async fn find_queue(&self, name: &str) -> Result<Option<Queue>, AwsError> {
        let url = match self.aws.sqs.get_queue_url().queue_name(name).send().await {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist());
                let err = AwsError::from_sdk("SQS GetQueueUrl", &e);
                let code = err.code.as_deref().unwrap_or("");
                if not_found || code.contains("NonExistentQueue") || code == "QueueDoesNotExist" {
                    return Ok(None);
                }
                return Err(err);
            }
        };
        self.queue_at(url).await.map(Some)
    }

    async fn queue_at(&self, url: String) -> Result<Queue, AwsError> {
        let out = self
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS GetQueueAttributes", &e))?;
        let attributes: HashMap<String, String> = out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect();
        Ok(Queue {
            arn: attributes.get("QueueArn").cloned(),
            url,
            attributes,
        })
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: &[(QueueAttributeName, String)],
    ) -> Result<Queue, AwsError> {
        let mut request = self.aws.sqs.create_queue().queue_name(name);
        for (k, v) in attributes {
            request = request.attributes(k.clone(), v);
        }
        let out = request
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS CreateQueue", &e))?;
        let url = out
            .queue_url
            .ok_or_else(|| AwsError::permanent("SQS CreateQueue: the answer has no queue URL"))?;
        self.queue_at(url).await
    }

    async fn set_queue_attributes(
        &self,
        url: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> Result<(), AwsError> {
        self.aws
            .sqs
            .set_queue_attributes()
            .queue_url(url)
            .set_attributes(Some(attributes.into_iter().collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS SetQueueAttributes", &e))?;
        Ok(())
    }

    async fn describe_rule(&self, name: &str) -> Result<Option<Rule>, AwsError> {
        match self.aws.events.describe_rule().name(name).send().await {
            Ok(out) => Ok(Some(Rule {
                arn: out.arn().map(str::to_owned),
                pattern: out.event_pattern().map(str::to_owned),
                state: out.state().map(|s| s.as_str().to_owned()),
            })),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                let err = AwsError::from_sdk("EventBridge DescribeRule", &e);
                if not_found || err.code.as_deref() == Some("ResourceNotFoundException") {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Creates or replaces the rule; its ARN.
    async fn put_rule(&self, name: &str, pattern: &Value) -> Result<Option<String>, AwsError> {
        let out = self
            .aws
            .events
            .put_rule()
            .name(name)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .description("CodeBuild build results for slipway (managed by slipway provision)")
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EventBridge PutRule", &e))?;
        Ok(out.rule_arn)
    }

    /// Every target of the rule (all pages).
    async fn list_targets(&self, rule: &str) -> Result<Vec<Target>, AwsError> {
        let mut next = None;
        let mut targets = Vec::new();
        loop {
            let out = self
                .aws
                .events
                .list_targets_by_rule()
                .rule(rule)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("EventBridge ListTargetsByRule", &e))?;
            targets.extend(out.targets().iter().cloned());
            match out.next_token {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(targets),
            }
        }
    }

    async fn put_target(&self, rule: &str, target: Target) -> Result<(), AwsError> {
        let out = self
            .aws
            .events
            .put_targets()
            .rule(rule)
            .targets(target)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EventBridge PutTargets", &e))?;
        if out.failed_entry_count() > 0 {
            let reasons: Vec<String> = out
                .failed_entries()
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.error_code().unwrap_or("error"),
                        f.error_message().unwrap_or("")
                    )
                })
                .collect();
            return Err(AwsError::permanent(format!(
                "EventBridge PutTargets: {}",
                reasons.join("; ")
            )));
        }
        Ok(())
    }
}

pub(super) struct Rule {
    arn: Option<String>,
    pattern: Option<String>,
    state: Option<String>,
}

/// The target sends the whole event, as it is, to the queue.
pub(super) fn target_is(target: &Target, queue_arn: &str) -> bool {
    target.arn() == queue_arn
        && target.input().is_none()
        && target.input_path().is_none()
        && target.input_transformer().is_none()
}

pub(super) fn describe_redrive(current: Option<&str>) -> String {
    let Some(text) = current else {
        return "none".to_owned();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let target = v["deadLetterTargetArn"].as_str().map(last_segment);
            let count = normalize(&v["maxReceiveCount"]);
            format!(
                "after {count} receives to {}",
                target.unwrap_or("(no queue)")
            )
        }
        Err(_) => "unreadable".to_owned(),
    }
}
