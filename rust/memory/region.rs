//! One mapping of guest RAM: a contiguous host mapping behind a contiguous guest-physical range,
//! with its backing (anonymous, or a file at an offset) and the page operations on it.
//!
//! [`GuestMemory`](super::GuestMemory) holds one or more of these; every offset passed here has
//! already been checked against the region's size by the caller.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, Ordering};

use super::address::PAGE_SIZE;
use super::backing::Backing;
use super::error::MemoryError;

pub(super) fn os_err(op: &'static str) -> MemoryError {
    MemoryError::Os {
        op,
        source: io::Error::last_os_error(),
    }
}

/// One mmap'd region of guest RAM.
#[derive(Debug)]
pub(super) struct Region {
    /// Guest-physical address of the first byte.
    pub(super) guest_base: u64,
    /// Length in bytes (a page multiple, at most [`super::MAX_GUEST_SIZE`]).
    pub(super) size: u64,
    /// Host address of the first byte.
    pub(super) host: NonNull<u8>,
    pub(super) backing: Backing,
    /// The file behind a shared region, and where in it the region starts.
    pub(super) fd: Option<OwnedFd>,
    pub(super) fd_offset: u64,
}

impl Region {
    /// Maps `size` bytes of `fd` from `fd_offset` (or private anonymous memory when `fd` is
    /// `None`), at host address `at` if given, as the guest-physical range from `guest_base`.
    pub(super) fn map(
        guest_base: u64,
        size: u64,
        backing: Backing,
        fd: Option<OwnedFd>,
        fd_offset: u64,
        at: Option<usize>,
    ) -> Result<Region, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize { size })?;
        let off = libc::off_t::try_from(fd_offset).map_err(|_| MemoryError::BadSize { size })?;
        let (mut flags, raw_fd) = match &fd {
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
            // Hugetlb reserves its pages at map time, so a guest touch can never SIGBUS.
            Some(fd) if backing == Backing::Hugetlb => (libc::MAP_SHARED, fd.as_raw_fd()),
            Some(fd) => (libc::MAP_SHARED | libc::MAP_NORESERVE, fd.as_raw_fd()),
        };
        if at.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE;
        }
        let hint = at.map_or(ptr::null_mut(), |a| a as *mut libc::c_void);
        let p = if backing == Backing::Thp {
            super::huge::map_aligned_anonymous(len)?
        } else {
            // SAFETY: a fresh mapping at a kernel-chosen address, or at `hint` with
            // MAP_FIXED_NOREPLACE, which fails instead of replacing anything: no existing memory
            // is affected; the result is checked against MAP_FAILED.
            unsafe {
                libc::mmap(
                    hint,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    raw_fd,
                    off,
                )
            }
        };
        if p == libc::MAP_FAILED && backing == Backing::Hugetlb {
            // The pool shrank between the check and the map (its reservation failed).
            return Err(super::huge::map_refused(io::Error::last_os_error()));
        }
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        if at.is_some_and(|a| a != p as usize) {
            // Kernels before 4.17 treat NOREPLACE as a hint: give back a misplaced mapping.
            // SAFETY: `p` is the mapping just made, of `len` bytes.
            unsafe { libc::munmap(p, len) };
            return Err(MemoryError::Os {
                op: "mmap(MAP_FIXED_NOREPLACE)",
                source: io::Error::from(io::ErrorKind::AddrInUse),
            });
        }
        if let Err(e) = super::huge::advise(p, len, backing) {
            // SAFETY: `p` is the mapping just made, of `len` bytes.
            unsafe { libc::munmap(p, len) };
            return Err(e);
        }
        let host = NonNull::new(p.cast::<u8>()).ok_or_else(|| os_err("mmap"))?;
        Ok(Region {
            guest_base,
            size,
            host,
            backing,
            fd,
            fd_offset,
        })
    }

    /// One past the last guest-physical byte.
    pub(super) fn guest_end(&self) -> u64 {
        self.guest_base + self.size
    }

    /// Whether guest-physical `[addr, end)` lies inside this region.
    pub(super) fn holds(&self, addr: u64, end: u64) -> bool {
        addr >= self.guest_base && end <= self.guest_end()
    }

    /// The host address `off` bytes into the region; only dereferenced by callers that checked
    /// `off` (plus their length) against `size`.
    pub(super) fn at(&self, off: u64) -> *mut u8 {
        self.host.as_ptr().wrapping_add(off as usize)
    }

    /// Gives `[off, off + len)` (page-aligned, in range) back to the host; it reads back as
    /// zero. Private RAM: `MADV_DONTNEED`; a file: `fallocate(PUNCH_HOLE | KEEP_SIZE)`, which
    /// every mapping of it sees at once, or `MADV_REMOVE` where the file system has no
    /// hole punching.
    pub(super) fn discard(&self, off: u64, len: u64) -> Result<(), MemoryError> {
        let Some(fd) = &self.fd else {
            // SAFETY: the range is page-aligned and inside our private anonymous mapping;
            // DONTNEED there only replaces contents with zero pages.
            let rc =
                unsafe { libc::madvise(self.at(off).cast(), len as usize, libc::MADV_DONTNEED) };
            if rc != 0 {
                return Err(os_err("madvise(MADV_DONTNEED)"));
            }
            return Ok(());
        };
        // The file offset fits: `fd_offset + size` was checked against the file's size.
        let at = (self.fd_offset + off) as libc::off_t;
        // SAFETY: plain syscall on our own descriptor with an in-range, page-aligned extent.
        let rc = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(os_err("fallocate(PUNCH_HOLE)"));
        }
        // SAFETY: the range is page-aligned and inside our shared mapping of the file; REMOVE
        // frees its backing store, after which it reads as zero.
        let rc = unsafe { libc::madvise(self.at(off).cast(), len as usize, libc::MADV_REMOVE) };
        if rc != 0 {
            return Err(os_err("madvise(MADV_REMOVE)"));
        }
        Ok(())
    }

    /// Faults in `[off, off + len)` (page-aligned, in range, non-empty) for writing without
    /// changing its contents: `MADV_POPULATE_WRITE` (Linux 5.14+), else a touch per page.
    pub(super) fn populate(&self, off: u64, len: u64) {
        let p = self.at(off);
        // SAFETY: the range is page-aligned and inside our mapping; POPULATE_WRITE only faults
        // pages in.
        if unsafe { libc::madvise(p.cast(), len as usize, libc::MADV_POPULATE_WRITE) } == 0 {
            return;
        }
        for page in (0..len).step_by(PAGE_SIZE as usize) {
            // SAFETY: in bounds; an atomic `fetch_or(0)` is a write access that keeps the byte.
            unsafe { AtomicU8::from_ptr(p.add(page as usize)) }.fetch_or(0, Ordering::Relaxed);
        }
    }

    /// mincore's residency byte for each page of `[off, off + len)` (page-aligned, in range).
    pub(super) fn residency(&self, off: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        let mut vec = vec![0u8; (len / PAGE_SIZE) as usize];
        if len == 0 {
            return Ok(vec);
        }
        // SAFETY: the range is inside our mapping and `vec` has one byte per page.
        let rc = unsafe { libc::mincore(self.at(off).cast(), len as usize, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(os_err("mincore"));
        }
        Ok(vec)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the mapping, made with exactly this base and length.
        unsafe { libc::munmap(self.host.as_ptr().cast(), self.size as usize) };
    }
}
