//! The tests' proxy in front of the AWS emulator, as a program: it makes ECS rollouts progress
//! (the emulator never does) for the local pipeline (`deploy/local-pipeline.sh`).
//!
//! Usage: `cargo run --example emulator_proxy -- <listen addr> <emulator url>`

#[path = "../tests/it/support/proxy.rs"]
mod proxy;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: emulator_proxy <listen addr> <emulator url>");
        std::process::exit(2);
    };
    proxy::serve_forever(&listen, &upstream).await
}
