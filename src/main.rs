use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = slipway::cli::Cli::parse();
    slipway::cli::init_tracing(cli.log_format);
    match slipway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway: {e:#}");
            std::process::ExitCode::from(slipway::cli::exit_code(&e))
        }
    }
}
