//! The `livebase` command.

use clap::{Parser, Subcommand};
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
    /// Print a signed HS256 token (secret from --secret or LIVEBASE_JWT_SECRET): a user token
    /// (`--sub`), or a Supabase-style role key without a subject (`--role anon`, `--role
    /// service_role` — the latter acts as the admin key on /rest/v1 and /realtime/v1).
    Token {
        /// The user id (`sub` claim); required unless --role is given.
        #[arg(long, required_unless_present = "role")]
        sub: Option<String>,
        /// The role (`role` claim), used by rules as auth.role [default: authenticated].
        #[arg(long)]
        role: Option<String>,
        /// Lifetime: 45s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claims as key=value (repeatable); values that parse as JSON are kept typed.
        #[arg(long = "claim")]
        claims: Vec<String>,
        #[arg(long, env = "LIVEBASE_JWT_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// PostgreSQL backend maintenance.
    Postgres {
        #[command(subcommand)]
        cmd: PostgresCommand,
    },
    /// Measure a server: writes, fanout, connections, catchup or presence (loopback only).
    /// Runs the `livebase-bench` binary found next to this one (`livebase bench --help`).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum PostgresCommand {
    /// Drop Livebase's replication slot and publication (decommissioning). A slot nobody
    /// reads makes PostgreSQL keep WAL for it forever; run this when a deployment is retired.
    DropSlot {
        #[arg(long = "database", env = "LIVEBASE_DATABASE_URL", hide_env_values = true)]
        database: String,
        /// The slot's name, if it was not the default (`livebase_<database>`).
        #[arg(long)]
        slot: Option<String>,
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
            let role = role.unwrap_or_else(|| "authenticated".into());
            println!("{}", livebase_server::auth::sign_role(&secret, sub.as_deref(), &role, ttl, extra)?);
            Ok(())
        }
        Command::Bench { args } => run_bench(args),
        Command::Postgres { cmd: PostgresCommand::DropSlot { database, slot } } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let dropped = rt.block_on(livebase_store::postgres::drop_slot(&database, slot.as_deref()))?;
            if dropped.is_empty() {
                println!("nothing to drop: no Livebase slot or publication in this database");
            }
            for d in dropped {
                println!("dropped {d}");
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
                let signal = stop_signal().await;
                tracing::info!(signal, "shutting down");
                server.shutdown().await;
                Ok(())
            })
        }
    }
}

/// Waits for the signal that asks the server to stop cleanly: SIGINT (Ctrl-C) or SIGTERM (what
/// service managers and container runtimes send). Returns its name for the log.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server cleanly");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// `livebase bench …`: the load generator is its own binary (`livebase-bench`, crate
/// `crates/livebase-bench`) so the server does not carry its dependencies. It is looked up
/// next to this executable, like git and cargo find their subcommands, and replaces this
/// process; it starts this executable as the server under test (`--server-exe`).
fn run_bench(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let bench = me.with_file_name(format!("livebase-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        eprintln!(
            "error: `livebase bench` needs the livebase-bench binary next to {}: build it with \
             `cargo build --release` (both binaries) or `cargo build --release -p livebase-bench`",
            me.display()
        );
        std::process::exit(2);
    }
    let mut cmd = std::process::Command::new(&bench);
    cmd.args(&args);
    let help = args.iter().any(|a| a == "-h" || a == "--help" || a == "-V" || a == "--version");
    if !help && !args.iter().any(|a| a.to_str().is_some_and(|a| a.starts_with("--server-exe"))) {
        cmd.arg("--server-exe").arg(&me);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(anyhow::anyhow!("cannot run {}: {err}", bench.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bench.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}
