//! The progress bar on stderr (hidden when stderr is not a terminal, or with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    /// Starts a phase of `len` steps.
    pub fn phase(&self, msg: &str, len: u64) {
        self.bar.set_length(len.max(1));
        self.bar.set_position(0);
        self.bar.set_message(msg.to_string());
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Shows a timed phase: every 200 ms the elapsed tenths of a second and `status()`, until
    /// `duration` has passed or `done()` says so.
    pub async fn timed(
        &self,
        label: &str,
        duration: Duration,
        status: impl Fn() -> String,
        done: impl Fn() -> bool,
    ) {
        let start = Instant::now();
        self.phase(label, (duration.as_millis() / 100) as u64);
        loop {
            let elapsed = start.elapsed();
            self.set((elapsed.as_millis() / 100) as u64);
            self.message(format!("{label}: {}", status()));
            if elapsed >= duration || done() {
                return;
            }
            tokio::time::sleep((duration - elapsed).min(Duration::from_millis(200))).await;
        }
    }
}
