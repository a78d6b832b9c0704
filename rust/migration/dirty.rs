//! Dirty-page tracking: which guest pages were written since the last sync.
//!
//! Two backends feed one [`DirtyTracker`]:
//! - [`DirtyLog`], an explicit atomic bitmap that the guest model marks after each write (the
//!   analogue of KVM's dirty log). Any code that writes guest RAM on the guest's behalf marks it.
//! - the kernel's own tracking ([`KernelTracker`]: userfaultfd async write-protect plus
//!   `PAGEMAP_SCAN`), which also sees writes through raw views of the memory.
//!
//! A sync takes (get-and-reset) what was written since the previous sync: one migration round.
//! With the kernel backend the explicit log is still merged in, so the result is the union.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::MigrationError;
pub use super::uffd::KernelTracker;
use crate::memory::{GuestMemory, Pfn};
use crate::pages::{AtomicPageBitmap, PageSet};

/// The explicit dirty log: one atomic bit per guest page.
///
/// Writers call [`mark`](DirtyLog::mark) **after** their write: `mark` is a release operation
/// and the sync an acquire, so a page whose bit a sync takes is read with that write visible.
/// Marks are always recorded (there is no enabled check on the write path, so there is no window
/// in which a write can slip past a starting migration); [`start`](DirtyLog::start) clears them.
#[derive(Debug)]
pub struct DirtyLog {
    bits: AtomicPageBitmap,
    enabled: AtomicBool,
    syncs: AtomicU64,
}

impl DirtyLog {
    /// A clean log over `pages` guest pages.
    pub fn new(pages: u64) -> DirtyLog {
        DirtyLog {
            bits: AtomicPageBitmap::new(pages),
            enabled: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        }
    }

    /// A clean log sized for `mem`.
    pub fn for_memory(mem: &GuestMemory) -> DirtyLog {
        DirtyLog::new(mem.pages())
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.bits.npages()
    }

    /// Records that pages `[pfn, pfn + npages)` were written (pages past the end are ignored).
    #[inline]
    pub fn mark(&self, pfn: Pfn, npages: u64) {
        self.bits.set_range(pfn.0, npages);
    }

    /// The pages marked and not yet synced, without resetting them.
    pub fn snapshot(&self) -> PageSet {
        self.bits.snapshot()
    }

    /// Whether `pfn` is marked and not yet synced.
    pub fn is_marked(&self, pfn: Pfn) -> bool {
        self.bits.test(pfn.0)
    }

    /// Turns logging on for a migration: forgets earlier marks.
    pub fn start(&self) {
        self.bits.clear();
        self.syncs.store(0, Ordering::Release);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Turns logging off (marks are still accepted, and ignored until the next start).
    pub fn stop(&self) {
        self.enabled.store(false, Ordering::SeqCst);
    }

    /// Whether a migration has logging on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Takes the pages marked since the previous sync (get-and-reset).
    pub fn sync(&self) -> PageSet {
        let mut out = PageSet::new(self.bits.npages());
        self.sync_into(&mut out);
        out
    }

    /// ORs the pages marked since the previous sync into `out` and resets them.
    pub fn sync_into(&self, out: &mut PageSet) {
        self.bits.take_into(out);
        self.syncs.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of syncs since [`start`](DirtyLog::start) (lets tests check hint ordering).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }
}

/// Which dirty tracking a migration uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirtyTracking {
    /// Only the explicit [`DirtyLog`].
    Explicit,
    /// The kernel tracker (plus the explicit log); fail if it is unavailable.
    Kernel,
    /// The kernel tracker if available, else the explicit log (the reason is recorded).
    #[default]
    Auto,
}

impl DirtyTracking {
    /// Parses `"explicit"`, `"kernel"` or `"auto"`.
    pub fn parse(s: &str) -> Option<DirtyTracking> {
        match s {
            "explicit" | "log" => Some(DirtyTracking::Explicit),
            "kernel" | "uffd" => Some(DirtyTracking::Kernel),
            "auto" => Some(DirtyTracking::Auto),
            _ => None,
        }
    }
}

/// The backend a tracker ended up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtyBackend {
    /// The explicit log; `fallback` says why the kernel tracker was not used, if it was tried.
    Explicit {
        /// Why the kernel tracker was not used (None: it was not asked for).
        fallback: Option<String>,
    },
    /// userfaultfd async write-protect + `PAGEMAP_SCAN`, merged with the explicit log.
    Kernel,
}

