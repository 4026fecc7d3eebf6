//! A bounded window of event ids already published (by count, by bytes and by age), the ids being
//! published right now, so that two copies of one event arriving together are not both published,
//! and, for a fan-out whose targets did not all confirm, which targets did: Stripe's retry then
//! goes only to the targets that failed.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// What an entry costs besides its id and target names: the table slot, the queue slot, the
/// allocation header. An estimate, so that `max_bytes` bounds the real memory to within a small
/// factor.
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
///
/// Every request touches the window twice (claim, then published), and at thousands of events
/// per second the window is larger than the CPU's caches, so it is laid out for that: the id is
/// hashed once, outside the lock; what is remembered lives in a ring in order of first
/// confirmation (written at one end, forgotten at the other, short ids inline), found through a
/// compact index of hashes; the few ids in flight have a small table of their own.
pub struct Dedup {
    hasher: RandomState,
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
    fn bytes(&self, id_len: usize) -> usize {
        let targets = match self {
            Entry::Published => 0,
            Entry::Partly(keys) => keys.iter().map(|k| k.len() + TARGET_OVERHEAD).sum(),
        };
        id_len + ENTRY_OVERHEAD + targets
    }
}

/// Ids up to this long (Stripe's are about 30 bytes) are stored inside their record.
const INLINE_ID: usize = 46;

/// An event id as the window keeps it.
enum StoredId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<[u8]>),
}

impl StoredId {
    fn new(id: &str) -> Self {
        let id = id.as_bytes();
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id);
                StoredId::Inline { len, bytes }
            }
            _ => StoredId::Heap(id.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            StoredId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            StoredId::Heap(bytes) => bytes,
        }
    }
}

/// One remembered id, in the ring.
struct Record {
    at: Instant,
    hash: u64,
    id: StoredId,
    entry: Entry,
}

/// One id being published by a request.
struct Flight {
    hash: u64,
    id: Box<str>,
    /// The serial number of the claim.
    claim: u64,
}

struct Window {
    limits: Limits,
    /// Remembered ids, oldest first; the record at position `i` has the sequence number
    /// `first + i`.
    ring: VecDeque<Record>,
    first: u64,
    /// Where each remembered id is in the ring: its hash and its record's sequence number.
    index: HashTable<(u64, u64)>,
    /// Sum of [`Entry::bytes`] over the ring.
    bytes: usize,
    /// Ids claimed by a request that is publishing them; at most one per request in flight.
    in_flight: HashTable<Flight>,
    /// The last serial number given to a claim.
    claims: u64,
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
    /// The id's hash and the claim's serial number; `None` with dedup off.
    held: Option<(u64, u64)>,
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
        if let Some((hash, claim)) = self.held.take() {
            self.dedup.lock().release(hash, claim, Some(Entry::Published), now);
        }
    }

    /// Records that these targets (and those an earlier try confirmed) have the event, while
    /// others failed, and releases the claim: a retry publishes only to the rest.
    pub fn partly_published(mut self, keys: impl IntoIterator<Item = String>, now: Instant) {
        if let Some((hash, claim)) = self.held.take() {
            let mut confirmed = std::mem::take(&mut self.confirmed);
            for k in keys {
                if !confirmed.iter().any(|c| **c == *k) {
                    confirmed.push(k.into_boxed_str());
                }
            }
            let entry = (!confirmed.is_empty()).then_some(Entry::Partly(confirmed));
            self.dedup.lock().release(hash, claim, entry, now);
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some((hash, claim)) = self.held.take() {
            self.dedup.lock().release(hash, claim, None, Instant::now());
        }
    }
}

impl Window {
    /// The position in the ring of the remembered `id`, hashed `hash`.
    fn find(&self, hash: u64, id: &[u8]) -> Option<usize> {
        let (ring, first) = (&self.ring, self.first);
        let at = |seq: u64| seq.checked_sub(first).and_then(|i| usize::try_from(i).ok());
        self.index
            .find(hash, |&(h, seq)| {
                h == hash && at(seq).and_then(|i| ring.get(i)).is_some_and(|r| r.id.as_bytes() == id)
            })
            .and_then(|&(_, seq)| at(seq))
    }

