//! Issue 8 item 9, as a user meets it: short webhook secrets and absurd durations are refused
//! at start with a message naming what is wrong, and the journal is private whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::slipway::DEFAULT_APPS;
use crate::support::{eventually, SlipwayBuilder};

#[tokio::test]
async fn a_short_webhook_secret_is_refused_at_start() {
    for (value, which) in [
        ("short-secret", "secret 1 of 1"),
        ("a-long-enough-secret-value,tiny", "secret 2 of 2"),
    ] {
        let b = SlipwayBuilder::new("http://127.0.0.1:9").secret(Some(value));
        let config = b.write_config();
        let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
        assert!(!status.success(), "{value}: slipway started");
        assert!(
            err.contains("SLIPWAY_WEBHOOK_SECRET") && err.contains(which),
            "{value}: {err}"
        );
        assert!(err.contains("shorter than 16 bytes"), "{err}");
        // Never echoed.
        assert!(
            !err.contains("tiny") && !err.contains("short-secret"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn durations_beyond_their_maximum_are_refused_naming_the_key() {
    for (settings, extra, key) in [
        (
            "rollout_timeout_secs = 9223372036854775807",
            "",
            "app[0] (web).rollout_timeout_secs",
        ),
        (
            "",
            "[deploy]\npoll_max_ms = 86400000000\n",
            "deploy.poll_max_ms",
        ),
        (
            "",
            "[events]\nreconcile_after_secs = 99999999999\n",
            "events.reconcile_after_secs",
        ),
        (
            "",
            "[server]\nheader_timeout_secs = 9223372036854775807\n",
            "server.header_timeout_secs",
        ),
    ] {
        let b = SlipwayBuilder::new("http://127.0.0.1:9")
            .apps(&format!("{DEFAULT_APPS}{settings}\n"))
            .extra(extra);
        let config = b.write_config();
        let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        assert!(!status.success(), "{key}: accepted: {out}");
        assert!(
            err.contains(key) && err.contains("too large (at most"),
            "{key}: {err}"
        );
        // serve refuses the same file before doing anything.
        let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
        assert!(!status.success() && err.contains(key), "{key}: {err}");
        assert!(
            !b.state_dir().exists(),
            "serve created its state before refusing"
        );
    }
    // The largest value accepted still passes.
    let b = SlipwayBuilder::new("http://127.0.0.1:9")
        .apps(&format!("{DEFAULT_APPS}rollout_timeout_secs = 86400\n"));
    let config = b.write_config();
    let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok (1 app)"), "{out}");
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_journal_is_private_whatever_the_umask() {
    let b = SlipwayBuilder::new("http://127.0.0.1:9");
    let config = b.write_config();
    // `serve` under umask 000, which would make every file world-writable.
    let inner = b.command();
    let mut cmd = Command::new("sh");
    cmd.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" serve --config \"$1\"")
        .arg(inner.get_program())
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let state = b.state_dir();
    eventually("the journal with its WAL", || async {
        state.join("journal.db-wal").exists().then_some(())
    })
    .await;
    assert_eq!(mode(&state), 0o700, "state_dir");
    for file in [
        "journal.db",
        "journal.db-wal",
        "journal.db-shm",
        "slipway.lock",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    let _ = child.kill();
    let _ = child.wait();

    // A journal left readable by an older slipway is made private at the next start.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        state.join("journal.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut s = b.start().await;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("journal.db")), 0o600);
    s.kill();
}
