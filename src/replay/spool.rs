//! Where a replay keeps the events it fetched until it publishes them, oldest first.
//!
//! The API lists newest first, so nothing can be published before the whole window is fetched.
//! Holding a big backlog in memory (30 days of a busy account is millions of events of a few KiB)
//! could exhaust it; the bytes go to an unlinked temporary file instead, and memory holds 12 bytes
//! per event (offset and length). The file disappears when the process ends, however it ends.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// An append-only store of event bodies, read back by index.
pub struct Spool {
    file: File,
    end: u64,
    slots: Vec<(u64, u32)>,
}

impl Spool {
    /// A new spool in the system's temporary directory (`TMPDIR`).
    pub fn new() -> std::io::Result<Spool> {
        let dir = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("hookbridge-replay-{}-{nanos}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Unlinked at once: the open handle keeps it until the process ends.
        std::fs::remove_file(&path)?;
        Ok(Spool {
            file,
            end: 0,
            slots: Vec::new(),
        })
    }

    pub fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "event larger than 4 GiB"))?;
        self.file.write_all_at(bytes, self.end)?;
        self.slots.push((self.end, len));
        self.end += u64::from(len);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bytes pushed `i`-th, exactly.
    pub fn get(&self, i: usize) -> std::io::Result<Bytes> {
        let (offset, len) = self.slots[i];
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_each_event_exactly() {
        let mut s = Spool::new().unwrap();
        assert!(s.is_empty());
        let events: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("{{\"id\":\"evt_{i}\",\"pad\":\"{}\"}}", "x".repeat(i * 37)).into_bytes())
            .collect();
        for e in &events {
            s.push(e).unwrap();
        }
        assert_eq!(s.len(), 50);
        for i in (0..50).rev() {
            assert_eq!(s.get(i).unwrap(), events[i]);
        }
    }
}
