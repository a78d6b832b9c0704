//! Where decoded pages go: a sink of runs, and an adapter that joins adjacent runs.

use super::PageSet;
use crate::memory::PageRange;

/// Receives the pages a decoder found, as runs of `len >= 1` pages from `start`.
///
/// Implemented for closures `FnMut(u64, u64)` (start, len), for [`PageSet`] (which inserts
/// them) and for `Vec<PageRange>` (which appends them). Decoders validate a whole message before the first
/// call, so a sink never sees part of a malformed message.
pub trait PageSink {
    /// Takes `len` pages starting at `start`.
    fn run(&mut self, start: u64, len: u64);

    /// The exclusive PFN bound this sink can hold; decoders reject pages at or above it.
    fn limit(&self) -> u64 {
        u64::MAX
    }
}

impl<F: FnMut(u64, u64)> PageSink for F {
    fn run(&mut self, start: u64, len: u64) {
        self(start, len)
    }
}

impl PageSink for PageSet {
    fn run(&mut self, start: u64, len: u64) {
        self.insert_range(start, len);
    }

    fn limit(&self) -> u64 {
        self.npages()
    }
}

impl PageSink for Vec<PageRange> {
    fn run(&mut self, start: u64, len: u64) {
        self.push(PageRange::new(start, len));
    }
}

/// A sink adapter that joins each run with the previous one when they touch, and counts.
///
/// Decoders use it inside one message; a caller can keep one across messages (the device
/// does, to turn a stream of runs into as few discards as possible). Call [`flush`] at the end.
///
/// [`flush`]: Coalescer::flush
pub struct Coalescer<'a, K: PageSink + ?Sized> {
    inner: &'a mut K,
    pending: Option<(u64, u64)>,
    runs: u64,
    pages: u64,
}

impl<'a, K: PageSink + ?Sized> Coalescer<'a, K> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut K) -> Coalescer<'a, K> {
        Coalescer {
            inner,
            pending: None,
            runs: 0,
            pages: 0,
        }
    }

    /// Hands the held run, if any, to the inner sink.
    pub fn flush(&mut self) {
        if let Some((start, len)) = self.pending.take() {
            self.runs += 1;
            self.inner.run(start, len);
        }
    }

    /// Runs handed to the inner sink so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Pages taken so far, counted once per time they were given.
    pub fn pages(&self) -> u64 {
        self.pages
    }
}

impl<K: PageSink + ?Sized> PageSink for Coalescer<'_, K> {
    fn run(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.pages = self.pages.saturating_add(len);
        match &mut self.pending {
            Some((s, l)) if s.checked_add(*l) == Some(start) => *l += len,
            _ => {
                self.flush();
                self.pending = Some((start, len));
            }
        }
    }

    fn limit(&self) -> u64 {
        self.inner.limit()
    }
}

impl<K: PageSink + ?Sized> Drop for Coalescer<'_, K> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_coalescer_joins_touching_runs_only() {
        let mut out = Vec::new();
        {
            let mut c = Coalescer::new(&mut out);
            for (s, l) in [(0, 4), (4, 4), (9, 1), (10, 0), (10, 2), (5, 1)] {
                c.run(s, l);
            }
            c.flush();
            assert_eq!((c.runs(), c.pages()), (3, 12));
        }
        assert_eq!(out, crate::memory::page_ranges(&[(0, 8), (9, 3), (5, 1)]));
    }

    #[test]
    fn test_coalescer_flushes_on_drop() {
        let mut out = Vec::new();
        Coalescer::new(&mut out).run(7, 1);
        assert_eq!(out, vec![PageRange::new(7, 1)]);
    }
}
