//! `curve`: `fanout` against Livebase and `ceiling` against the minimal broadcaster at each of
//! `--points` subscriber counts, back to back in one run, with the write rate chosen so every
//! point offers the same `--deliveries` per second (rate = deliveries / subscribers). Each
//! point reports both servers' p50 / p99, deliveries/s and server CPU per delivery, and
//! Livebase's figures as ratios to the ceiling's. With `--repeat N` each point runs N times,
//! the two servers alternating, and reports the median of every figure (`runs` keeps each
//! run's figures).
//!
//! JSON: `deliveries` (offered per second), `points`: one object per subscriber count with
//! `subscribers`, `rate`, `livebase` and `ceiling` (each `p50_ms`, `p99_ms`,
//! `deliveries_per_s`, `writes_per_s`, `server_cpu_us_per_delivery`, `lost`, `duplicates`),
//! and `ratio` (`p99`, `deliveries_per_s`, `cpu_per_delivery`: Livebase / ceiling;
//! `p99_with_fsync`: Livebase's p99 / (the ceiling's p99 + one fdatasync p99)).
//!
//! Livebase's latency includes a durable commit and the ceiling's does not, so the run also
//! measures the disk: `fsync_ms` (`p50`, `p99`) of [`FSYNC_SAMPLES`] 4 KiB appends, each
//! followed by `fdatasync`, in the temporary directory the servers' data directories go to.

use super::{BenchOptions, Scenario, MAX_RATE};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::Instant;

/// Appends (each with its fdatasync) the disk's figure is taken from.
pub const FSYNC_SAMPLES: usize = 200;

/// p50 and p99 in ms of a 4 KiB append followed by `fdatasync`, in the temporary directory.
fn measure_fsync() -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::Builder::new().prefix("livebase-bench-fsync-").tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("probe"))?;
    let block = [7u8; 4096];
    let mut ms = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((super::round3(at(0.5)), super::round3(at(0.99))))
}

pub(super) async fn run(opts: BenchOptions) -> anyhow::Result<Value> {
    anyhow::ensure!(
        opts.url.is_none() && opts.database.is_none() && !opts.rule && opts.queries == 1,
        "curve starts both servers itself (no --url or --database) and measures plain subscriptions"
    );
    let (Some(livebase), Some(ceiling)) = (opts.server_exe.clone(), opts.ceiling_exe.clone()) else {
        anyhow::bail!("curve runs both servers as child processes: run it as `livebase bench curve`");
    };
    let (fsync_p50, fsync_p99) = measure_fsync()?;
    let mut points = Vec::new();
    let mut table = String::from(
        "| subscribers | rate | Livebase p50 / p99 ms | ceiling p50 / p99 ms | p99 ratio | p99 ratio, ceiling + fsync | Livebase deliveries/s | ceiling deliveries/s | ratio | CPU µs/delivery L / C | ratio | lost L / C |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &subscribers in &opts.points {
        let rate = (opts.deliveries / subscribers as u64).clamp(1, MAX_RATE);
        let mut at = opts.clone();
        at.subscribers = subscribers;
        at.rate = rate;
        let (mut l_runs, mut c_runs) = (Vec::new(), Vec::new());
        for _ in 0..opts.repeat {
            let mut l_opts = at.clone();
            l_opts.server_exe = Some(livebase.clone());
            l_runs.push(figures(Box::pin(super::run(Scenario::Fanout, l_opts)).await?));
            let mut c_opts = at.clone();
            c_opts.server_exe = Some(ceiling.clone());
            c_runs.push(figures(Box::pin(super::run(Scenario::Ceiling, c_opts)).await?));
        }
        let (l, c) = (median(&l_runs), median(&c_runs));
        let ratio = |k: &str| {
            let (a, b) = (l[k].as_f64().unwrap_or(0.0), c[k].as_f64().unwrap_or(0.0));
            if b > 0.0 {
                json!(super::round3(a / b))
            } else {
                Value::Null
            }
        };
        let with_fsync = match (l["p99_ms"].as_f64(), c["p99_ms"].as_f64()) {
            (Some(a), Some(b)) => json!(super::round3(a / (b + fsync_p99))),
            _ => Value::Null,
        };
        let ratios = json!({
            "p99": ratio("p99_ms"),
            "p99_with_fsync": with_fsync,
            "deliveries_per_s": ratio("deliveries_per_s"),
            "cpu_per_delivery": ratio("server_cpu_us_per_delivery"),
        });
        table.push_str(&format!(
            "| {subscribers} | {rate}/s | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} |\n",
            l["p50_ms"],
            l["p99_ms"],
            c["p50_ms"],
            c["p99_ms"],
            ratios["p99"],
            ratios["p99_with_fsync"],
            l["deliveries_per_s"],
            c["deliveries_per_s"],
            ratios["deliveries_per_s"],
            l["server_cpu_us_per_delivery"],
            c["server_cpu_us_per_delivery"],
            ratios["cpu_per_delivery"],
            l["lost"],
            c["lost"],
        ));
        points.push(json!({
            "subscribers": subscribers,
            "rate": rate,
            "livebase": Value::Object(l),
            "ceiling": Value::Object(c),
            "ratio": ratios,
            "runs": {"livebase": l_runs, "ceiling": c_runs},
        }));
    }
    Ok(json!({
        "scenario": "curve",
        "deliveries": opts.deliveries,
        "repeat": opts.repeat,
        "fsync_ms": {"p50": fsync_p50, "p99": fsync_p99, "samples": FSYNC_SAMPLES},
        "points": points,
        "table": table,
    }))
}

/// Per figure, the median over the runs (the lower middle one of an even count); `lost`,
/// `duplicates` and `disconnects` are summed instead, so one run's loss always shows.
fn median(runs: &[Map<String, Value>]) -> Map<String, Value> {
    let mut m = Map::new();
    let Some(first) = runs.first() else { return m };
    for k in first.keys() {
        let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
        let v = if ["lost", "duplicates", "disconnects"].contains(&k.as_str()) {
            json!(xs.iter().sum::<f64>() as u64)
        } else if xs.is_empty() {
            Value::Null
        } else {
            xs.sort_by(f64::total_cmp);
            json!(xs[(xs.len() - 1) / 2])
        };
        m.insert(k.clone(), v);
    }
    m
}

/// The figures a curve point keeps of one `fanout` or `ceiling` run.
fn figures(run: Value) -> Map<String, Value> {
    let lat = |k: &str| run["latency_ms"][k].clone();
    let mut m = Map::new();
    m.insert("p50_ms".into(), lat("p50"));
    m.insert("p99_ms".into(), lat("p99"));
    for k in [
        "deliveries_per_s",
        "writes_per_s",
        "server_cpu_us_per_delivery",
        "server_cpu_percent",
        "bench_cpu_percent",
        "lost",
        "duplicates",
        "disconnects",
    ] {
        m.insert(k.into(), run[k].clone());
    }
    m
}
