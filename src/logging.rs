//! Log output bounded by bytes: no line longer than [`MAX_LINE_BYTES`], whatever a field holds
//! (a broker's error text, a config path, a client library's message).

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// The longest log line written, newline included. Longer lines are cut at a character boundary
/// and say how long they were.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// A [`MakeWriter`] that caps each line (tracing-subscriber writes one whole line per call).
#[derive(Debug, Clone, Copy)]
pub struct Capped<M> {
    inner: M,
    max: usize,
    json: bool,
}

impl<M> Capped<M> {
    /// Caps lines at `max` bytes. For JSON logs a cut line is written as a JSON object of its own,
    /// `{"truncated_log_line":"<the start>","bytes":<length>}`, so every line stays valid JSON.
    pub fn new(inner: M, max: usize, json: bool) -> Self {
        Capped { inner, max, json }
    }
}

/// Standard error, capped at [`MAX_LINE_BYTES`].
pub fn capped_stderr(json: bool) -> Capped<fn() -> io::Stderr> {
    Capped::new(io::stderr as fn() -> io::Stderr, MAX_LINE_BYTES, json)
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Capped<M> {
    type Writer = CappedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedWriter {
            inner: self.inner.make_writer(),
            max: self.max,
            json: self.json,
        }
    }
}

/// The writer of one log line.
pub struct CappedWriter<W> {
    inner: W,
    max: usize,
    json: bool,
}

/// The longest prefix of `bytes` of at most `max` bytes that does not split a UTF-8 character.
fn cut(bytes: &[u8], max: usize) -> &[u8] {
    let mut end = max.min(bytes.len());
    // A UTF-8 continuation byte is 0b10xx_xxxx; step back over at most three of them.
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 && max - end < 4 {
        end -= 1;
    }
    bytes.get(..end).unwrap_or(bytes)
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= self.max {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let note = format!("… [log line cut: {} bytes]", buf.len());
        // Room for the note (and, in JSON, the escaping that may double the text).
        let room = self.max.saturating_sub(note.len() + 64);
        let line = if self.json {
            let start = cut(buf, room / 2);
            let record = serde_json::json!({
                "truncated_log_line": String::from_utf8_lossy(start),
                "bytes": buf.len(),
            });
            let mut line = record.to_string().into_bytes();
            line.push(b'\n');
            line
        } else {
            let mut line = cut(buf, room).to_vec();
            line.extend_from_slice(note.as_bytes());
            line.push(b'\n');
            line
        };
        self.inner.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
        }
    }

    fn log_through(json: bool, field: &str) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let writer = Capped::new(move || out.clone(), 1024, json);
        let builder = tracing_subscriber::fmt().with_writer(writer).with_ansi(false);
        let dispatch: tracing::Dispatch = if json {
            builder.json().flatten_event(true).finish().into()
        } else {
            builder.finish().into()
        };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::warn!(error = %field, "publish failed");
            tracing::info!("short line");
        });
        buf.text()
    }

    #[test]
    fn long_lines_are_cut_and_say_so() {
        // Multi-byte characters, so that a cut in the middle of one would be invalid UTF-8.
        let long = "é".repeat(5000);
        let text = log_through(false, &long);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].len() <= 1024, "{}", lines[0].len());
        assert!(
            lines[0].contains("publish failed") || lines[0].contains("éé"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("bytes]"), "{}", lines[0]);
        assert!(lines[1].contains("short line"));
    }

    #[test]
    fn json_lines_stay_json_when_cut() {
        let text = log_through(true, &"x\"".repeat(5000));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert!(line.len() <= 1024, "{}", line.len());
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(v.is_object());
        }
        let cut: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_default();
        assert!(cut["bytes"].as_u64().is_some_and(|b| b > 10_000), "{cut}");
        assert!(
            cut["truncated_log_line"].as_str().is_some_and(|s| s.contains("WARN")),
            "{cut}"
        );
    }

    #[test]
    fn short_lines_pass_unchanged() {
        let text = log_through(false, "broker down");
        assert!(text.contains("publish failed error=broker down\n"), "{text}");
        assert!(!text.contains("cut"), "{text}");
    }
}
