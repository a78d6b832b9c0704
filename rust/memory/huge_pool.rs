//! Reserving 2 MiB hugetlb pages for a run and giving them back: [`HugetlbReservation`].
//!
//! Tests and benches that map [`Backing::Hugetlb`](super::Backing::Hugetlb) RAM need pages in
//! the kernel's pool. A reservation raises `/proc/sys/vm/nr_hugepages` (root only) and puts the
//! original value back when the last reservation of the process is dropped, panics included.

use std::io;
use std::sync::Mutex;

use crate::util::lock;

use super::error::MemoryError;
use super::huge::HugetlbPool;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Process-wide: the pool size before the first reservation, and the pages held since.
static STATE: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Pages added to the 2 MiB hugetlb pool for as long as this value lives.
#[derive(Debug)]
#[must_use = "the pages go back to the kernel when this is dropped"]
pub struct HugetlbReservation {
    pages: u64,
}

fn write_pool(pages: u64) -> Result<(), MemoryError> {
    std::fs::write(NR_HUGEPAGES, pages.to_string()).map_err(|source| MemoryError::Os {
        op: "write /proc/sys/vm/nr_hugepages",
        source,
    })
}

impl HugetlbReservation {
    /// Makes sure `pages` more 2 MiB pages are free in the pool than other users of this
    /// process's reservations hold, by raising `nr_hugepages`; fails with
    /// [`MemoryError::HugePagesUnavailable`] when the kernel refuses (not root, or memory too
    /// fragmented to find that many 2 MiB pages), having put the pool back as it was.
    pub fn new(pages: u64) -> Result<HugetlbReservation, MemoryError> {
        let mut st = lock(&STATE);
        let (orig, held) = match *st {
            Some(s) => s,
            None => (HugetlbPool::read()?.total, 0),
        };
        let want = orig + held + pages;
        let refused = |reason: String| MemoryError::HugePagesUnavailable {
            backing: "hugetlb",
            reason,
        };
        if let Err(e) = write_pool(want) {
            return Err(refused(format!(
                "cannot raise the pool to {want} pages: {e}"
            )));
        }
        let got = HugetlbPool::read()?.total;
        if got < want {
            // Best effort: the previous size is what we were asked to keep.
            let _ = write_pool(orig + held);
            return Err(refused(format!(
                "asked the kernel for {want} pages of 2 MiB, it found {got}"
            )));
        }
        *st = Some((orig, held + pages));
        Ok(HugetlbReservation { pages })
    }

    /// Pages this reservation added.
    pub fn pages(&self) -> u64 {
        self.pages
    }
}

impl Drop for HugetlbReservation {
    fn drop(&mut self) {
        let mut st = lock(&STATE);
        let Some((orig, held)) = *st else { return };
        let held = held.saturating_sub(self.pages);
        *st = if held == 0 { None } else { Some((orig, held)) };
        if let Err(e) = write_pool(orig + held) {
            // Nothing to return to: say so rather than leave the pool silently changed.
            eprintln!("vballoon: could not give hugetlb pages back: {e}");
        }
    }
}

/// Whether the error says the kernel or the machine refused huge pages (a test may skip then).
pub fn is_unavailable(e: &MemoryError) -> bool {
    matches!(e, MemoryError::HugePagesUnavailable { .. })
        || matches!(e, MemoryError::Os { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
}
