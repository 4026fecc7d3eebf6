//! The buffer a request body is read into.
//!
//! A body up to [`SMALL_BODY`] bytes (every event Stripe sends) is read into a heap buffer, as
//! any allocation. A larger one gets an anonymous memory mapping of its own: its pages become
//! resident only as the body is written into them, and all of them go back to the system the
//! moment the last reference to the body is dropped. Through the allocator, a large body freed
//! by an upload that was cut off stayed committed for the allocator's purge delay while the
//! next upload took fresh memory, so that a burst of stalled uploads held about 10 MiB more than
//! the body budget allows for (see `bench/FINDINGS.md`).

use std::io;

use bytes::Bytes;
use memmap2::MmapMut;

use crate::budget::SMALL_BODY;

/// A growable body buffer: on the heap up to [`SMALL_BODY`] bytes of capacity, mapped beyond.
#[derive(Debug)]
pub struct BodyBuf {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Heap(Vec<u8>),
    Mapped { map: MmapMut, len: usize },
}

impl BodyBuf {
    pub fn new() -> BodyBuf {
        BodyBuf {
            inner: Inner::Heap(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Heap(v) => v.len(),
            Inner::Mapped { len, .. } => *len,
        }
    }

    pub fn capacity(&self) -> usize {
        match &self.inner {
            Inner::Heap(v) => v.capacity(),
            Inner::Mapped { map, .. } => map.len(),
        }
    }

    /// Whether the body lives in a mapping of its own.
    #[cfg(test)]
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped { .. })
    }

    fn filled(&self) -> &[u8] {
        match &self.inner {
            Inner::Heap(v) => v,
            Inner::Mapped { map, len } => &map[..*len],
        }
    }

    /// Makes room for `capacity` bytes in all, keeping what was read. Exact: the caller took
    /// exactly that from the body budget. Fails only when the system has no memory to map.
    pub fn grow_to(&mut self, capacity: usize) -> io::Result<()> {
        if capacity <= self.capacity() {
            return Ok(());
        }
        if capacity <= SMALL_BODY {
            if let Inner::Heap(v) = &mut self.inner {
                v.reserve_exact(capacity - v.len());
                return Ok(());
            }
        }
        let mut map = MmapMut::map_anon(capacity)?;
        let len = self.len();
        map[..len].copy_from_slice(self.filled());
        self.inner = Inner::Mapped { map, len };
        Ok(())
    }

    /// Appends `data`, which must fit in the capacity made by [`BodyBuf::grow_to`]; if it does
    /// not, the buffer grows to fit (never the case when the caller grew it first).
    pub fn extend_from_slice(&mut self, data: &[u8]) -> io::Result<()> {
        let needed = self.len() + data.len();
        if needed > self.capacity() {
            self.grow_to(needed)?;
        }
        match &mut self.inner {
            Inner::Heap(v) => v.extend_from_slice(data),
            Inner::Mapped { map, len } => {
                map[*len..needed].copy_from_slice(data);
                *len = needed;
            }
        }
        Ok(())
    }

    /// The body, without a copy: a mapped body stays mapped until its last `Bytes` is dropped.
    pub fn into_bytes(self) -> Bytes {
        match self.inner {
            Inner::Heap(v) => Bytes::from(v),
            Inner::Mapped { map, len } => Bytes::from_owner(map).slice(..len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_small_body_stays_on_the_heap() {
        let mut buf = BodyBuf::new();
        buf.grow_to(4096).unwrap();
        buf.extend_from_slice(&pattern(4096)).unwrap();
        assert!(!buf.is_mapped());
        assert_eq!(buf.capacity(), 4096);
        assert_eq!(&buf.into_bytes()[..], &pattern(4096)[..]);
    }

    #[test]
    fn a_body_up_to_the_small_limit_stays_on_the_heap() {
        let mut buf = BodyBuf::new();
        buf.grow_to(SMALL_BODY).unwrap();
        buf.extend_from_slice(&pattern(SMALL_BODY)).unwrap();
        assert!(!buf.is_mapped());
        assert_eq!(buf.into_bytes().len(), SMALL_BODY);
    }

    #[test]
    fn a_large_declared_body_is_mapped_at_its_exact_size() {
        let size = 1_000_000;
        let mut buf = BodyBuf::new();
        buf.grow_to(size).unwrap();
        assert!(buf.is_mapped());
        assert_eq!(buf.capacity(), size);
        assert_eq!(buf.len(), 0);
        let data = pattern(size);
        for piece in data.chunks(16 * 1024) {
            buf.extend_from_slice(piece).unwrap();
        }
        assert_eq!(buf.len(), size);
        let bytes = buf.into_bytes();
        assert_eq!(bytes.len(), size);
        assert_eq!(&bytes[..], &data[..]);
    }

    #[test]
    fn a_growing_body_keeps_its_bytes_when_it_moves_to_a_mapping_and_between_mappings() {
        let data = pattern(300_000);
        let mut buf = BodyBuf::new();
        let mut read = 0;
        let mut moved = false;
        for piece in data.chunks(7_000) {
            let needed = read + piece.len();
            if needed > buf.capacity() {
                let was_mapped = buf.is_mapped();
                buf.grow_to(needed.max(buf.capacity() * 2).max(16 * 1024)).unwrap();
                moved |= !was_mapped && buf.is_mapped();
            }
            buf.extend_from_slice(piece).unwrap();
            read = needed;
        }
        assert!(moved, "the buffer never left the heap");
        assert_eq!(buf.len(), data.len());
        assert_eq!(&buf.into_bytes()[..], &data[..]);
    }

    #[test]
    fn the_bytes_only_show_what_was_read_not_the_whole_mapping() {
        let mut buf = BodyBuf::new();
        buf.grow_to(200_000).unwrap();
        buf.extend_from_slice(b"{\"id\":\"evt_1\"}").unwrap();
        let bytes = buf.into_bytes();
        assert_eq!(&bytes[..], b"{\"id\":\"evt_1\"}");
        let shared = bytes.clone();
        drop(bytes);
        assert_eq!(&shared[..], b"{\"id\":\"evt_1\"}");
    }

    #[test]
    fn extending_past_the_capacity_grows_instead_of_failing() {
        let mut buf = BodyBuf::new();
        buf.grow_to(SMALL_BODY + 1).unwrap();
        let data = pattern(SMALL_BODY * 3);
        buf.extend_from_slice(&data).unwrap();
        assert_eq!(&buf.into_bytes()[..], &data[..]);
    }
}
