//! The status page: what every app runs now, the recent pipeline runs, and one deployment's
//! rollout. Server-rendered HTML (maud: the markup is Rust checked at compile time and every
//! interpolated value is escaped), no JavaScript; pages with work in progress refresh
//! themselves. Read-only: it only reads ECS (through `Ops::status`) and the journal.

use std::sync::Arc;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::ops::{AppStatus, Ops};
use crate::store::{
    build_state, deploy_state, format_millis, notify_state, promotion_state, Deployment,
    NotificationRecord, Promotion, Run, Store,
};

/// Promotions listed on the front page (issue 27), newest first.
const RECENT_PROMOTIONS: u32 = 20;

/// Runs listed on the front page.
const RECENT_RUNS: u32 = 30;
/// Notifications in trouble (failing or given up) listed on the front page, newest first.
const TROUBLED_NOTIFICATIONS: u32 = 20;
/// Seconds between reloads while something is in progress.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:.5rem 1rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #ddd;vertical-align:top}
.wrap{overflow-x:auto}
code{font-size:.85rem;overflow-wrap:anywhere}
.sha{white-space:nowrap}
.st{display:inline-block;padding:0 .35rem;border-radius:.25rem;background:#eee;white-space:nowrap}
.ok{background:#d4f4d4}.bad{background:#f8d0d0}.run{background:#fff0b3}
.why{color:#a00;font-size:.85rem}
.muted{color:#777;font-size:.85rem}
progress{width:12rem;max-width:100%}
";

/// How long the page's ECS reads are reused: loads within it (a refreshing page, twenty tabs,
/// `<img>` tags on a page the operator opened) cost no AWS call, so the page cannot throttle the
/// account's ECS API that deploys need.
const STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The page's view of what every app runs (`Ops::status`: DescribeServices and
/// DescribeTaskDefinition per app), kept for [`STATUS_TTL`] and shared: while one request reads
/// ECS, the others wait for its answer instead of asking again.
#[derive(Default)]
pub struct StatusCache(tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<AppStatus>>)>>);

impl StatusCache {
    async fn get(&self, ops: &Ops) -> Arc<Vec<AppStatus>> {
        let mut cached = self.0.lock().await;
        if let Some((at, apps)) = cached.as_ref() {
            if at.elapsed() < STATUS_TTL {
                return apps.clone();
            }
        }
        let apps = Arc::new(ops.status().await);
        *cached = Some((std::time::Instant::now(), apps.clone()));
        apps
    }
}

/// GET /: every app and the recent runs.
pub async fn status(
    ops: &Ops,
    cache: &StatusCache,
    journal: &Store,
    replicas: Option<&crate::replicas::ReplicasView>,
) -> Result<String, crate::store::StoreError> {
    let apps = cache.get(ops).await;
    let mut since = Vec::with_capacity(apps.len());
    for app in apps.iter() {
        since.push(running_since(journal, app).await?);
    }
    let runs = journal.recent_runs(RECENT_RUNS).await?;
    let busy = runs.iter().any(in_progress);
    let troubled = troubled_notifications(journal).await?;
    let promotions = journal.promotions(None, RECENT_PROMOTIONS).await?;
    let body = html! {
        h1 { "slipway" }
        h2 { "Apps" }
        div.wrap { table {
            thead { tr { th { "App" } th { "Commit" } th { "Image" } th { "Task definition" } th { "Since" } } }
            tbody {
                @for (app, since) in apps.iter().zip(&since) {
                    tr {
                        td {
                            strong { (app.app) } br;
                            span.muted {
                                (app.cluster) " / " (app.service)
                                @if let Some(account) = &app.account { " in account " (account) }
                            }
                        }
                        td { @if let Some(c) = &app.commit { code.sha title=(c) { (short(c)) } } @else { span.muted { "unknown" } } }
                        td { @if let Some(i) = &app.image { code { (i) } } }
                        td { @if let Some(td) = &app.task_definition { code { (revision(td)) } } }
                        td {
                            @if let Some(t) = since { (format_millis(*t)) }
                            @if let Some(e) = &app.error { div.why { (e) } }
                        }
                    }
                }
            }
        } }
        @if !promotions.is_empty() {
            h2 { "Promotions" }
            div.wrap { table {
                thead { tr { th { "When" } th { "To" } th { "From" } th { "Approval" } th { "Deploy" } } }
                tbody { @for p in &promotions { (promotion_row(p)) } }
            } }
        }
        h2 { "Recent runs" }
        @if runs.is_empty() { p.muted { "Nothing has run yet." } }
        @else {
            div.wrap { table {
                thead { tr { th { "When" } th { "App" } th { "Trigger" } th { "Build" } th { "Deploy" } } }
                tbody { @for run in &runs { (run_row(run)) } }
            } }
        }
        @if let Some(view) = replicas {
            h2 { "Replicas" }
            div.wrap { table {
                thead { tr { th { "Replica" } th { "Since" } th { "Holds" } } }
                tbody { @for r in &view.replicas {
                    tr {
                        td { code { (r.id) } @if r.this { " " span.muted { "(this page)" } } }
                        td { (format_millis(r.since_ms)) }
                        td { @if r.holds.is_empty() { span.muted { "nothing" } } @else { (r.holds.join(", ")) } }
                    }
                } }
            } }
        }
        @if !troubled.is_empty() {
            h2 { "Notifications not delivered" }
            div.wrap { table {
                thead { tr { th { "When" } th { "To" } th { "Notification" } th { "State" } th { "Attempts" } th { "Why" } } }
                tbody { @for n in &troubled { (notification_row(n)) } }
            } }
        }
    };
    Ok(page("slipway status", busy, body))
}

/// GET /deployments/{id}: one deployment and its rollout. None when there is no such id.
pub async fn deployment(
    journal: &Store,
    id: i64,
) -> Result<Option<String>, crate::store::StoreError> {
    let Some(d) = journal.deployment(id).await? else {
        return Ok(None);
    };
    let busy = !deploy_state::is_terminal(&d.state);
    let promotion = match d.promotion {
        Some(p) => journal.promotion(p).await?,
        None => None,
    };
    let body = html! {
        p { a href="/" { "← all apps" } }
        h1 { "Deployment " (d.id) " of " (d.app) }
        p { (state_badge(&d.state)) }
        @if let Some(why) = &d.reason { (reason(&d.state, why)) }
        (rollout(&d))
        table {
            tr { th { "Commit" } td { code { (d.sha) } } }
            @if let Some(tag) = &d.tag { tr { th { "Tag" } td { code { (tag) } } } }
            tr { th { "Image" } td { code { (d.image.as_deref().unwrap_or(&d.image_tag)) } } }
            tr { th { "Service" } td { (d.service_key) } }
            tr { th { "Trigger" } td { (d.trigger) @if let Some(a) = &d.actor { " by " (a) } } }
            @if let Some(p) = &promotion {
                tr { th { "Promoted from" } td {
                    (p.source_app) " " a href={ "/deployments/" (p.source_deployment) } { "deployment " (p.source_deployment) }
                    " (promotion " (p.id) ")"
                } }
                tr { th { "Approval" } td { (approval(p)) } }
            }
            tr { th { "From" } td { @if let Some(t) = &d.from_task_definition { code { (revision(t)) } } } }
            tr { th { "To" } td { @if let Some(t) = &d.to_task_definition { code { (revision(t)) } } } }
            tr { th { "ECS deployment" } td { @if let Some(e) = &d.ecs_deployment_id { code { (e) } } } }
            tr { th { "Build" } td {
                @if let Some(b) = &d.build_id { code { (b) } }
                @if let Some(l) = d.log_link.as_deref().and_then(https) { " " a href=(l) { "logs" } }
            } }
            tr { th { "Requested" } td { (format_millis(d.created_ms)) } }
            tr { th { "Started" } td { @if let Some(t) = d.started_ms { (format_millis(t)) } } }
            tr { th { "Finished" } td { @if let Some(t) = d.finished_ms { (format_millis(t)) } } }
        }
    };
    Ok(Some(page(&format!("deployment {}", d.id), busy, body)))
}

/// One promotion: where its image comes from, its approval, and the deploy it made.
fn promotion_row(p: &Promotion) -> Markup {
    html! {
        tr {
            td { (format_millis(p.created_ms)) }
            td { strong { (p.app) } br; code.sha title=(p.sha) { (short(&p.sha)) }
                 @if let Some(tag) = &p.tag { " " span.muted { "tag " (tag) } } }
            td { (p.source_app) " " a href={ "/deployments/" (p.source_deployment) } { "#" (p.source_deployment) }
                 br; code title=(p.image_digest) { (p.image_digest.get(..19).unwrap_or(&p.image_digest)) "…" } }
            td { (approval(p)) }
            td { @if let Some(d) = p.deployment { a href={ "/deployments/" (d) } { "#" (d) } } @else { span.muted { "—" } } }
        }
    }
}

/// A promotion's approval: its state, who decided and when, or until when it waits.
fn approval(p: &Promotion) -> Markup {
    let class = match p.state.as_str() {
        promotion_state::APPROVED => "st ok",
        promotion_state::REJECTED | promotion_state::EXPIRED => "st bad",
        promotion_state::AWAITING_APPROVAL => "st run",
        _ => "st",
    };
    html! {
        span class=(class) { (p.state) }
        @if let (Some(by), Some(at)) = (&p.decided_by, p.decided_ms) {
            br; span.muted { "by " (by) " at " (format_millis(at)) }
        }
        @if p.state == promotion_state::AWAITING_APPROVAL {
            br; span.muted { "until " (format_millis(p.expires_ms)) }
        }
        @if let Some(why) = &p.reason { div.muted { (why) } }
    }
}

/// Notifications given up, and pending ones whose attempts failed, newest first.
async fn troubled_notifications(
    journal: &Store,
) -> Result<Vec<NotificationRecord>, crate::store::StoreError> {
    let mut rows = journal
        .notifications(Some(notify_state::PENDING.into()), TROUBLED_NOTIFICATIONS)
        .await?;
    rows.retain(|n| n.attempts > 0);
    rows.extend(
        journal
            .notifications(Some(notify_state::GIVEN_UP.into()), TROUBLED_NOTIFICATIONS)
            .await?,
    );
    rows.sort_by_key(|n| std::cmp::Reverse(n.id));
    rows.truncate(TROUBLED_NOTIFICATIONS as usize);
    Ok(rows)
}

fn notification_row(n: &NotificationRecord) -> Markup {
    let field = |k: &str| n.notification[k].as_str().unwrap_or("").to_owned();
    let state = if n.state == notify_state::GIVEN_UP {
        "given up"
    } else {
        "retrying"
    };
    html! {
        tr {
            td { (n.created_at) }
            td { (n.target) }
            td { (field("kind")) " " strong { (field("app")) } " " code.sha { (short(&field("sha"))) } }
            td { span.st.(if n.state == notify_state::GIVEN_UP { "bad" } else { "run" }) { (state) } }
            td { (n.attempts) }
            td { @if let Some(why) = &n.last_error { span.why { (why) } } }
        }
    }
}

fn rollout(d: &Deployment) -> Markup {
    let (running, desired) = (d.running_count.unwrap_or(0), d.desired_count.unwrap_or(0));
    html! {
        h2 { "Rollout" }
        @if d.desired_count.is_some() {
            p {
                progress max=(desired.max(1)) value=(running.min(desired.max(1))) {}
                " " (running) " of " (desired) " tasks running"
                @if let Some(f) = d.failed_tasks { @if f > 0 { ", " span.why { (f) " failed" } } }
            }
            @if let Some(stage) = &d.stage { p { "ECS lifecycle stage: " code { (stage) } } }
        } @else {
            p.muted { "No rollout progress yet." }
        }
        @if let Some(unseen) = &d.unseen { p.why { (unseen) } }
        @if let Some(why) = &d.deadline_why { p.muted { "Deadline: " (why) } }
    }
}

fn run_row(run: &Run) -> Markup {
    html! {
        tr {
            td { (format_millis(run.started_ms)) }
            td { (run.app) br; code.sha title=(run.sha) { (short(&run.sha)) } }
            td { (run.trigger) @if let Some(a) = &run.actor { br; span.muted { (a) } } }
            td {
                @if let Some(b) = &run.build {
                    (state_badge(&b.state))
                    @if let Some(l) = b.log_link.as_deref().and_then(https) { " " a href=(l) { "logs" } }
                    @if let Some(why) = &b.reason { (reason(&b.state, why)) }
                } @else { span.muted { "—" } }
            }
            td {
                @if let Some(d) = &run.deployment {
                    a href={ "/deployments/" (d.id) } { (state_badge(&d.state)) }
                    @if let Some(why) = &d.reason { (reason(&d.state, why)) }
                } @else { span.muted { "—" } }
            }
        }
    }
}

fn page(title: &str, refresh: bool, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content=(REFRESH_SECS); }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

fn state_badge(state: &str) -> Markup {
    html! { span class=(state_class(state)) { (state) } }
}

fn state_class(state: &str) -> &'static str {
    match state {
        deploy_state::SUCCEEDED | build_state::SUCCEEDED => "st ok",
        // build_state::FAILED is "failed" too.
        deploy_state::FAILED | deploy_state::ROLLED_BACK | build_state::BUILD_FAILED => "st bad",
        deploy_state::PENDING | deploy_state::DEPLOYING | build_state::STARTED => "st run",
        _ => "st",
    }
}

/// Why a build or deploy is where it is: red when it went wrong.
fn reason(state: &str, why: &str) -> Markup {
    let class = if state_class(state) == "st bad" {
        "why"
    } else {
        "muted"
    };
    html! { div class=(class) { (why) } }
}

fn in_progress(run: &Run) -> bool {
    let building = run.build.as_ref().is_some_and(|b| {
        matches!(
            b.state.as_str(),
            build_state::PENDING | build_state::STARTED
        )
    });
    let deploying = run
        .deployment
        .as_ref()
        .is_some_and(|d| !deploy_state::is_terminal(&d.state));
    building || deploying
}

/// When the task definition the app runs now was put there by slipway, if it was.
async fn running_since(
    journal: &Store,
    app: &AppStatus,
) -> Result<Option<i64>, crate::store::StoreError> {
    let Some(td) = &app.task_definition else {
        return Ok(None);
    };
    Ok(journal
        .successful_deployments(&app.app)
        .await?
        .into_iter()
        .find(|d| d.to_task_definition.as_deref() == Some(td.as_str()))
        .and_then(|d| d.finished_ms))
}

/// The abbreviation git shows, for a journal SHA (always 40 hex characters).
fn short(sha: &str) -> String {
    crate::ids::CommitSha::parse(sha)
        .map(|c| c.short().to_owned())
        .unwrap_or_else(|_| sha.to_owned())
}

/// `link` if it is an `https://` URL: the only links the page renders from stored data (maud
/// escapes markup, not a `javascript:` or `data:` URL in an `href`).
fn https(link: &str) -> Option<&str> {
    let scheme = link.get(..8)?;
    (scheme.eq_ignore_ascii_case("https://") && !link.chars().any(char::is_control)).then_some(link)
}

/// The `Content-Security-Policy` of every admin answer: nothing may load or run but the page's
/// own inline stylesheet, named by its hash (no scripts, images, frames, forms or base URL).
pub fn content_security_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let hash = aws_smithy_types::base64::encode(Sha256::digest(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// `family:revision` from a task definition ARN.
fn revision(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_links_are_rendered() {
        assert_eq!(
            https("https://console.aws.amazon.com/x"),
            Some("https://console.aws.amazon.com/x")
        );
        assert_eq!(https("HTTPS://example.com"), Some("HTTPS://example.com"));
        for bad in [
            "javascript:alert(1)",
            "http://x",
            "data:text/html,x",
            "//x",
            "",
            "https://x\n",
        ] {
            assert_eq!(https(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_policy_names_the_stylesheet_hash() {
        let policy = content_security_policy();
        assert!(
            policy.starts_with("default-src 'none'; style-src 'sha256-"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
