//! The memory budget for request bodies (`http.max_buffered_bytes`): the most body bytes that all
//! requests together may hold at once, counted by what is allocated for them.
//!
//! A request reads its body into one buffer, allocated once at the declared `Content-Length`
//! (or, for a chunked body, grown by doubling up to `max_body_bytes`); every allocation first
//! takes its bytes from the budget, and they are given back when the request is answered. The
//! last quarter of the budget is kept for small bodies (up to [`SMALL_BODY`] bytes, which is what
//! Stripe sends): large uploads, however many, cannot take it. When the budget is spent, the
//! request that needs room:
//!
//! 1. cuts off the body read that has been going on longest (at least [`EVICT_MIN_AGE`]): that
//!    upload is answered `503` with `Retry-After`, and what it held is freed (a slow or stalled
//!    upload cannot sit on the budget while fast ones wait);
//! 2. waits at most [`BUDGET_WAIT`] for the bytes, and is answered `503` if they do not come.
//!
//! A body already read (its event being published) is never cut off: it is bounded by
//! `ack_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a request waits for budget before it is answered 503.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// A body read younger than this is never cut off to make room.
pub const EVICT_MIN_AGE: Duration = Duration::from_secs(1);

/// Bodies up to this size may use the whole budget; larger ones all but its last quarter.
pub const SMALL_BODY: usize = 64 * 1024;

/// The budget, shared by every request on the webhook port.
pub struct BodyBudget {
    total: usize,
    /// Bytes held now.
    held: Mutex<usize>,
    /// Woken when bytes are given back.
    freed: Notify,
    readers: Mutex<Vec<Reader>>,
    next_id: AtomicU64,
}

/// A body read in progress, a candidate for eviction.
struct Reader {
    id: u64,
    started: Instant,
    held: usize,
    evict: Arc<Notify>,
}

/// Why a request got no room for its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The budget stayed spent for [`BUDGET_WAIT`].
    Refused,
}

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        BodyBudget {
            total,
            held: Mutex::new(0),
            freed: Notify::new(),
            readers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// The budget in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held by requests now.
    pub fn held(&self) -> u64 {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) as u64
    }

    /// Starts a body read; what it holds is given back when the lease is dropped.
    pub fn lease(&self) -> Lease<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        self.readers().push(Reader {
            id,
            started: Instant::now(),
            held: 0,
            evict: evict.clone(),
        });
        Lease {
            budget: self,
            id,
            held: 0,
            evict,
            reading: true,
        }
    }

    fn readers(&self) -> std::sync::MutexGuard<'_, Vec<Reader>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `more` bytes if that keeps the total within `cap`.
    fn try_take(&self, more: usize, cap: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.saturating_add(more) <= cap {
            *held += more;
            true
        } else {
            false
        }
    }

    /// Cuts off the longest-running body read (other than `except`) that holds something and is
    /// at least [`EVICT_MIN_AGE`] old. Returns whether one was found.
    fn evict_oldest(&self, except: u64) -> bool {
        let now = Instant::now();
        let mut readers = self.readers();
        let victim = readers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.id != except && r.held > 0 && now.duration_since(r.started) >= EVICT_MIN_AGE)
            .min_by_key(|(_, r)| r.started)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                // Out of the list: it is cut off once, and frees its bytes when it is dropped.
                let r = readers.swap_remove(i);
                r.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            *held = held.saturating_sub(bytes);
            drop(held);
            self.freed.notify_waiters();
        }
    }
}

/// One request's share of the budget.
pub struct Lease<'a> {
    budget: &'a BodyBudget,
    id: u64,
    held: usize,
    evict: Arc<Notify>,
    reading: bool,
}

