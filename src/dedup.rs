//! A bounded window of event ids already published: by count and by age.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Remembers published event ids for `ttl`, at most `capacity` of them (oldest forgotten first).
pub struct Dedup {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    ids: HashSet<Arc<str>>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Window {
    fn expire(&mut self, now: Instant, ttl: Duration, capacity: usize) {
        while let Some((at, id)) = self.order.front() {
            if self.order.len() > capacity || now.duration_since(*at) >= ttl {
                self.ids.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Dedup {
    /// A window of `capacity` ids kept for `ttl`; capacity 0 turns dedup off.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Dedup {
            capacity,
            ttl,
            inner: Mutex::new(Window::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` was published within the window.
    pub fn seen(&self, id: &str, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut w = self.lock();
        w.expire(now, self.ttl, self.capacity);
        w.ids.contains(id)
    }

    /// Records that `id` was published at `now`.
    pub fn insert(&self, id: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut w = self.lock();
        if w.ids.contains(id) {
            return;
        }
        let id: Arc<str> = Arc::from(id);
        w.ids.insert(id.clone());
        w.order.push_back((now, id));
        w.expire(now, self.ttl, self.capacity);
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!d.seen("evt_1", t0));
        d.insert("evt_1", t0);
        assert!(d.seen("evt_1", t0 + Duration::from_secs(59)));
        assert!(!d.seen("evt_2", t0));
    }

    #[test]
    fn forgets_by_age() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        d.insert("evt_1", t0);
        assert!(!d.seen("evt_1", t0 + Duration::from_secs(60)));
        assert!(d.is_empty());
    }

    #[test]
    fn forgets_oldest_by_count() {
        let d = Dedup::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            d.insert(&format!("evt_{i}"), t0);
        }
        assert_eq!(d.len(), 3);
        assert!(!d.seen("evt_0", t0));
        assert!(!d.seen("evt_1", t0));
        assert!(d.seen("evt_2", t0) && d.seen("evt_4", t0));
    }

    #[test]
    fn capacity_zero_is_off() {
        let d = Dedup::new(0, Duration::from_secs(60));
        d.insert("evt_1", Instant::now());
        assert!(!d.seen("evt_1", Instant::now()));
    }

    #[test]
    fn inserting_twice_keeps_one_entry() {
        let d = Dedup::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        d.insert("evt_1", t0);
        d.insert("evt_1", t0);
        assert_eq!(d.len(), 1);
    }
}
