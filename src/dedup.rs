//! A bounded window of event ids already published (by count and by age), and the ids being
//! published right now, so that two copies of one event arriving together are not both published.

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
    /// Claimed by a request that is publishing them; at most one entry per request in flight.
    in_flight: HashSet<Arc<str>>,
}

/// What [`Dedup::claim`] found.
pub enum Claim<'a> {
    /// Published within the window: acknowledge, do not publish again.
    Published,
    /// Another request is publishing this event now.
    InFlight,
    /// This request publishes it; the claim ends when the guard is dropped.
    Claimed(ClaimGuard<'a>),
}

/// Holds an event id as in flight until dropped (also when the request is cancelled).
pub struct ClaimGuard<'a> {
    dedup: &'a Dedup,
    id: Option<Arc<str>>,
}

impl ClaimGuard<'_> {
    /// Records the event as published at `now` and releases the claim, in one step.
    pub fn published(mut self, now: Instant) {
        if let Some(id) = self.id.take() {
            let mut w = self.dedup.lock();
            w.in_flight.remove(&id);
            w.remember(id, now, self.dedup.ttl, self.dedup.capacity);
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.dedup.lock().in_flight.remove(&id);
        }
    }
}

impl Window {
    fn remember(&mut self, id: Arc<str>, now: Instant, ttl: Duration, capacity: usize) {
        if self.ids.insert(id.clone()) {
            self.order.push_back((now, id));
        }
        self.expire(now, ttl, capacity);
    }

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

    /// Whether `id` was published within the window, is being published, or is now claimed by
    /// the caller. With dedup off every claim succeeds and nothing is tracked.
    pub fn claim(&self, id: &str, now: Instant) -> Claim<'_> {
        if self.capacity == 0 {
            return Claim::Claimed(ClaimGuard { dedup: self, id: None });
        }
        let mut w = self.lock();
        w.expire(now, self.ttl, self.capacity);
        if w.ids.contains(id) {
            return Claim::Published;
        }
        if w.in_flight.contains(id) {
            return Claim::InFlight;
        }
        let id: Arc<str> = Arc::from(id);
        w.in_flight.insert(id.clone());
        Claim::Claimed(ClaimGuard {
            dedup: self,
            id: Some(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims `id` and records it published, as a request whose publish succeeded does.
    fn publish(d: &Dedup, id: &str, at: Instant) {
        let Claim::Claimed(claim) = d.claim(id, at) else {
            panic!("{id} is claimed")
        };
        claim.published(at);
    }

    fn seen(d: &Dedup, id: &str, at: Instant) -> bool {
        matches!(d.claim(id, at), Claim::Published)
    }

    fn len(d: &Dedup) -> usize {
        d.lock().ids.len()
    }

    #[test]
    fn remembers_within_the_window() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!seen(&d, "evt_1", t0));
        publish(&d, "evt_1", t0);
        assert!(seen(&d, "evt_1", t0 + Duration::from_secs(59)));
        assert!(!seen(&d, "evt_2", t0));
    }

    #[test]
    fn forgets_by_age() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        publish(&d, "evt_1", t0);
        assert!(!seen(&d, "evt_1", t0 + Duration::from_secs(60)));
        assert_eq!(len(&d), 0);
    }

    #[test]
    fn forgets_oldest_by_count() {
        let d = Dedup::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            publish(&d, &format!("evt_{i}"), t0);
        }
        assert_eq!(len(&d), 3);
        assert!(!seen(&d, "evt_0", t0));
        assert!(!seen(&d, "evt_1", t0));
        assert!(seen(&d, "evt_2", t0) && seen(&d, "evt_4", t0));
    }

    #[test]
    fn a_claim_holds_the_id_until_published_or_dropped() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let Claim::Claimed(first) = d.claim("evt_1", t0) else {
            panic!("a new id is claimed")
        };
        assert!(matches!(d.claim("evt_1", t0), Claim::InFlight));
        assert!(matches!(d.claim("evt_2", t0), Claim::Claimed(_)));
        drop(first); // the publish failed or the request was cancelled
        let Claim::Claimed(again) = d.claim("evt_1", t0) else {
            panic!("a released id is claimed again")
        };
        again.published(t0);
        assert!(matches!(d.claim("evt_1", t0), Claim::Published));
        assert!(d.lock().in_flight.is_empty());
    }

    #[test]
    fn with_dedup_off_every_claim_succeeds() {
        let d = Dedup::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        let Claim::Claimed(first) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        assert!(matches!(d.claim("evt_1", t0), Claim::Claimed(_)));
        first.published(t0);
        assert!(matches!(d.claim("evt_1", t0), Claim::Claimed(_)));
    }

    #[test]
    fn remembering_twice_keeps_one_entry() {
        let d = Dedup::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..2 {
            d.lock().remember(Arc::from("evt_1"), t0, d.ttl, d.capacity);
        }
        assert_eq!(len(&d), 1);
        assert_eq!(d.lock().order.len(), 1);
    }
}