impl std::fmt::Display for DirtyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirtyBackend::Explicit { fallback: None } => f.write_str("explicit"),
            DirtyBackend::Explicit {
                fallback: Some(why),
            } => {
                write!(f, "explicit (kernel tracker unavailable: {why})")
            }
            DirtyBackend::Kernel => {
                f.write_str("kernel (userfaultfd write-protect + PAGEMAP_SCAN)")
            }
        }
    }
}

/// The dirty tracking of one running migration: start, sync per round, stop on drop.
#[derive(Debug)]
pub struct DirtyTracker<'a> {
    log: &'a DirtyLog,
    kernel: Option<KernelTracker<'a>>,
    backend: DirtyBackend,
}

impl<'a> DirtyTracker<'a> {
    /// Turns dirty logging on over `mem` with the backend `mode` asks for.
    ///
    /// Everything written after this returns is reported by a later [`sync`](Self::sync).
    pub fn start(
        mem: &'a GuestMemory,
        log: &'a DirtyLog,
        mode: DirtyTracking,
    ) -> Result<DirtyTracker<'a>, MigrationError> {
        let (kernel, backend) = match mode {
            DirtyTracking::Explicit => (None, DirtyBackend::Explicit { fallback: None }),
            DirtyTracking::Kernel => match KernelTracker::new(mem) {
                Ok(k) => (Some(k), DirtyBackend::Kernel),
                Err(reason) => return Err(MigrationError::KernelTrackingUnavailable { reason }),
            },
            DirtyTracking::Auto => match KernelTracker::new(mem) {
                Ok(k) => (Some(k), DirtyBackend::Kernel),
                Err(reason) => (
                    None,
                    DirtyBackend::Explicit {
                        fallback: Some(reason),
                    },
                ),
            },
        };
        log.start();
        Ok(DirtyTracker {
            log,
            kernel,
            backend,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> &DirtyBackend {
        &self.backend
    }

    /// ORs into `out` every page written since the previous sync (or since start) and resets.
    pub fn sync_into(&mut self, out: &mut PageSet) -> Result<(), MigrationError> {
        if let Some(k) = &mut self.kernel {
            k.sync(out)
                .map_err(|source| MigrationError::KernelTracking {
                    op: "PAGEMAP_SCAN",
                    source,
                })?;
        }
        self.log.sync_into(out);
        Ok(())
    }

    /// Every page written since the previous sync (get-and-reset).
    pub fn sync(&mut self) -> Result<PageSet, MigrationError> {
        let mut out = PageSet::new(self.log.pages());
        self.sync_into(&mut out)?;
        Ok(out)
    }
}

impl Drop for DirtyTracker<'_> {
    fn drop(&mut self) {
        self.log.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestAddress, PAGE_SIZE};

    #[test]
    fn test_explicit_log_round_is_get_and_reset() {
        let log = DirtyLog::new(1000);
        log.mark(Pfn(5), 3);
        log.mark(Pfn(999), 10);
        let r = log.sync();
        assert_eq!(
            r.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(5, 3), (999, 1)]
        );
        assert!(log.sync().is_empty());
        assert_eq!(log.syncs(), 2);
    }

    #[test]
    fn test_kernel_tracker_sees_plain_writes() {
        for backing in [Backing::Anonymous, Backing::Memfd] {
            let mem = GuestMemory::new(16 << 20, backing).unwrap();
            mem.fill(GuestAddress(0), 1 << 20, 7).unwrap(); // populated before tracking
            let mut k = match KernelTracker::new(&mem) {
                Ok(k) => k,
                Err(reason) => {
                    // Not every kernel has it; the tracker's fallback is tested elsewhere.
                    eprintln!("skipping: {reason}");
                    return;
                }
            };
            let pages = mem.pages();
            let mut b = PageSet::new(pages);
            k.sync(&mut b).unwrap();
            assert!(b.is_empty(), "{backing:?}: nothing written yet");
            mem.write(GuestAddress(3 * PAGE_SIZE), &[1]).unwrap(); // populated page
            mem.write(GuestAddress(1000 * PAGE_SIZE + 5), &[1, 2])
                .unwrap(); // never touched
            let _ = mem.read_u64(GuestAddress(2000 * PAGE_SIZE)).unwrap(); // a read is no write
            k.sync(&mut b).unwrap();
            assert_eq!(
                b.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
                vec![(3, 1), (1000, 1)],
                "{backing:?}"
            );
            let mut b2 = PageSet::new(pages);
            k.sync(&mut b2).unwrap();
            assert!(b2.is_empty(), "{backing:?}: re-protected by the scan");
            mem.write(GuestAddress(3 * PAGE_SIZE), &[9]).unwrap();
            k.sync(&mut b2).unwrap();
            assert_eq!(
                b2.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
                vec![(3, 1)],
                "{backing:?}"
            );
        }
    }
}
