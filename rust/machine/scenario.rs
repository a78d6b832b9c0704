//! The published migration setups, built on real guest memory (BENCHMARKS.md, M1-M3).
//!
//! | scenario | guest | built as | free memory |
//! |---|---|---|---|
//! | [`Scenario::m1`] | 8 GiB | 400 MiB allocated and filled with random data | never touched |
//! | [`Scenario::m2`] | 8 GiB | 7.5 GiB allocated and filled, then 95% of the blocks freed | 7.1 GiB of stale data, 0.5 GiB never touched |
//! | [`Scenario::m3`] | 128 GiB | 400 MiB allocated and filled | never touched (MAP_NORESERVE) |
//!
//! Pages are allocated from the guest's buddy allocator, so "used" is what the allocator says
//! and free pages are on its free lists, as in a guest kernel. M2 costs a page fault and a
//! random fill per page of its 7.5 GiB (seconds): build it once and migrate it many times,
//! calling [`GuestRunner::restore_untouched`] between runs. Tests use small guests
//! ([`Scenario::with_guest_bytes`] scales the workload with the guest).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::migrate_guest::{resident_set, GuestRunner};
use crate::error::Error;
use crate::guest::{Guest, Workload, MAX_PAGE_ORDER};
use crate::memory::{Backing, GuestMemory, PAGE_SIZE};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// How to build a guest for a migration experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// A name for reports (`"M1"`, ...).
    pub name: String,
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub guest_bytes: u64,
    /// How the RAM is backed (memfd for a guest another process maps).
    pub backing: Backing,
    /// Bytes the workload allocates and fills with random data.
    pub workload_bytes: u64,
    /// Share of the workload's blocks freed again (their pages keep stale data).
    pub free_share: f64,
    /// Order of the blocks the workload allocates (0 = single pages).
    pub alloc_order: u8,
    /// Seed of the workload's random choices and data.
    pub seed: u64,
}

/// What a built scenario holds, measured after building it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioInfo {
    /// The scenario's name.
    pub name: String,
    /// Guest RAM in bytes.
    pub guest_bytes: u64,
    /// Bytes the guest uses (allocated pages).
    pub used_bytes: u64,
    /// Free bytes that hold stale data (populated on the host).
    pub stale_free_bytes: u64,
    /// Bytes never touched (not populated on the host).
    pub untouched_bytes: u64,
    /// Free blocks by order (0..=10), as on the allocator's lists.
    pub free_blocks_by_order: Vec<u64>,
    /// Wall time of the build.
    pub build_time: Duration,
}

impl Scenario {
    /// M1: an idle, just-booted 8 GiB guest with about 400 MB in use; the rest never touched.
    pub fn m1() -> Scenario {
        Scenario {
            name: "M1".into(),
            guest_bytes: 8 * GIB,
            backing: Backing::Anonymous,
            workload_bytes: 400 * MIB,
            free_share: 0.0,
            alloc_order: 0,
            seed: 1,
        }
    }

    /// M2: the same guest right after a memory-heavy workload ended: 7.5 GiB were allocated
    /// and written, 95% of it freed again, so free pages hold stale data (about 384 MiB stay
    /// in use).
    pub fn m2() -> Scenario {
        Scenario {
            name: "M2".into(),
            guest_bytes: 8 * GIB,
            backing: Backing::Anonymous,
            workload_bytes: 7 * GIB + 512 * MIB,
            free_share: 0.95,
            alloc_order: 0,
            seed: 2,
        }
    }

    /// M3: an idle 128 GiB guest with about 400 MB in use (MAP_NORESERVE: the untouched rest
    /// costs this 24 GiB host nothing).
    pub fn m3() -> Scenario {
        Scenario {
            name: "M3".into(),
            guest_bytes: 128 * GIB,
            ..Scenario::m1()
        }
    }

    /// A published scenario by name (`"m1"`, `"M2"`, ...).
    pub fn by_name(name: &str) -> Option<Scenario> {
        match name.to_ascii_lowercase().as_str() {
            "m1" => Some(Scenario::m1()),
            "m2" => Some(Scenario::m2()),
            "m3" => Some(Scenario::m3()),
            _ => None,
        }
    }

    /// The same scenario for a guest of `bytes`, the workload scaled in proportion (rounded to
    /// whole pages).
    pub fn with_guest_bytes(mut self, bytes: u64) -> Scenario {
        let scaled = self.workload_bytes as f64 * bytes as f64 / self.guest_bytes as f64;
        self.workload_bytes = (scaled as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        self.guest_bytes = bytes;
        self
    }

    /// The same scenario with `backing`.
    pub fn with_backing(mut self, backing: Backing) -> Scenario {
        self.backing = backing;
        self
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Config(format!("scenario {}: {what}", self.name)));
        if self.guest_bytes == 0 || self.guest_bytes % PAGE_SIZE != 0 {
            return bad("guest size must be a positive multiple of 4 KiB");
        }
        if self.workload_bytes > self.guest_bytes {
            return bad("workload larger than the guest");
        }
        if !(0.0..=1.0).contains(&self.free_share) {
            return bad("free share outside [0, 1]");
        }
        if self.alloc_order > MAX_PAGE_ORDER {
            return bad("allocation order above 10");
        }
        Ok(())
    }

    /// Maps the guest's RAM, runs the workload's set-up (allocate, fill, free a share), and
    /// returns the guest idle, with its workload thread ready.
    pub fn build(&self) -> Result<(GuestRunner, ScenarioInfo), Error> {
        self.check()?;
        let t = Instant::now();
        let mem = Arc::new(GuestMemory::new(self.guest_bytes, self.backing)?);
        let mut guest = Guest::new(mem.clone())?;
        let mut workload = Workload::new(self.seed);
        workload.allocate(&mut guest, self.workload_bytes, self.alloc_order)?;
        if self.free_share > 0.0 {
            workload.free_share(&mut guest, self.free_share)?;
        }
        let used = guest.allocator().used_pages();
        let blocks = guest.allocator().free_block_counts().to_vec();
        let runner = GuestRunner::new(guest, workload);
        let resident = resident_set(&mem)?.count();
        let info = ScenarioInfo {
            name: self.name.clone(),
            guest_bytes: self.guest_bytes,
            used_bytes: used * PAGE_SIZE,
            stale_free_bytes: resident.saturating_sub(used) * PAGE_SIZE,
            untouched_bytes: (mem.pages() - resident) * PAGE_SIZE,
            free_blocks_by_order: blocks,
            build_time: t.elapsed(),
        };
        Ok((runner, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_small_m2_has_stale_free_pages() {
        let s = Scenario::m2().with_guest_bytes(32 * MIB);
        assert_eq!(s.workload_bytes, 30 * MIB);
        let (runner, info) = s.build().unwrap();
        let pages = 32 * MIB / PAGE_SIZE;
        assert_eq!(info.used_bytes / PAGE_SIZE, runner.used_pages().count());
        // 5% of 7680 single-page blocks stay.
        assert_eq!(info.used_bytes / PAGE_SIZE, 384);
        assert_eq!(info.untouched_bytes, 2 * MIB);
        assert_eq!(
            info.stale_free_bytes,
            (pages - 384) * PAGE_SIZE - info.untouched_bytes
        );
        assert!(Scenario::by_name("m3").is_some_and(|m| m.guest_bytes == 128 * GIB));
        let bad = Scenario {
            free_share: 2.0,
            ..Scenario::m1()
        };
        assert!(matches!(bad.build(), Err(Error::Config(_))));
    }
}
