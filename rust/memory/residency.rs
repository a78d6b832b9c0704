//! Which guest pages hold data: populated (resident or swapped out) versus never populated or
//! discarded (reads as zero).
//!
//! `mincore` answers a different question (is the page in RAM now?) and reports a swapped-out
//! page as non-resident, so it cannot tell a page of data that went to swap from a page that
//! reads as zero. Here:
//! - anonymous RAM: `/proc/self/pagemap`, one u64 per page, bit 63 "present" and bit 62
//!   "swapped" (Documentation/admin-guide/mm/pagemap.rst). Both bits are readable without any
//!   privilege (only the PFN field needs CAP_SYS_ADMIN). Read in large slices, one `pread` each.
//! - memfd RAM: `mincore` first (page-cache residency, whichever mapping or `write` filled the
//!   page), then `lseek(SEEK_DATA)`/`SEEK_HOLE` over the pages it calls non-resident only: shmem
//!   reports swapped-out pages as data and holes (never written, or punched) as holes.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

use super::address::{GuestAddress, PAGE_SIZE};
use super::error::MemoryError;
use super::pagemap_scan as scan;
use std::os::fd::AsRawFd;

use super::backing::Backing;
use super::guest::GuestMemory;

/// `/proc/self/pagemap` bit 63: the page is present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap` bit 62: the page table holds a swap-format entry.
const PM_SWAPPED: u64 = 1 << 62;
/// `/proc/self/pagemap` bit 57: the entry is userfaultfd write-protected.
const PM_UFFD_WP: u64 = 1 << 57;
/// `/proc/self/pagemap` bits 0-54: for a swap-format entry, `type | offset << 5`; zero without
/// CAP_SYS_ADMIN.
const PM_FRAME: u64 = (1 << 55) - 1;
/// The swap type of a PTE marker: the last of the 32 five-bit types (`SWP_PTE_MARKER` in
/// `linux/swap.h`; real swap devices use the lowest types, migration and device entries the
/// ones between).
const SWP_PTE_MARKER: u64 = 31;

/// Whether a pagemap entry stands for a page that holds data.
///
/// A swap-format entry is a page swapped out, under migration, or device-private, all data;
/// or a PTE marker, which is not: the kernel dirty tracker (userfaultfd write-protect with
/// `UFFD_FEATURE_WP_UNPOPULATED`) puts a write-protect marker on every never-populated page,
/// and pagemap reports it as swapped. Markers carry the uffd-wp bit; with CAP_SYS_ADMIN the
/// swap type tells them apart for certain, without it a write-protected swap entry is taken
/// as data (read, never lost).
pub(super) fn entry_populated(e: u64) -> bool {
    if e & PM_PRESENT != 0 {
        return true;
    }
    if e & PM_SWAPPED == 0 {
        return false;
    }
    if e & PM_UFFD_WP == 0 {
        return true;
    }
    let frame = e & PM_FRAME;
    frame == 0 || frame & 31 != SWP_PTE_MARKER
}
/// Pagemap entries read per `pread` (2 MiB of entries, 1 GiB of guest RAM).
const PAGEMAP_SLICE: usize = 1 << 18;

pub(super) fn os_err(op: &'static str, source: io::Error) -> MemoryError {
    MemoryError::Os { op, source }
}

impl GuestMemory {
    /// One byte per page of `[addr, addr + len)`: 1 if the page holds data the host keeps
    /// (resident or swapped out), 0 if it was never populated or was discarded, so it reads
    /// as zero without being read.
    ///
    /// Unlike [`residency`](GuestMemory::residency) (mincore), a swapped-out page counts as
    /// populated. A never-touched anonymous page that was read maps the shared zero page and
    /// counts as populated too (it then reads as zero).
    pub fn populated(&self, addr: GuestAddress, len: u64) -> Result<Vec<u8>, MemoryError> {
        let (r, off) = self.locate_pages(addr, len)?;
        if r.backing == Backing::Hugetlb {
            // Hugetlb pages are never swapped, so residency is populated-ness; hugetlbfs has no
            // real SEEK_DATA (the whole file reads as data).
            return r.residency(off, len);
        }
        match &r.fd {
            None => pagemap_populated(r.at(off) as usize, len),
            Some(fd) => {
                let mut v = r.residency(off, len)?;
                seek_data_populated(fd.as_raw_fd(), r.fd_offset + off, &mut v)?;
                Ok(v)
            }
        }
    }

