//! A bounded window of event ids already published (by count, by bytes and by age), the ids being
//! published right now, so that two copies of one event arriving together are not both published,
//! and, for a fan-out whose targets did not all confirm, which targets did: Stripe's retry then
//! goes only to the targets that failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an entry costs besides its id and target names: the map slot, the queue slot, the `Arc`
/// header. An estimate, so that `max_bytes` bounds the real memory to within a small factor.
const ENTRY_OVERHEAD: usize = 96;
/// What each remembered target costs besides its name.
const TARGET_OVERHEAD: usize = 32;

/// The limits of the window; a reload may change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ids remembered at most; 0 turns dedup off.
    pub capacity: usize,
    /// Bytes the remembered ids (and target names) may take, estimated.
    pub max_bytes: usize,
    /// How long an id is remembered, from the first confirmation.
    pub ttl: Duration,
}

/// Remembers published event ids for `ttl`, at most `capacity` of them and `max_bytes` in all
/// (oldest forgotten first).
pub struct Dedup {
    inner: Mutex<Window>,
}

/// What the window knows of one event.
enum Entry {
    /// Every target confirmed.
    Published,
    /// Some targets confirmed (by [`target_key`]), others failed.
    Partly(Vec<Box<str>>),
}

impl Entry {
    fn bytes(&self, id: &str) -> usize {
        let targets = match self {
            Entry::Published => 0,
            Entry::Partly(keys) => keys.iter().map(|k| k.len() + TARGET_OVERHEAD).sum(),
        };
        id.len() + ENTRY_OVERHEAD + targets
    }
}

struct Window {
    limits: Limits,
    entries: HashMap<Arc<str>, Entry>,
    order: VecDeque<(Instant, Arc<str>)>,
    /// Sum of [`Entry::bytes`] over `entries`.
    bytes: usize,
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

/// The name under which the window remembers one target of a fan-out: its sink and the rendered
/// destination, so a retry skips exactly the copies that a broker already confirmed.
pub fn target_key(sink: &str, destination: &str) -> String {
    format!("{sink}\u{0}{destination}")
}

/// Holds an event id as in flight until dropped (also when the request is cancelled).
pub struct ClaimGuard<'a> {
    dedup: &'a Dedup,
    id: Option<Arc<str>>,
    /// Targets an earlier try confirmed.
    confirmed: Vec<Box<str>>,
}

