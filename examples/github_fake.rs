//! The tests' scripted GitHub fake, as a program, for the local pipeline's `--github` mode:
//! slipway posts its commit statuses and deployments here, and `GET /_fake/requests` lists
//! them. It accepts the token `github_pat_test`.
//!
//! Usage: `cargo run --example github_fake -- <listen addr>`

#[allow(dead_code)]
#[path = "../tests/it/support/github_fake.rs"]
mod github_fake;

#[tokio::main]
async fn main() {
    let Some(listen) = std::env::args().nth(1) else {
        eprintln!("usage: github_fake <listen addr>");
        std::process::exit(2);
    };
    let fake = github_fake::GithubFake::start_on(&listen).await;
    eprintln!("GitHub fake listening on {}", fake.url);
    std::future::pending::<()>().await;
}