    /// Whether `[addr, addr + len)`, which [`populated`](GuestMemory::populated) reported as
    /// unpopulated, really reads as zero, checked by reading it without leaving it populated:
    /// memfd RAM is read through the file (a hole reads as zero without being allocated);
    /// anonymous RAM is faulted in read-only (the shared zero page), scanned, and the zero-page
    /// mappings dropped again if it is all zero.
    ///
    /// Nothing may write the range meanwhile (verification runs with the guest paused): a write
    /// between the scan and the drop would be lost.
    pub(crate) fn unpopulated_reads_zero(
        &self,
        addr: GuestAddress,
        len: u64,
        scratch: &mut Vec<u8>,
    ) -> Result<bool, MemoryError> {
        let (r, off) = self.locate_pages(addr, len)?;
        let p = r.at(off);
        if len == 0 {
            return Ok(true);
        }
        let n = len as usize;
        if let Some(fd) = &r.fd {
            let (fd, file_off) = (fd.as_raw_fd(), r.fd_offset + off);
            scratch.resize(n.min(1 << 20), 0);
            let mut at = 0;
            while at < n {
                let m = scratch.len().min(n - at);
                pread_exact(fd, &mut scratch[..m], file_off + at as u64)?;
                // SAFETY: `scratch[..m]` is our own initialised buffer.
                if !unsafe { super::is_zero_raw(scratch.as_ptr(), m) } {
                    return Ok(false);
                }
                at += m;
            }
            return Ok(true);
        }
        // SAFETY: `p..p+n` is a page-aligned range inside our private anonymous mapping;
        // POPULATE_READ only maps pages for reading (the zero page where none is populated).
        // Failure (kernels before 5.14) just means the scan below faults page by page.
        unsafe { libc::madvise(p.cast(), n, libc::MADV_POPULATE_READ) };
        // SAFETY: `p` is valid for `n` bytes (checked by `locate_pages`); the scan only reads.
        if !unsafe { super::is_zero_raw(p, n) } {
            return Ok(false);
        }
        // SAFETY: as above; the range read as zero, so DONTNEED only drops zero-page mappings.
        if unsafe { libc::madvise(p.cast(), n, libc::MADV_DONTNEED) } != 0 {
            return Err(os_err("madvise(MADV_DONTNEED)", io::Error::last_os_error()));
        }
        Ok(true)
    }
}

/// Populated bytes for `len` bytes of anonymous memory at host address `host`.
///
/// `PAGEMAP_SCAN` (Linux 6.7) first: it reports only the populated stretches, coalesced, so an
/// idle or densely used guest costs a few regions, not one entry per page. Where it is missing,
/// or for stretches it cannot classify (a write-protected swap entry may be a uffd-wp marker),
/// the pagemap entries themselves.
fn pagemap_populated(host: usize, len: u64) -> Result<Vec<u8>, MemoryError> {
    let pages = (len / PAGE_SIZE) as usize;
    let mut out = Vec::new();
    out.try_reserve_exact(pages).map_err(|_| {
        os_err(
            "allocate a residency map",
            io::ErrorKind::OutOfMemory.into(),
        )
    })?;
    out.resize(pages, 0u8);
    if pages == 0 {
        return Ok(out);
    }
    let file =
        File::open("/proc/self/pagemap").map_err(|e| os_err("open /proc/self/pagemap", e))?;
    if !scan::populated(&file, host as u64, &mut out)? {
        read_entries(&file, host as u64, &mut out)?;
    }
    Ok(out)
}

