//! The checkpoint file: the last event a replay confirmed (published, or dropped because no route
//! matches), so that a rerun continues after it.
//!
//! Events are replayed oldest first, so "after it" means: newer than its `created` second, or of
//! that same second and not yet confirmed (`ids_at_created` lists those that were, since several
//! events may share a second and the API orders them among themselves).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the file holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The id of the last event confirmed.
    pub last_event_id: String,
    /// Its `created` (Unix seconds).
    pub created: i64,
    /// Every event of that second confirmed so far.
    pub ids_at_created: Vec<String>,
    /// When the file was written (RFC 3339), for people.
    #[serde(default)]
    pub updated: String,
}

impl Checkpoint {
    /// Whether a rerun skips this event.
    pub fn covers(&self, id: &str, created: i64) -> bool {
        created < self.created || (created == self.created && self.ids_at_created.iter().any(|i| i == id))
    }

    /// Moves the checkpoint past one more confirmed event (events come oldest first).
    pub fn advance(cp: &mut Option<Checkpoint>, id: &str, created: i64) {
        match cp {
            Some(c) if c.created == created => {
                c.last_event_id = id.to_string();
                c.ids_at_created.push(id.to_string());
            }
            _ => {
                *cp = Some(Checkpoint {
                    last_event_id: id.to_string(),
                    created,
                    ids_at_created: vec![id.to_string()],
                    updated: String::new(),
                })
            }
        }
    }
}

/// Reads the checkpoint file; `None` when it does not exist yet (a first run).
pub fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "checkpoint file {} is not one hookbridge replay wrote ({e}); remove it to start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read checkpoint file {}: {e}", path.display())),
    }
}

/// Writes the checkpoint atomically: a temporary file beside it, synced, then renamed over it.
pub fn save(path: &Path, cp: &Checkpoint) -> Result<(), String> {
    let mut cp = cp.clone();
    cp.updated = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut text = serde_json::to_vec_pretty(&cp).map_err(|e| e.to_string())?;
    text.push(b'\n');
    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write checkpoint file {}: {e}", path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn advance_and_covers_follow_seconds() {
        let mut cp = None;
        Checkpoint::advance(&mut cp, "evt_a", 100);
        Checkpoint::advance(&mut cp, "evt_b", 101);
        Checkpoint::advance(&mut cp, "evt_c", 101);
        let c = cp.unwrap();
        assert_eq!(c.last_event_id, "evt_c");
        assert_eq!(c.ids_at_created, ["evt_b", "evt_c"]);
        assert!(c.covers("evt_a", 100) && c.covers("evt_b", 101) && c.covers("evt_c", 101));
        assert!(!c.covers("evt_d", 101) && !c.covers("evt_e", 102));
    }

    #[test]
    fn save_then_load_round_trips_and_garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut cp = None;
        Checkpoint::advance(&mut cp, "evt_a", 100);
        save(&path, cp.as_ref().unwrap()).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.last_event_id, "evt_a");
        assert!(!back.updated.is_empty());
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("remove it to start over"));
    }
}
