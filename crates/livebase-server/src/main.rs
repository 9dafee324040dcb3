//! The `livebase` command.

use clap::{Parser, Subcommand};
use livebase_server::Config;

#[derive(Parser)]
#[command(
    name = "livebase",
    version,
    about = "A self-hosted realtime CRUD backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(Config),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log)
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let server = livebase_server::start(config).await?;
                println!("livebase listening on {}", server.url());
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {
                        tracing::info!("shutting down");
                        server.shutdown().await;
                    }
                }
                Ok(())
            })
        }
    }
}