/// Fills `out` (one byte per page from host address `host`) from the pagemap entries, read in
/// slices of [`PAGEMAP_SLICE`].
pub(super) fn read_entries(file: &File, host: u64, out: &mut [u8]) -> Result<(), MemoryError> {
    let mut raw = vec![0u8; PAGEMAP_SLICE.min(out.len()) * 8];
    let first = host / PAGE_SIZE;
    let mut done = 0;
    while done < out.len() {
        let n = PAGEMAP_SLICE.min(out.len() - done);
        let buf = &mut raw[..n * 8];
        file.read_exact_at(buf, (first + done as u64) * 8)
            .map_err(|e| os_err("read /proc/self/pagemap", e))?;
        for (o, e) in out[done..done + n].iter_mut().zip(buf.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(e);
            *o = u8::from(entry_populated(u64::from_ne_bytes(w)));
        }
        done += n;
    }
    Ok(())
}

/// Marks, in `v` (mincore bytes for pages from guest offset `base`), the non-resident pages
/// that the memfd still holds as data (swapped out): every byte becomes 1 (data) or 0 (hole).
fn seek_data_populated(fd: RawFd, base: u64, v: &mut [u8]) -> Result<(), MemoryError> {
    let end = v.len() as u64;
    // What the last lseek calls proved, in pages relative to `base`: no data in
    // [hole_from, hole_to), data in [data_from, data_to).
    let (mut hole_from, mut hole_to) = (0u64, 0u64);
    let (mut data_from, mut data_to) = (0u64, 0u64);
    let mut i = 0u64;
    while i < end {
        if v[i as usize] & 1 != 0 {
            v[i as usize] = 1;
            i += 1;
            continue;
        }
        if (data_from..data_to).contains(&i) {
            v[i as usize] = 1;
            i += 1;
            continue;
        }
        if (hole_from..hole_to).contains(&i) {
            v[i as usize] = 0;
            i += 1;
            continue;
        }
        let off = base + i * PAGE_SIZE;
        let data = seek(fd, off, libc::SEEK_DATA)?;
        hole_from = i;
        hole_to = match data {
            None => end,
            Some(d) => (d.saturating_sub(base) / PAGE_SIZE).min(end),
        };
        if hole_to > i {
            continue;
        }
        // Data at `off` itself: find where it ends.
        let hole = seek(fd, off, libc::SEEK_HOLE)?.unwrap_or(u64::MAX);
        data_from = i;
        data_to = (hole.saturating_sub(base).div_ceil(PAGE_SIZE)).clamp(i + 1, end);
    }
    Ok(())
}

