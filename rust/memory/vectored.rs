//! Discarding many runs per system call: `process_madvise(2)` on our own process with
//! `MADV_DONTNEED` (Linux 6.13+ takes any advice for the caller itself; 6.15+ batches the TLB
//! flushes of one call). A fragmented balloon is hundreds of thousands of short runs, and one
//! `madvise` each costs a syscall and a TLB flush per run; one call per 1024 runs halves that.
//!
//! Only for private anonymous RAM (a file needs `fallocate(PUNCH_HOLE)`, which has no vector
//! form). Where the kernel refuses, the caller falls back to one discard per run.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::{GuestMemory, PageRange};

/// A guest's vectored-discard state: our pidfd, opened on first use, and whether the kernel
/// refused the vectored call once (then every later batch goes run by run).
#[derive(Debug, Default)]
pub(super) struct VectoredState {
    pidfd: OnceLock<Option<SelfMadvise>>,
    refused: AtomicBool,
}

impl VectoredState {
    /// The pidfd, unless the kernel has none or refused a vectored discard before.
    pub(super) fn get(&self) -> Option<&SelfMadvise> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.pidfd.get_or_init(SelfMadvise::open).as_ref()
    }

    /// Remembers that the kernel refused: discard run by run from now on.
    pub(super) fn refuse(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }
}

/// Runs per call: the kernel's `UIO_MAXIOV`.
pub const IOV_MAX: usize = 1024;

/// A pidfd for this process, to give `process_madvise` our own address space.
#[derive(Debug)]
pub(super) struct SelfMadvise {
    pidfd: OwnedFd,
}

impl SelfMadvise {
    /// Opens a pidfd for this process; `None` if the kernel has no `pidfd_open` (before 5.3).
    pub(super) fn open() -> Option<SelfMadvise> {
        // SAFETY: plain syscall with our own pid and no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(SelfMadvise { pidfd })
    }

    /// Discards `runs` (page runs inside `mem`, which must be private anonymous RAM) with as
    /// few calls as possible, counting them in `calls`. On an error, returns the number of
    /// leading runs already discarded, the error, and whether it was the kernel's (rather than
    /// a run outside guest RAM), so the caller can finish the rest another way.
    pub(super) fn discard(
        &self,
        mem: &GuestMemory,
        runs: &[PageRange],
        calls: &mut u64,
    ) -> Result<(), (usize, io::Error, bool)> {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(runs.len()));
        let mut done = 0usize;
        for chunk in runs.chunks(IOV_MAX) {
            iov.clear();
            let mut bytes = 0usize;
            for r in chunk {
                // Bounds-checked: a run outside guest RAM never becomes an iovec (and the runs
                // of this chunk before it are not discarded yet).
                let outside = |e: String| (done, io::Error::other(e), false);
                let (addr, len) = r.byte_span().ok_or_else(|| outside(r.to_string()))?;
                let p = mem
                    .host_ptr(addr, len)
                    .map_err(|e| outside(e.to_string()))?;
                iov.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: len as usize,
                });
                bytes += len as usize;
            }
            *calls += 1;
            // SAFETY: every iovec is a page-aligned range inside our own guest mapping, whose
            // contents DONTNEED only replaces with zero pages; the array outlives the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    self.pidfd.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len(),
                    libc::MADV_DONTNEED,
                    0,
                )
            };
            if rc < 0 {
                return Err((done, io::Error::last_os_error(), true));
            }
            if rc as usize != bytes {
                // A partial advice: report how many whole runs are known done.
                let mut left = rc as usize;
                let mut whole = 0;
                for v in &iov {
                    if left < v.iov_len {
                        break;
                    }
                    left -= v.iov_len;
                    whole += 1;
                }
                return Err((
                    done + whole,
                    io::Error::other("partial process_madvise"),
                    true,
                ));
            }
            done += chunk.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestAddress, PAGE_SIZE};

    #[test]
    fn test_vectored_discard_zeroes_exactly_the_runs() {
        let mem = GuestMemory::new(64 * PAGE_SIZE, Backing::Anonymous).unwrap();
        mem.fill(GuestAddress(0), mem.size(), 9).unwrap();
        let Some(m) = SelfMadvise::open() else {
            return;
        };
        let runs = [(1, 2), (10, 1), (63, 1)].map(|(s, l)| PageRange::new(s, l));
        let mut calls = 0;
        if m.discard(&mem, &runs, &mut calls).is_err() {
            // An older kernel refuses DONTNEED here; the device falls back.
            return;
        }
        assert_eq!(calls, 1);
        for p in 0..64u64 {
            let zero = runs.iter().any(|r| r.contains(p));
            let b = mem.read_u8(GuestAddress(p * PAGE_SIZE + 7)).unwrap();
            assert_eq!(b == 0, zero, "page {p}");
        }
        let outside = m.discard(&mem, &[runs[0], PageRange::new(64, 1)], &mut calls);
        assert!(matches!(outside, Err((0, _, false))), "{outside:?}");
    }
}
