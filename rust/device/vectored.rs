//! Discarding many runs per system call: `process_madvise(2)` on our own process with
//! `MADV_DONTNEED` (Linux 6.13+ takes any advice for the caller itself; 6.15+ batches the TLB
//! flushes of one call). A fragmented balloon is hundreds of thousands of short runs, and one
//! `madvise` each costs a syscall and a TLB flush per run; one call per 1024 runs halves that.
//!
//! Only for anonymous RAM (memfd RAM needs `fallocate(PUNCH_HOLE)`, which has no vector form).
//! Where the kernel refuses, the caller falls back to one discard per run.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::memory::{GuestMemory, Pfn, PAGE_SIZE};

/// Runs per call: the kernel's `UIO_MAXIOV`.
pub const IOV_MAX: usize = 1024;

/// A pidfd for this process, to give `process_madvise` our own address space.
#[derive(Debug)]
pub struct SelfMadvise {
    pidfd: OwnedFd,
}

impl SelfMadvise {
    /// Opens a pidfd for this process; `None` if the kernel has no `pidfd_open` (before 5.3).
    pub fn open() -> Option<SelfMadvise> {
        // SAFETY: plain syscall with our own pid and no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(SelfMadvise { pidfd })
    }

    /// Discards `runs` (page runs inside `mem`, which must be anonymous RAM) with as few calls
    /// as possible; returns the calls made. On a kernel error, returns it with the number of
    /// leading runs already discarded, so the caller can finish the rest another way.
    pub fn discard(
        &self,
        mem: &GuestMemory,
        runs: &[(u64, u64)],
        calls: &mut u64,
    ) -> Result<(), (usize, io::Error)> {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(runs.len()));
        let mut done = 0usize;
        for chunk in runs.chunks(IOV_MAX) {
            iov.clear();
            let mut bytes = 0usize;
            for &(start, len) in chunk {
                // Bounds-checked: a run outside guest RAM never becomes an iovec.
                let p = mem
                    .host_ptr(Pfn(start).addr(), len * PAGE_SIZE)
                    .map_err(|e| (done, io::Error::other(e.to_string())))?;
                iov.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: (len * PAGE_SIZE) as usize,
                });
                bytes += (len * PAGE_SIZE) as usize;
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
                return Err((done, io::Error::last_os_error()));
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
                return Err((done + whole, io::Error::other("partial process_madvise")));
            }
            done += chunk.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestAddress};

    #[test]
    fn test_vectored_discard_zeroes_exactly_the_runs() {
        let mem = GuestMemory::new(64 * PAGE_SIZE, Backing::Anonymous).unwrap();
        mem.fill(GuestAddress(0), mem.size(), 9).unwrap();
        let Some(m) = SelfMadvise::open() else {
            return;
        };
        let runs = [(1, 2), (10, 1), (63, 1)];
        let mut calls = 0;
        if m.discard(&mem, &runs, &mut calls).is_err() {
            // An older kernel refuses DONTNEED here; the device falls back.
            return;
        }
        assert_eq!(calls, 1);
        for p in 0..64u64 {
            let zero = runs.iter().any(|&(s, l)| p >= s && p < s + l);
            let b = mem.read_u8(GuestAddress(p * PAGE_SIZE + 7)).unwrap();
            assert_eq!(b == 0, zero, "page {p}");
        }
        assert!(m.discard(&mem, &[(64, 1)], &mut calls).is_err());
    }
}
