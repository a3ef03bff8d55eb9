//! Progress bars of long-running commands (`reconcile replay`, `rules
//! test`, `recordings export`, `logs query`, `flows query`), drawn with
//! `indicatif` on stderr, and only when stderr is a terminal and the
//! command was not given `--quiet`: piped or captured output never holds
//! a bar or an escape code.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar or spinner on stderr, or nothing (not a terminal, or quiet).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

/// Whether a bar may be drawn: stderr is a terminal and not `quiet`.
pub fn enabled(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

impl Progress {
    fn new(len: Option<u64>, quiet: bool, template: &str) -> Self {
        if !enabled(quiet) {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        // The templates are constants: a bad one is a bug, shown as plain.
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    /// A bar of `total` items called `unit` ("records"): position, total,
    /// rate and time left.
    pub fn items(total: u64, unit: &str, quiet: bool) -> Self {
        let template = format!(
            "{{msg}}[{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, {{eta}} left)"
        );
        Self::new(Some(total), quiet, &template)
    }

    /// A bar of `total` bytes, or a spinner counting bytes when the total
    /// is not known.
    pub fn bytes(total: Option<u64>, quiet: bool) -> Self {
        match total {
            Some(_) => Self::new(
                total,
                quiet,
                "{msg}[{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            ),
            None => Self::new(None, quiet, "{spinner} {msg}{bytes} ({bytes_per_sec})"),
        }
    }

    /// A spinner counting `unit` ("entries") with their rate, for work
    /// whose total is not known.
    pub fn spinner(unit: &str, quiet: bool) -> Self {
        let template = format!("{{spinner}} {{msg}}{{human_pos}} {unit} ({{per_sec}})");
        Self::new(None, quiet, &template)
    }

    /// A message in front of the bar (`"replaying "`).
    pub fn with_message(self, msg: impl Into<String>) -> Self {
        self.bar.set_message(msg.into());
        self
    }

    /// Sets the position.
    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Sets the total (it may grow while the work runs).
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Removes the bar (before the command prints its answer).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress {
    /// A callback setting the position and total, for work done on
    /// another thread (`(position, total)`).
    #[cfg(feature = "server")]
    pub fn updater(&self) -> impl Fn(u64, u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |pos, total| {
            bar.set_length(total);
            bar.set_position(pos);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path leaves no bar behind.
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_means_hidden() {
        let p = Progress::items(10, "records", true);
        assert!(p.bar.is_hidden());
        p.inc(3);
        assert_eq!(p.bar.position(), 3, "counts even when hidden");
        p.finish();
    }
}