impl ClaimGuard<'_> {
    /// Whether an earlier try of this event already published to this target ([`target_key`]).
    pub fn already_confirmed(&self, key: &str) -> bool {
        self.confirmed.iter().any(|k| &**k == key)
    }

    /// Records the event as published at `now` and releases the claim, in one step.
    pub fn published(mut self, now: Instant) {
        if let Some(id) = self.id.take() {
            let mut w = self.dedup.lock();
            w.in_flight.remove(&id);
            w.remember(id, Entry::Published, now);
        }
    }

    /// Records that these targets (and those an earlier try confirmed) have the event, while
    /// others failed, and releases the claim: a retry publishes only to the rest.
    pub fn partly_published(mut self, keys: impl IntoIterator<Item = String>, now: Instant) {
        if let Some(id) = self.id.take() {
            let mut confirmed = std::mem::take(&mut self.confirmed);
            for k in keys {
                if !confirmed.iter().any(|c| **c == *k) {
                    confirmed.push(k.into_boxed_str());
                }
            }
            let mut w = self.dedup.lock();
            w.in_flight.remove(&id);
            if !confirmed.is_empty() {
                w.remember(id, Entry::Partly(confirmed), now);
            }
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
    /// Stores what is known of `id`. An id already in the window keeps its place (its age counts
    /// from the first confirmation); its entry is replaced.
    fn remember(&mut self, id: Arc<str>, entry: Entry, now: Instant) {
        let added = entry.bytes(&id);
        match self.entries.get_mut(&id) {
            Some(old) => {
                self.bytes = self.bytes - old.bytes(&id) + added;
                *old = entry;
            }
            None => {
                self.bytes += added;
                self.entries.insert(id.clone(), entry);
                self.order.push_back((now, id));
            }
        }
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        let Limits {
            capacity,
            max_bytes,
            ttl,
        } = self.limits;
        while let Some((at, id)) = self.order.front() {
            if self.order.len() > capacity || self.bytes > max_bytes || now.duration_since(*at) >= ttl {
                if let Some(e) = self.entries.remove(id) {
                    self.bytes -= e.bytes(id);
                }
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Dedup {
    /// A window with these limits; capacity 0 turns dedup off.
    pub fn new(limits: Limits) -> Self {
        Dedup {
            inner: Mutex::new(Window {
                limits,
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                in_flight: HashSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.lock().limits
    }

    /// Applies new limits (a config reload): a smaller window forgets its oldest ids at once;
    /// capacity 0 forgets every id and turns dedup off.
    pub fn set_limits(&self, limits: Limits, now: Instant) {
        let mut w = self.lock();
        w.limits = limits;
        w.expire(now);
    }

    /// Whether `id` was published within the window, is being published, or is now claimed by
    /// the caller (with the targets an earlier try confirmed). With dedup off every claim
    /// succeeds and nothing is tracked.
    pub fn claim(&self, id: &str, now: Instant) -> Claim<'_> {
        let mut w = self.lock();
        if w.limits.capacity == 0 {
            return Claim::Claimed(ClaimGuard {
                dedup: self,
                id: None,
                confirmed: Vec::new(),
            });
        }
        w.expire(now);
        let confirmed = match w.entries.get(id) {
            Some(Entry::Published) => return Claim::Published,
            Some(Entry::Partly(keys)) => keys.clone(),
            None => Vec::new(),
        };
        if w.in_flight.contains(id) {
            return Claim::InFlight;
        }
        let id: Arc<str> = Arc::from(id);
        w.in_flight.insert(id.clone());
        Claim::Claimed(ClaimGuard {
            dedup: self,
            id: Some(id),
            confirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup(capacity: usize) -> Dedup {
        Dedup::new(Limits {
            capacity,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(60),
        })
    }

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
        d.lock().entries.len()
    }

    #[test]
    fn remembers_within_the_window() {
        let d = dedup(10);
        let t0 = Instant::now();
        assert!(!seen(&d, "evt_1", t0));
        publish(&d, "evt_1", t0);
        assert!(seen(&d, "evt_1", t0 + Duration::from_secs(59)));
        assert!(!seen(&d, "evt_2", t0));
    }

    #[test]
    fn forgets_by_age() {
        let d = dedup(10);
        let t0 = Instant::now();
        publish(&d, "evt_1", t0);
        assert!(!seen(&d, "evt_1", t0 + Duration::from_secs(60)));
        assert_eq!(len(&d), 0);
        assert_eq!(d.lock().bytes, 0);
    }

    #[test]
    fn forgets_oldest_by_count() {
        let d = dedup(3);
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
    fn forgets_oldest_by_bytes() {
        // Room for two entries with 200-byte ids, far below the count limit.
        let per = 200 + ENTRY_OVERHEAD;
        let d = Dedup::new(Limits {
            capacity: 1000,
            max_bytes: 2 * per + per / 2,
            ttl: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let id = |i: usize| format!("{i}{}", "x".repeat(199));
        for i in 0..5 {
            publish(&d, &id(i), t0);
        }
        assert_eq!(len(&d), 2);
        assert_eq!(d.lock().bytes, 2 * per);
        assert!(!seen(&d, &id(2), t0));
        assert!(seen(&d, &id(3), t0) && seen(&d, &id(4), t0));
    }

    #[test]
    fn a_claim_holds_the_id_until_published_or_dropped() {
        let d = dedup(10);
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
    fn a_partial_fan_out_is_remembered_per_target_until_complete() {
        let d = dedup(10);
        let t0 = Instant::now();
        let (a, b, c) = (target_key("k", "t1"), target_key("k", "t2"), target_key("r", "t1"));
        let Claim::Claimed(first) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        assert!(!first.already_confirmed(&a));
        first.partly_published([a.clone()], t0);
        // The retry knows `a` has it; it is a claim (not a duplicate), and exclusive.
        let Claim::Claimed(second) = d.claim("evt_1", t0) else {
            panic!("a partly published event is claimed again")
        };
        assert!(matches!(d.claim("evt_1", t0), Claim::InFlight));
        assert!(second.already_confirmed(&a) && !second.already_confirmed(&b) && !second.already_confirmed(&c));
        second.partly_published([b.clone()], t0);
        let Claim::Claimed(third) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        assert!(third.already_confirmed(&a) && third.already_confirmed(&b) && !third.already_confirmed(&c));
        // A try that confirmed nothing new forgets nothing.
        third.partly_published([], t0);
        let Claim::Claimed(fourth) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        assert!(fourth.already_confirmed(&a) && fourth.already_confirmed(&b));
        fourth.published(t0);
        assert!(matches!(d.claim("evt_1", t0), Claim::Published));
        assert_eq!(len(&d), 1);
        assert_eq!(d.lock().bytes, "evt_1".len() + ENTRY_OVERHEAD);
        // The window counts from the first confirmation.
        assert!(!seen(&d, "evt_1", t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_fan_out_that_confirmed_nothing_is_not_remembered() {
        let d = dedup(10);
        let t0 = Instant::now();
        let Claim::Claimed(c) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        c.partly_published([], t0);
        assert_eq!(len(&d), 0);
    }

    #[test]
    fn with_dedup_off_every_claim_succeeds() {
        let d = dedup(0);
        let t0 = Instant::now();
        let Claim::Claimed(first) = d.claim("evt_1", t0) else {
            panic!("claimed")
        };
        assert!(matches!(d.claim("evt_1", t0), Claim::Claimed(_)));
        first.published(t0);
        assert!(matches!(d.claim("evt_1", t0), Claim::Claimed(_)));
    }

    #[test]
    fn new_limits_apply_at_once() {
        let d = dedup(10);
        let t0 = Instant::now();
        for i in 0..5 {
            publish(&d, &format!("evt_{i}"), t0);
        }
        let limits = d.limits();
        d.set_limits(Limits { capacity: 2, ..limits }, t0);
        assert_eq!(len(&d), 2);
        assert!(seen(&d, "evt_4", t0) && !seen(&d, "evt_2", t0));
        d.set_limits(
            Limits {
                ttl: Duration::from_secs(1),
                ..limits
            },
            t0,
        );
        assert!(!seen(&d, "evt_4", t0 + Duration::from_secs(1)));
        publish(&d, "evt_9", t0);
        d.set_limits(Limits { capacity: 0, ..limits }, t0);
        assert_eq!(len(&d), 0);
        assert!(matches!(d.claim("evt_9", t0), Claim::Claimed(_)));
    }

    #[test]
    fn remembering_twice_keeps_one_entry() {
        let d = dedup(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            d.lock().remember(Arc::from("evt_1"), Entry::Published, t0);
        }
        assert_eq!(len(&d), 1);
        assert_eq!(d.lock().order.len(), 1);
    }
}
