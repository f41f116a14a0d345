//! Helpers for scripts/bench-intake.sh.
//!
//! `bench_tool requests FILE N BRANCH PREFIX`: N distinct signed pushes (the recorded
//! push_master.json with its `after` SHA and branch changed per request), each with a GUID
//! delivery id; SHAs and GUIDs look random, as real ones do. One per line:
//! `delivery_id<TAB>signature<TAB>compact JSON body`. Secret from SLIPWAY_WEBHOOK_SECRET.
//!
//! `bench_tool seed STATE_DIR N`: adds N deliveries to the journal through its own API (9 of
//! 10 ignored, 1 of 10 accepted with its build run and deployed), received over the last year in time
//! order, in transactions of 5,000 (`Store::admit_all`), pruning with the default `[journal]`
//! retention every 50,000 (as a running slipway would).
//!
//! `bench_tool pending STATE_DIR N`: adds N accepted pushes received now whose builds are
//! pending (due at once), for the round that measures intake while the build worker retries
//! them against an unreachable CodeBuild.
//!
//! `bench_tool floor N`: the CPU time, on one core, of the work every accepted push needs
//! whatever the store does: its HMAC, the SHA-256 its body is stored under, parsing the push,
//! and compressing the body (slipway's own functions for each), over N pushes.

use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};
use slipway::ids::{AppName, CommitSha, DeliveryId, HookId};
use slipway::store::{
    deploy_state, Admission, BuildCompletion, BuildRequest, CompletionOutcome, DeploymentUpdate,
    NewDelivery, Source, Store, Verdict,
};

/// Deliveries written per transaction (one sync each) by `seed` and `pending`.
const CHUNK: u64 = 5_000;

/// The ranges of delivery numbers `0..n` that `seed` and `pending` write a transaction each.
fn chunks(n: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    (0..n)
        .step_by(CHUNK as usize)
        .map(move |start| start..(start + CHUNK).min(n))
}

/// A commit SHA for push `n`: as random-looking as a real one (so index inserts land where
/// real ones would, not at the end of each index).
fn sha(n: u64, salt: u64) -> String {
    hex::encode(&Sha256::digest(format!("{salt}/{n}"))[..20])
}

/// A delivery id like GitHub's (a GUID), distinct for each (kind, n).
fn guid(kind: &str, n: u64) -> String {
    let h = hex::encode(&Sha256::digest(format!("{kind}/{n}"))[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn push(template: &Value, branch: &str, after: &str) -> Vec<u8> {
    let mut v = template.clone();
    v["ref"] = format!("refs/heads/{branch}").into();
    v["after"] = after.into();
    v["head_commit"]["id"] = after.into();
    serde_json::to_vec(&v).expect("serializable")
}

fn template() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/github/push_master.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json")
}

fn requests(file: &str, n: u64, branch: &str, prefix: &str) {
    let secret = std::env::var("SLIPWAY_WEBHOOK_SECRET").expect("SLIPWAY_WEBHOOK_SECRET");
    let template = template();
    let salt = std::process::id() as u64 ^ prefix.len() as u64;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).expect("create"));
    for i in 0..n {
        let body = push(&template, branch, &sha(i, salt));
        let sig = slipway::webhook::sign(secret.as_bytes(), &body);
        out.write_all(format!("{}\t{sig}\t", guid(prefix, i)).as_bytes())
            .unwrap();
        out.write_all(&body).unwrap();
        out.write_all(b"\n").unwrap();
    }
}

async fn seed(state_dir: &str, n: u64) {
    let journal = Store::open(std::path::Path::new(state_dir)).expect("open the journal");
    let template = template();
    let now = slipway::store::millis(time::OffsetDateTime::now_utc());
    let started = std::time::Instant::now();
    let settings = slipway::config::JournalConfig::default();
    const PRUNE_EVERY: u64 = 50_000;
    for range in chunks(n) {
        let done = range.end;
        let chunk: Vec<(NewDelivery, Verdict)> =
            range.map(|i| seed_delivery(&template, i, n, now)).collect();
        let results = journal.admit_all(chunk).await.expect("seed chunk");
        // Their builds ran long ago.
        let mut started_builds = tokio::task::JoinSet::new();
        for result in results {
            if let Admission::Accepted(builds) = result.1 {
                for b in builds {
                    let j = journal.clone();
                    started_builds.spawn(async move { finish(&j, b.build_row, now).await });
                }
            }
        }
        while let Some(t) = started_builds.join_next().await {
            t.expect("task");
        }
        if done.is_multiple_of(PRUNE_EVERY) || done == n {
            let pruning = std::time::Instant::now();
            let pruned = journal.prune(now, &settings).await.expect("prune");
            eprintln!(
                "seeded {done} in {:.1?} ({pruned:?} in {:.1?})",
                started.elapsed(),
                pruning.elapsed()
            );
        }
    }
    journal.close();
    eprintln!("seeded {n} deliveries in {:.1?}", started.elapsed());
}