impl Lease<'_> {
    /// Notified when another request cut this body read off to make room.
    pub fn eviction(&self) -> Arc<Notify> {
        self.evict.clone()
    }

    /// Grows what this request holds to `bytes` in all, cutting off the oldest slow upload and
    /// waiting up to [`BUDGET_WAIT`] when the budget is spent.
    pub async fn grow_to(&mut self, bytes: usize) -> Result<(), Shortage> {
        let Some(more) = bytes.checked_sub(self.held).filter(|m| *m > 0) else {
            return Ok(());
        };
        let total = self.budget.total;
        let cap = if bytes <= SMALL_BODY { total } else { total - total / 4 };
        if bytes > cap {
            return Err(Shortage::Refused);
        }
        let deadline = tokio::time::Instant::now() + BUDGET_WAIT;
        let mut evicted = false;
        loop {
            let freed = self.budget.freed.notified();
            if self.budget.try_take(more, cap) {
                break;
            }
            // One eviction per growth: enough to make room, without every waiting upload
            // cutting off another one every few milliseconds.
            if !evicted {
                evicted = self.budget.evict_oldest(self.id);
            }
            // Evicted requests free their bytes as soon as they are answered: try again then,
            // or soon in any case.
            let slice = tokio::time::Instant::now() + Duration::from_millis(100);
            let _ = tokio::time::timeout_at(slice.min(deadline), freed).await;
            if tokio::time::Instant::now() >= deadline {
                if self.budget.try_take(more, cap) {
                    break;
                }
                return Err(Shortage::Refused);
            }
        }
        self.held = bytes;
        if self.reading {
            if let Some(r) = self.budget.readers().iter_mut().find(|r| r.id == self.id) {
                r.held = bytes;
            }
        }
        Ok(())
    }

    /// The whole body is read: from now on this request is never cut off (it keeps its bytes
    /// until it is answered).
    pub fn done_reading(&mut self) {
        if self.reading {
            self.reading = false;
            self.budget.readers().retain(|r| r.id != self.id);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.done_reading();
        self.budget.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_come_back_when_a_lease_ends() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.lease();
        a.grow_to(600).await.unwrap();
        a.grow_to(900).await.unwrap();
        assert_eq!(budget.held(), 900);
        drop(a);
        assert_eq!(budget.held(), 0);
        let mut b = budget.lease();
        b.grow_to(1000).await.unwrap();
        assert_eq!(
            b.grow_to(1001).await,
            Err(Shortage::Refused),
            "more than the whole budget"
        );
    }

    /// Paused time: a request whose wake-up were lost would be served only by its 100 ms retry.
    #[tokio::test(start_paused = true)]
    async fn bytes_given_back_wake_a_waiting_request_at_once() {
        let budget = Arc::new(BodyBudget::new(1000));
        let mut holder = budget.lease();
        holder.grow_to(1000).await.unwrap();
        let start = tokio::time::Instant::now();
        let other = budget.clone();
        let waiter = tokio::spawn(async move {
            let mut lease = other.lease();
            let got = lease.grow_to(500).await;
            (got, tokio::time::Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(holder);
        let (got, at) = waiter.await.unwrap();
        assert_eq!(got, Ok(()));
        assert_eq!(at - start, Duration::from_millis(30), "woken when the bytes came back");
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn large_bodies_leave_the_last_quarter_to_small_ones() {
        let budget = BodyBudget::new(8 * SMALL_BODY);
        let mut large = budget.lease();
        large.grow_to(6 * SMALL_BODY).await.unwrap();
        let mut other_large = budget.lease();
        let started = Instant::now();
        assert_eq!(other_large.grow_to(SMALL_BODY + 1).await, Err(Shortage::Refused));
        assert!(started.elapsed() >= BUDGET_WAIT);
        // A small body still finds room at once.
        let mut small = budget.lease();
        let started = Instant::now();
        small.grow_to(SMALL_BODY).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_after_a_short_wait_when_nobody_is_old_enough() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.lease();
        a.grow_to(800).await.unwrap();
        let mut b = budget.lease();
        let started = Instant::now();
        assert_eq!(b.grow_to(400).await, Err(Shortage::Refused));
        assert!(started.elapsed() >= BUDGET_WAIT);
        assert!(started.elapsed() < BUDGET_WAIT * 3);
    }

    #[tokio::test]
    async fn the_oldest_unfinished_read_is_cut_off_to_make_room() {
        let budget = Arc::new(BodyBudget::new(1000));
        let mut old = budget.lease();
        old.grow_to(500).await.unwrap();
        let mut finished = budget.lease();
        finished.grow_to(400).await.unwrap();
        finished.done_reading();
        tokio::time::sleep(EVICT_MIN_AGE + Duration::from_millis(50)).await;
        let evicted = old.eviction();
        let budget2 = budget.clone();
        let newcomer = tokio::spawn(async move {
            let mut lease = budget2.lease();
            lease.grow_to(300).await.map(|()| budget2.held())
        });
        // The old read learns it was cut off, and is answered (its lease dropped).
        tokio::time::timeout(Duration::from_secs(1), evicted.notified())
            .await
            .unwrap();
        drop(old);
        assert_eq!(newcomer.await.unwrap(), Ok(700), "the finished read keeps its bytes");
    }
}
