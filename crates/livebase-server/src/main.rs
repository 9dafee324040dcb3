//! The `livebase` command.

use clap::{Parser, Subcommand};
use livebase_server::bench::{BenchOptions, Scenario};
use livebase_server::Config;

#[derive(Parser)]
#[command(name = "livebase", version, about = "A self-hosted realtime CRUD backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(Box<Config>),
    /// Print a signed HS256 user token (secret from --secret or LIVEBASE_JWT_SECRET).
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// The role (`role` claim), used by rules as auth.role.
        #[arg(long, default_value = "authenticated")]
        role: String,
        /// Lifetime: 45s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claims as key=value (repeatable); values that parse as JSON are kept typed.
        #[arg(long = "claim")]
        claims: Vec<String>,
        #[arg(long, env = "LIVEBASE_JWT_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Measure a server: writes, fanout, connections, catchup or presence (loopback only).
    Bench {
        #[arg(value_enum)]
        scenario: Scenario,
        #[command(flatten)]
        opts: BenchOptions,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token { sub, role, ttl, claims, secret } => {
            let mut extra = serde_json::Map::new();
            for c in claims {
                let (k, v) =
                    c.split_once('=').ok_or_else(|| anyhow::anyhow!("--claim takes key=value, got '{c}'"))?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
                extra.insert(k.to_string(), v);
            }
            let ttl = livebase_server::auth::parse_ttl(&ttl)?;
            println!("{}", livebase_server::auth::sign(&secret, &sub, &role, ttl, extra)?);
            Ok(())
        }
        Command::Bench { scenario, mut opts } => {
            if opts.url.is_none() && !opts.in_process {
                // The server runs as a child process, so its memory and CPU are its own.
                opts.server_exe = Some(std::env::current_exe()?);
            }
            let json = opts.json;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let figures = rt.block_on(livebase_server::bench::run(scenario, opts))?;
            let table = livebase_server::bench::render_table(&figures);
            if json {
                eprint!("{table}");
                println!("{figures}");
            } else {
                print!("{table}");
            }
            Ok(())
        }
        Command::Serve(config) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into()),
                )
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let server = livebase_server::start(*config).await?;
                println!("livebase listening on {}", server.url());
                println!("dashboard: {}{}", server.url(), livebase_server::dashboard::PREFIX);
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