/// `lseek(fd, off, whence)`; None for ENXIO (no data, or no hole, at or past `off`).
fn seek(fd: RawFd, off: u64, whence: libc::c_int) -> Result<Option<u64>, MemoryError> {
    let off = libc::off_t::try_from(off)
        .map_err(|_| os_err("lseek", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: plain lseek on the guest's memfd, open for the life of the GuestMemory.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(os_err("lseek(SEEK_DATA/SEEK_HOLE)", e));
    }
    Ok(Some(r as u64))
}

/// Fills `buf` from `fd` at `off`, retrying short reads and EINTR.
fn pread_exact(fd: RawFd, buf: &mut [u8], off: u64) -> Result<(), MemoryError> {
    let mut got = 0;
    while got < buf.len() {
        let at = libc::off_t::try_from(off + got as u64)
            .map_err(|_| os_err("pread", io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `buf[got..]` is a live, writable buffer we own; `fd` is open.
        let r = unsafe { libc::pread(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got, at) };
        if r > 0 {
            got += r as usize;
            continue;
        }
        let e = if r == 0 {
            io::Error::new(io::ErrorKind::UnexpectedEof, "memfd shorter than guest RAM")
        } else {
            io::Error::last_os_error()
        };
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(os_err("pread the guest memfd", e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;

    const MIB: u64 = 1 << 20;

    #[test]
    fn test_pagemap_entries_are_classified() {
        assert!(!entry_populated(0));
        assert!(entry_populated(PM_PRESENT | 0x1234));
        assert!(entry_populated(PM_PRESENT | PM_UFFD_WP));
        // Swapped out to device 0, slot 7, with and without write protection.
        assert!(entry_populated(PM_SWAPPED | (7 << 5)));
        assert!(entry_populated(PM_SWAPPED | PM_UFFD_WP | (7 << 5)));
        // Swapped, as an unprivileged reader sees it.
        assert!(entry_populated(PM_SWAPPED));
        // A uffd-wp marker: privileged, and unprivileged (ambiguous, so read).
        assert!(!entry_populated(
            PM_SWAPPED | PM_UFFD_WP | (1 << 5) | SWP_PTE_MARKER
        ));
        assert!(entry_populated(PM_SWAPPED | PM_UFFD_WP));
    }

    #[test]
    fn test_populated_follows_writes_and_discards() {
        for backing in [Backing::Anonymous, Backing::Memfd] {
            let mem = GuestMemory::new(4 * MIB, backing).unwrap();
            assert!(mem
                .populated(GuestAddress(0), 4 * MIB)
                .unwrap()
                .iter()
                .all(|&b| b == 0));
            mem.fill(GuestAddress(MIB), MIB, 7).unwrap();
            mem.write_u8(GuestAddress(3 * MIB), 1).unwrap();
            mem.discard(GuestAddress(MIB + 8 * PAGE_SIZE), 4 * PAGE_SIZE)
                .unwrap();
            let v = mem.populated(GuestAddress(0), 4 * MIB).unwrap();
            let page = |a: u64| v[(a / PAGE_SIZE) as usize];
            assert_eq!(page(0), 0, "{backing:?}");
            assert_eq!(page(MIB), 1, "{backing:?}");
            assert_eq!(page(MIB + 8 * PAGE_SIZE), 0, "{backing:?}");
            assert_eq!(page(MIB + 12 * PAGE_SIZE), 1, "{backing:?}");
            assert_eq!(page(3 * MIB), 1, "{backing:?}");
            assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 256 - 4 + 1);
            // A sub-range starting mid-guest gives the same answers.
            let w = mem.populated(GuestAddress(MIB), MIB).unwrap();
            assert_eq!(&w[..], &v[256..512]);
        }
    }

    #[test]
    fn test_memfd_data_written_through_the_file_counts_as_populated() {
        let mem = GuestMemory::new(2 * MIB, Backing::Memfd).unwrap();
        let fd = mem.memfd().unwrap();
        // SAFETY: writes one page of our own buffer into the memfd `mem` owns.
        let rc = unsafe { libc::pwrite(fd, [9u8; 4096].as_ptr().cast(), 4096, 0x10000) };
        assert_eq!(rc, 4096);
        let v = mem.populated(GuestAddress(0), 2 * MIB).unwrap();
        assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 1);
        assert_eq!(v[0x10], 1);
    }

    #[test]
    fn test_unpopulated_reads_zero_leaves_nothing_populated() {
        let mut scratch = Vec::new();
        for backing in [Backing::Anonymous, Backing::Memfd] {
            let mem = GuestMemory::new(4 * MIB, backing).unwrap();
            assert!(mem
                .unpopulated_reads_zero(GuestAddress(0), 4 * MIB, &mut scratch)
                .unwrap());
            let v = mem.populated(GuestAddress(0), 4 * MIB).unwrap();
            assert!(v.iter().all(|&b| b == 0), "{backing:?}");
            mem.write_u8(GuestAddress(MIB + 5), 1).unwrap();
            assert!(!mem
                .unpopulated_reads_zero(GuestAddress(MIB), MIB, &mut scratch)
                .unwrap());
            // The data is still there.
            assert_eq!(
                mem.read_u8(GuestAddress(MIB + 5)).unwrap(),
                1,
                "{backing:?}"
            );
        }
    }

    #[test]
    fn test_memfd_is_sealed_against_shrinking() {
        let mem = GuestMemory::new(2 * MIB, Backing::Memfd).unwrap();
        mem.write_u8(GuestAddress(2 * MIB - 1), 3).unwrap();
        // SAFETY: ftruncate on the memfd `mem` owns; the seal must refuse it.
        let rc = unsafe { libc::ftruncate(mem.memfd().unwrap(), 0) };
        assert_eq!(rc, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        assert_eq!(mem.read_u8(GuestAddress(2 * MIB - 1)).unwrap(), 3);
    }
}
