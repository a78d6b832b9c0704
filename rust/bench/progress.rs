//! Where a long benchmark is, for a progress display on another thread.
//!
//! The benches run with the GIL released; the CLI polls these counters from Python meanwhile
//! (as it polls the migration engine's [`Progress`]). Writers store with `Relaxed` ordering:
//! a display that reads a value one step stale is harmless.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use crate::migration::Progress;

/// Shared progress counters of one benchmark run.
#[derive(Debug, Default)]
pub struct BenchProgress {
    /// Steps finished (a variant's run, a floor, one migration).
    pub steps_done: AtomicU64,
    /// Steps the run will take (known once the bench has planned them).
    pub steps_total: AtomicU64,
    /// Bytes faulted in by the populate pass running now.
    pub populate_done: AtomicU64,
    /// Bytes the populate pass running now will fault in (0: none running).
    pub populate_total: AtomicU64,
    /// The migration running now (`bench migrate`): round, pages, bytes.
    pub migration: Arc<Progress>,
    /// What runs now, for a person ("populate", "round 2/3: bitmap", ...).
    label: Mutex<String>,
}

impl BenchProgress {
    /// What runs now.
    pub fn label(&self) -> String {
        // A poisoned label is still a string worth showing.
        self.label
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Names the step that starts now.
    pub fn set_label(&self, label: impl Into<String>) {
        *self.label.lock().unwrap_or_else(PoisonError::into_inner) = label.into();
    }

    /// Adds `n` planned steps.
    pub fn plan(&self, n: u64) {
        self.steps_total.fetch_add(n, Relaxed);
    }

    /// Marks one step finished.
    pub fn step(&self) {
        self.steps_done.fetch_add(1, Relaxed);
    }

    /// Starts a populate pass of `total` bytes.
    pub fn populate_start(&self, total: u64) {
        self.populate_done.store(0, Relaxed);
        self.populate_total.store(total, Relaxed);
    }

    /// Records `bytes` more of the populate pass faulted in.
    pub fn populate_add(&self, bytes: u64) {
        self.populate_done.fetch_add(bytes, Relaxed);
    }

    /// Ends the populate pass.
    pub fn populate_end(&self) {
        self.populate_total.store(0, Relaxed);
        self.populate_done.store(0, Relaxed);
    }
}

/// Counters are equal only to themselves: two runs' progress is never the same progress.
impl PartialEq for BenchProgress {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_steps_and_populate_bytes() {
        let p = BenchProgress::default();
        p.plan(3);
        p.step();
        p.set_label("round 1/1: pfn");
        p.populate_start(100);
        p.populate_add(40);
        assert_eq!(p.steps_done.load(Relaxed), 1);
        assert_eq!(p.steps_total.load(Relaxed), 3);
        assert_eq!(p.populate_done.load(Relaxed), 40);
        assert_eq!(p.populate_total.load(Relaxed), 100);
        assert_eq!(p.label(), "round 1/1: pfn");
        p.populate_end();
        assert_eq!(p.populate_total.load(Relaxed), 0);
    }

    #[test]
    fn inflate_bench_counts_every_variant_and_floor_of_every_round() {
        let p = Arc::new(BenchProgress::default());
        let cfg = crate::bench::InflateBenchConfig {
            guest_bytes: 16 << 20,
            inflate_bytes: 12 << 20,
            rounds: 2,
            progress: Some(Arc::clone(&p)),
            ..Default::default()
        };
        let t = crate::bench::bench_inflate(&cfg).unwrap();
        let per_round = cfg.variants.len() as u64 + 3;
        assert_eq!(p.steps_total.load(Relaxed), 2 * per_round);
        assert_eq!(p.steps_done.load(Relaxed), 2 * per_round);
        assert_eq!(
            p.populate_total.load(Relaxed),
            0,
            "no populate pass left running"
        );
        assert!(p.label().starts_with("round 2/2: "), "{}", p.label());
        assert_eq!(t.rows.len() as u64, per_round);
    }
}