    /// Ends claim `claim` of the id hashed `hash`, storing `entry` (if any) as what is known of
    /// it. An id already remembered keeps its place (its age counts from the first
    /// confirmation); its entry is replaced.
    fn release(&mut self, hash: u64, claim: u64, entry: Option<Entry>, now: Instant) {
        let Ok(found) = self.in_flight.find_entry(hash, |f| f.claim == claim) else {
            return;
        };
        let (flight, _) = found.remove();
        let Some(entry) = entry else {
            return;
        };
        match self.find(hash, flight.id.as_bytes()) {
            Some(i) => {
                let record = &mut self.ring[i];
                let len = flight.id.len();
                self.bytes = self.bytes - record.entry.bytes(len) + entry.bytes(len);
                record.entry = entry;
            }
            None => {
                self.bytes += entry.bytes(flight.id.len());
                let seq = self.first + self.ring.len() as u64;
                self.ring.push_back(Record {
                    at: now,
                    hash,
                    id: StoredId::new(&flight.id),
                    entry,
                });
                self.index.insert_unique(hash, (hash, seq), |&(h, _)| h);
            }
        }
        self.expire(now);
    }

    /// Forgets the oldest remembered ids while over a limit or past the age.
    fn expire(&mut self, now: Instant) {
        let Limits {
            capacity,
            max_bytes,
            ttl,
        } = self.limits;
        while let Some(oldest) = self.ring.front() {
            if self.ring.len() <= capacity && self.bytes <= max_bytes && now.duration_since(oldest.at) < ttl {
                break;
            }
            let (hash, seq) = (oldest.hash, self.first);
            if let Ok(found) = self.index.find_entry(hash, |&(_, s)| s == seq) {
                found.remove();
            }
            if let Some(record) = self.ring.pop_front() {
                self.bytes -= record.entry.bytes(record.id.as_bytes().len());
            }
            self.first += 1;
        }
    }
}

