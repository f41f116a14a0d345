//! kill -9 under webhook load, on whichever engine this pass keeps slipway's state in
//! (`SLIPWAY_TEST_STORE`: the SQLite journal, or a DynamoDB table): every delivery answered
//! 2xx before the kill is there after it, and no push is built twice, GitHub's redelivery of
//! everything included.

use std::sync::{Arc, Mutex};

use crate::support::{eventually, fixture, Emulator, Proxy, SlipwayBuilder, MASTER_SHA, SECRET};

/// Pushes each sender makes at most (the kill comes well before).
const PUSHES: usize = 400;
const SENDERS: usize = 4;
/// Acknowledged deliveries before the kill.
const BEFORE_KILL: usize = 24;

/// A delivery sent: its GUID and body.
type Delivery = (String, Vec<u8>);

/// Push number `n` of sender `sender`: its delivery GUID, its commit, its body.
fn push(sender: usize, n: usize) -> (String, String, Vec<u8>) {
    let guid = format!("load-{sender}-{n}");
    // Never all zeros (GitHub's "branch deleted").
    let sha = format!("1{:07x}{:032x}", sender, n);
    let body = String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replace(MASTER_SHA, &sha)
        .into_bytes();
    (guid, sha, body)
}

/// POSTs one signed delivery: the status, or None when slipway did not answer.
pub async fn post(client: &reqwest::Client, url: &str, guid: &str, body: &[u8]) -> Option<u16> {
    let signature = slipway::webhook::sign(SECRET.as_bytes(), body);
    let r = client
        .post(format!("{url}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", guid)
        .header("x-github-hook-id", "4242")
        .header("x-hub-signature-256", signature)
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    r.bytes().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_webhook_load_no_acknowledged_delivery_is_lost_and_no_push_is_built_twice() {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    // CodeBuild as AWS has it: a build describes StartBuild's environment (slipway's run
    // token), which the emulator drops; the token is how a restart finds a build it started
    // just before the kill instead of starting it again.
    let proxy = Proxy::start(&emulator.url).await;
    let builder = SlipwayBuilder::new(&proxy.url);
    let mut s = builder.start().await;

    // Senders push distinct commits until slipway stops answering.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (url, acknowledged, attempted) =
            (s.url.clone(), acknowledged.clone(), attempted.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..PUSHES {
                let (guid, _, body) = push(sender, n);
                attempted.lock().unwrap().push((guid.clone(), body.clone()));
                match post(&client, &url, &guid, &body).await {
                    Some(202) => acknowledged.lock().unwrap().push(guid),
                    // 503 (busy) is GitHub's to redeliver; no answer: slipway is gone.
                    Some(_) => {}
                    None => return,
                }
            }
        }));
    }
    eventually("deliveries acknowledged under load", || async {
        (acknowledged.lock().unwrap().len() >= BEFORE_KILL).then_some(())
    })
    .await;
    s.kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acknowledged.len() < SENDERS * PUSHES,
        "the kill came after the load"
    );

    // Restarted on the same state: everything acknowledged is there.
    let s = builder.start().await;
    let listed: Vec<String> = s
        .deliveries()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap_or("").to_owned())
        .collect();
    for guid in &acknowledged {
        assert!(
            listed.contains(guid),
            "{guid} was acknowledged before the kill and is gone"
        );
    }
    // GitHub redelivers everything it sent (the failed ones by hand, the others anyway).
    let client = reqwest::Client::new();
    for (guid, body) in &attempted {
        // 202 (taken, or a retry of a build not started) or 200 (a duplicate).
        let status = post(&client, &s.url, guid, body).await;
        assert!(
            matches!(status, Some(200 | 202)),
            "redelivery of {guid}: {status:?}"
        );
    }
    // Every push is built, once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let builds = loop {
        let builds = emulator.builds("web-build").await;
        if builds.len() >= attempted.len() {
            break builds;
        }
        if std::time::Instant::now() > deadline {
            let built: Vec<String> = builds
                .iter()
                .map(|b| b.source_version().unwrap_or_default().to_owned())
                .collect();
            let rows: Vec<String> = s
                .deliveries()
                .iter()
                .filter(|d| !built.iter().any(|v| Some(v.as_str()) == d["sha"].as_str()))
                .map(|d| d.to_string())
                .collect();
            panic!(
                "{} of {} pushes built; not built:\n{}",
                builds.len(),
                attempted.len(),
                rows.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let (mut versions, twice) = built_twice(&builds);
    assert!(
        twice.is_empty(),
        "built twice: {twice:?}; builds: {builds:#?}"
    );
    versions.dedup();
    assert_eq!(versions.len(), attempted.len());
}

/// The commits `builds` built, sorted, and those built more than once.
pub fn built_twice(builds: &[aws_sdk_codebuild::types::Build]) -> (Vec<String>, Vec<String>) {
    let mut versions: Vec<String> = builds
        .iter()
        .map(|b| b.source_version().unwrap_or_default().to_owned())
        .collect();
    versions.sort();
    let twice = versions
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].clone())
        .collect();
    (versions, twice)
}