/// A seeded build ran long ago: started, succeeded, deployed.
async fn finish(journal: &Store, build_row: i64, now: i64) {
    let build_id = format!("web-build:{build_row}");
    journal
        .build_started(build_row, build_id.clone(), None, now)
        .await
        .expect("build started");
    let done = BuildCompletion {
        build_id,
        succeeded: true,
        status: "SUCCEEDED".into(),
        log_link: None,
        foreign: None,
        run_token: None,
    };
    if let CompletionOutcome::Deploy { deployment, .. } =
        journal.complete_build(done, now).await.expect("build done")
    {
        let update = DeploymentUpdate {
            state: Some(deploy_state::SUCCEEDED),
            ..DeploymentUpdate::default()
        };
        journal
            .update_deployment(deployment, update, now)
            .await
            .expect("deployed");
    }
}

/// Delivery `i` of `n`: 9 of 10 to another branch (ignored), 1 of 10 to master (a build),
/// received over the last year in order.
fn seed_delivery(template: &Value, i: u64, n: u64, now: i64) -> (NewDelivery, Verdict) {
    let after = sha(i, 0x5eed);
    let accepted = i.is_multiple_of(10);
    let branch = if accepted { "master" } else { "feature" };
    let delivery = NewDelivery {
        delivery_id: DeliveryId::parse(&guid("seed", i)).expect("id"),
        hook_id: HookId::parse(Some("1")).expect("hook"),
        event: "push".into(),
        source: Source::Github,
        actor: None,
        replay_of: None,
        received_ms: now - ((n - i) as i64 * 365 * 86_400_000 / n as i64),
        content_type: "application/json".into(),
        headers: serde_json::json!({}),
        body: push(template, branch, &after),
    };
    let verdict = if accepted {
        Verdict::Build(vec![BuildRequest {
            app: AppName::parse("web").expect("app"),
            sha: CommitSha::parse(&after).expect("sha"),
            project: "web-build".into(),
            image_tag: after.clone(),
            service_key: "main/web".into(),
            before: None,
            pushed_at: None,
            tag: None,
        }])
    } else {
        Verdict::Ignored("branch feature is not deployed".into())
    };
    (delivery, verdict)
}

async fn pending(state_dir: &str, n: u64) {
    let journal = Store::open(std::path::Path::new(state_dir)).expect("open the journal");
    let template = template();
    let now = slipway::store::millis(time::OffsetDateTime::now_utc());
    for range in chunks(n) {
        let chunk: Vec<(NewDelivery, Verdict)> = range
            .map(|i| {
                // Every one a build (i * 10: the seed's accepted ones), received now.
                let (mut d, v) = seed_delivery(&template, i * 10, n * 10, now);
                d.delivery_id = DeliveryId::parse(&guid("pending", i)).expect("id");
                d.received_ms = now;
                (d, v)
            })
            .collect();
        journal.admit_all(chunk).await.expect("pending chunk");
    }
    journal.close();
    eprintln!("{n} pending builds added");
}

fn floor(n: usize) {
    use std::hint::black_box;
    let template = template();
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|i| push(&template, "master", &sha(i, 7)))
        .collect();
    let secret = "bench-secret-0123456789abcdef";
    let secrets = slipway::config::WebhookSecrets::parse(Some(secret)).expect("a secret");
    let signatures: Vec<String> = bodies
        .iter()
        .map(|b| slipway::webhook::sign(secret.as_bytes(), b))
        .collect();
    // Each step is slipway's own function, timed over n pushes (push i is bodies[i % 64]).
    let per_push = |step: &dyn Fn(usize)| {
        let started = std::time::Instant::now();
        for i in 0..n {
            step(black_box(i % bodies.len()));
        }
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let hmac = per_push(&|i| {
        slipway::webhook::verify(&secrets, Some(&signatures[i]), &bodies[i]).expect("signed");
    });
    let digest = per_push(&|i| {
        black_box(slipway::store::body_digest(&bodies[i]));
    });
    let parse = per_push(&|i| {
        black_box(slipway::webhook::Push::parse(&bodies[i]).expect("a push"));
    });
    let zstd = per_push(&|i| {
        black_box(slipway::store::encode_body(&bodies[i]));
    });
    println!(
        "floor, one core, per push of {} bytes: HMAC {hmac:.1} µs, SHA-256 {digest:.1} µs, \
         parse {parse:.1} µs, zstd {zstd:.1} µs; together {:.1} µs",
        bodies[0].len(),
        hmac + digest + parse + zstd
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("requests") => requests(&args[2], args[3].parse().expect("N"), &args[4], &args[5]),
        Some("seed") => seed(&args[2], args[3].parse().expect("N")).await,
        Some("pending") => pending(&args[2], args[3].parse().expect("N")).await,
        Some("floor") => floor(args[2].parse().expect("N")),
        _ => {
            eprintln!("usage: bench_tool requests FILE N BRANCH PREFIX | seed STATE_DIR N | pending STATE_DIR N | floor N");
            std::process::exit(2);
        }
    }
}
