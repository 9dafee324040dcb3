//! The `livebase-bench` command, also run as `livebase bench …` (the `livebase` binary execs
//! this one, found next to itself, passing its own path as `--server-exe`).

use clap::Parser;
use livebase_bench::{BenchOptions, Scenario};

#[derive(Parser)]
#[command(
    name = "livebase bench",
    bin_name = "livebase bench",
    version,
    about = "Measure a server: writes, fanout, connections, catchup, presence, aggregates; ceiling: fanout against a minimal broadcaster; curve: both at several subscriber counts (loopback only)"
)]
struct Cli {
    #[arg(value_enum)]
    scenario: Scenario,
    #[command(flatten)]
    opts: BenchOptions,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        // `bench ceiling` starts this binary as its server: the minimal broadcaster.
        return livebase_bench::ceiling::serve_main(&args[2..]);
    }
    let Cli { scenario, mut opts } = Cli::parse();
    if scenario == Scenario::Ceiling && opts.url.is_none() && !opts.in_process {
        opts.server_exe = Some(std::env::current_exe()?);
    } else if scenario == Scenario::Curve {
        opts.ceiling_exe = Some(std::env::current_exe()?);
        if opts.server_exe.is_none() {
            opts.server_exe = Some(livebase_beside_this_exe()?);
        }
    } else if opts.url.is_none() && !opts.in_process && opts.server_exe.is_none() {
        // The server runs as a child process, so its memory and CPU are its own.
        opts.server_exe = Some(livebase_beside_this_exe()?);
    }
    let json = opts.json;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let figures = rt.block_on(livebase_bench::run(scenario, opts))?;
    // A curve reads best as its own table; other scenarios as key/value rows.
    let table = match figures["table"].as_str() {
        Some(t) if scenario == Scenario::Curve => t.to_string(),
        _ => livebase_bench::render_table(&figures),
    };
    if json {
        eprint!("{table}");
        println!("{figures}");
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The `livebase` server binary in this executable's directory (where cargo builds both).
fn livebase_beside_this_exe() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name(format!("livebase{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        exe.is_file(),
        "the server binary {} is missing: build it with `cargo build --release -p livebase-server` \
         (or pass --in-process, or --url for a running server)",
        exe.display()
    );
    Ok(exe)
}