impl Dedup {
    /// A window with these limits; capacity 0 turns dedup off.
    pub fn new(limits: Limits) -> Self {
        Dedup {
            hasher: RandomState::new(),
            inner: Mutex::new(Window {
                limits,
                ring: VecDeque::new(),
                first: 0,
                index: HashTable::new(),
                bytes: 0,
                in_flight: HashTable::new(),
                claims: 0,
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
        let hash = self.hasher.hash_one(id);
        let mut guard = self.lock();
        let w = &mut *guard;
        if w.limits.capacity == 0 {
            return Claim::Claimed(ClaimGuard {
                dedup: self,
                held: None,
                confirmed: Vec::new(),
            });
        }
        w.expire(now);
        let confirmed = match w.find(hash, id.as_bytes()).map(|i| &w.ring[i].entry) {
            Some(Entry::Published) => return Claim::Published,
            Some(Entry::Partly(keys)) => keys.clone(),
            None => Vec::new(),
        };
        if w.in_flight.find(hash, |f| *f.id == *id).is_some() {
            return Claim::InFlight;
        }
        w.claims += 1;
        let claim = w.claims;
        let flight = Flight {
            hash,
            id: id.into(),
            claim,
        };
        w.in_flight.insert_unique(hash, flight, |f| f.hash);
        Claim::Claimed(ClaimGuard {
            dedup: self,
            held: Some((hash, claim)),
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

    /// The claim of `id` at `at`; panics with `why` when it is not claimed.
    fn claimed<'a>(d: &'a Dedup, id: &str, at: Instant, why: &str) -> ClaimGuard<'a> {
        match d.claim(id, at) {
            Claim::Claimed(claim) => claim,
            _ => panic!("{id}: {why}"),
        }
    }

    /// Claims `id` and records it published, as a request whose publish succeeded does.
    fn publish(d: &Dedup, id: &str, at: Instant) {
        claimed(d, id, at, "is claimed").published(at);
    }

    fn seen(d: &Dedup, id: &str, at: Instant) -> bool {
        matches!(d.claim(id, at), Claim::Published)
    }

    /// Ids remembered.
    fn len(d: &Dedup) -> usize {
        d.lock().ring.len()
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
        let first = claimed(&d, "evt_1", t0, "a new id is claimed");
        assert!(matches!(d.claim("evt_1", t0), Claim::InFlight));
        assert!(matches!(d.claim("evt_2", t0), Claim::Claimed(_)));
        drop(first); // the publish failed or the request was cancelled
        let again = claimed(&d, "evt_1", t0, "a released id is claimed again");
        again.published(t0);
        assert!(matches!(d.claim("evt_1", t0), Claim::Published));
        assert_eq!(d.lock().in_flight.len(), 0);
        assert_eq!(d.lock().index.len(), 1);
    }

    #[test]
    fn a_partial_fan_out_is_remembered_per_target_until_complete() {
        let d = dedup(10);
        let t0 = Instant::now();
        let (a, b, c) = (target_key("k", "t1"), target_key("k", "t2"), target_key("r", "t1"));
        let first = claimed(&d, "evt_1", t0, "claimed");
        assert!(!first.already_confirmed(&a));
        first.partly_published([a.clone()], t0);
        // The retry knows `a` has it; it is a claim (not a duplicate), and exclusive.
        let second = claimed(&d, "evt_1", t0, "a partly published event is claimed again");
        assert!(matches!(d.claim("evt_1", t0), Claim::InFlight));
        assert!(second.already_confirmed(&a) && !second.already_confirmed(&b) && !second.already_confirmed(&c));
        second.partly_published([b.clone()], t0);
        let third = claimed(&d, "evt_1", t0, "claimed");
        assert!(third.already_confirmed(&a) && third.already_confirmed(&b) && !third.already_confirmed(&c));
        // A try that confirmed nothing new forgets nothing.
        third.partly_published([], t0);
        let fourth = claimed(&d, "evt_1", t0, "claimed");
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
        let c = claimed(&d, "evt_1", t0, "claimed");
        c.partly_published([], t0);
        assert_eq!(len(&d), 0);
    }

    #[test]
    fn with_dedup_off_every_claim_succeeds() {
        let d = dedup(0);
        let t0 = Instant::now();
        let first = claimed(&d, "evt_1", t0, "claimed");
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
    fn remembering_twice_keeps_one_entry_and_its_place() {
        let d = dedup(3);
        let t0 = Instant::now();
        let first = claimed(&d, "evt_1", t0, "claimed");
        first.partly_published([target_key("k", "t1")], t0);
        publish(&d, "evt_2", t0 + Duration::from_secs(1));
        let second = claimed(&d, "evt_1", t0 + Duration::from_secs(2), "claimed again");
        second.published(t0 + Duration::from_secs(2));
        assert_eq!(len(&d), 2);
        assert_eq!(d.lock().index.len(), 2);
        // evt_1's age counts from its first confirmation: it goes first.
        assert!(!seen(&d, "evt_1", t0 + Duration::from_secs(60)));
        assert!(seen(&d, "evt_2", t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_retry_in_flight_stays_claimed_when_its_partial_entry_expires() {
        let d = dedup(10);
        let t0 = Instant::now();
        let first = claimed(&d, "evt_1", t0, "claimed");
        first.partly_published([target_key("k", "t1")], t0);
        let retry = claimed(&d, "evt_1", t0, "claimed again");
        // The window passes while the retry publishes: what was remembered goes, the claim stays.
        assert!(matches!(
            d.claim("evt_1", t0 + Duration::from_secs(60)),
            Claim::InFlight
        ));
        assert_eq!((len(&d), d.lock().bytes), (0, 0));
        retry.published(t0 + Duration::from_secs(61));
        assert!(seen(&d, "evt_1", t0 + Duration::from_secs(61)));
        assert_eq!(d.lock().in_flight.len(), 0);
    }

    #[test]
    fn a_long_run_keeps_the_table_and_the_queue_in_step() {
        let d = dedup(100);
        let t0 = Instant::now();
        for i in 0..10_000 {
            let id = format!("evt_{i}");
            match i % 3 {
                0 => publish(&d, &id, t0),
                1 => drop(d.claim(&id, t0)),
                _ => {
                    let c = claimed(&d, &id, t0, "claimed");
                    c.partly_published([target_key("k", "t")], t0);
                }
            }
        }
        let w = d.lock();
        assert_eq!((w.ring.len(), w.index.len(), w.in_flight.len()), (100, 100, 0));
        let bytes: usize = w.ring.iter().map(|r| r.entry.bytes(r.id.as_bytes().len())).sum();
        assert_eq!(w.bytes, bytes);
    }
}
