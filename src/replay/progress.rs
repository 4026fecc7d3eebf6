//! The progress line on stderr while a replay runs (only when stderr is a terminal).

use std::io::Write;
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(100);
const BAR: usize = 30;

pub struct Progress {
    on: bool,
    started: Instant,
    publishing_since: Option<Instant>,
    drawn: Option<Instant>,
}

impl Progress {
    pub fn new(on: bool) -> Progress {
        Progress {
            on,
            started: Instant::now(),
            publishing_since: None,
            drawn: None,
        }
    }

    fn due(&mut self, force: bool) -> bool {
        if !self.on {
            return false;
        }
        let now = Instant::now();
        if !force && self.drawn.is_some_and(|d| now - d < REDRAW) {
            return false;
        }
        self.drawn = Some(now);
        true
    }

    fn draw(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }

    /// While paging: events fetched so far.
    pub fn fetching(&mut self, fetched: u64, pages: u32) {
        if self.due(false) {
            let rate = fetched as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            self.draw(&format!(
                "replay: fetching: {fetched} events in {pages} pages ({rate:.0}/s)"
            ));
        }
    }

    /// While publishing: `done` of `total`, with a bar.
    pub fn publishing(&mut self, fetched: u64, done: u64, total: u64, force: bool) {
        let since = *self.publishing_since.get_or_insert_with(Instant::now);
        if self.due(force) {
            let filled = if total == 0 {
                BAR
            } else {
                (done as usize * BAR) / total as usize
            };
            let rate = done as f64 / since.elapsed().as_secs_f64().max(0.001);
            self.draw(&format!(
                "replay: [{}{}] {done}/{total} published of {fetched} fetched ({rate:.0}/s)",
                "#".repeat(filled),
                "-".repeat(BAR - filled)
            ));
        }
    }

    /// Clears the line before the summary.
    pub fn finish(&mut self) {
        if self.on && self.drawn.is_some() {
            self.draw("");
        }
    }
}
