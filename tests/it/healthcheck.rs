//! Issue 21: `slipway healthcheck`, the container health check of the image and the task
//! definition (no curl, no shell): a real slipway process, real HTTP, the exit code Docker and
//! ECS read (0 healthy, 1 unhealthy) and the reason it prints.

use std::process::ExitStatus;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Emulator, SlipwayBuilder};

/// Runs `slipway healthcheck <args>` off the runtime thread (the fake servers below are tasks
/// on it and must keep answering).
async fn healthcheck(builder: &SlipwayBuilder, args: &[&str]) -> (ExitStatus, String, String) {
    let builder = builder.clone();
    let args: Vec<String> = std::iter::once("healthcheck".to_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = builder
            .command()
            .args(&args)
            .output()
            .expect("run slipway healthcheck");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// The builder's config with `listen` at `addr` (the test config listens on port 0, which a
/// health check cannot find).
fn config_listening_on(builder: &SlipwayBuilder, addr: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(builder.write_config()).unwrap();
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    assert!(text.contains(addr), "{text}");
    let path = builder.state_dir().with_file_name("healthcheck.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn healthcheck_is_up_with_the_server_and_down_without_it() {
    let emu = Emulator::start().await;
    let builder = SlipwayBuilder::new(&emu.url);
    let mut slipway = builder.start().await;
    let addr = slipway.url.trim_start_matches("http://").to_owned();

    // From the config's `listen`, as the image's HEALTHCHECK runs it.
    let config = config_listening_on(&builder, &addr);
    let (status, stdout, stderr) =
        healthcheck(&builder, &["--config", config.to_str().unwrap()]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("up: http://{addr}/healthz answered 200")),
        "{stdout}"
    );
    // An unspecified listen address is checked on loopback.
    let port = addr.rsplit(':').next().unwrap();
    let config = config_listening_on(&builder, &format!("0.0.0.0:{port}"));
    let (status, stdout, _) = healthcheck(&builder, &["--config", config.to_str().unwrap()]).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("127.0.0.1:{port}")), "{stdout}");
    // With --url.
    let url = format!("{}/healthz", slipway.url);
    let (status, stdout, _) = healthcheck(&builder, &["--url", &url]).await;
    assert_eq!(status.code(), Some(0), "{stdout}");

    // Down: the same checks exit 1 and say why.
    slipway.terminate();
    let config = config_listening_on(&builder, &addr);
    let (status, stdout, stderr) =
        healthcheck(&builder, &["--config", config.to_str().unwrap()]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("down: http://{addr}/healthz")) && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

/// Answers every connection with `status_line` and no body, and counts nothing else.
async fn fixed_answer(status_line: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer =
                    format!("{status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/healthz")
}

#[tokio::test]
async fn healthcheck_is_down_on_an_error_status_a_silent_server_or_a_bad_config() {
    let builder = SlipwayBuilder::new("http://127.0.0.1:9");

    // slipway answering 503 (e.g. shutting down) is down.
    let url = fixed_answer("HTTP/1.1 503 Service Unavailable").await;
    let (status, _, stderr) = healthcheck(&builder, &["--url", &url]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("down: {url} answered 503")),
        "{stderr}"
    );
    // A redirect is not followed: only this host's answer counts.
    let url = fixed_answer("HTTP/1.1 302 Found\r\nlocation: http://example.com/").await;
    let (status, _, stderr) = healthcheck(&builder, &["--url", &url]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered 302"), "{stderr}");

    // A server that accepts and never answers: down after the timeout, not hung.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let (status, _, stderr) = healthcheck(&builder, &["--url", &url, "--timeout-secs", "1"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("down: {url} did not answer within 1s")),
        "{stderr}"
    );
    held.abort();

    // No config to find the listener in: down (1, not a usage error), and it says so.
    let (status, _, stderr) =
        healthcheck(&builder, &["--config", "/nonexistent/slipway.toml"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("down: cannot tell where slipway listens")
            && stderr.contains("/nonexistent/slipway.toml"),
        "{stderr}"
    );
}
