//! The guest's RAM: one or more mmap'd regions, accessed only through bounds-checked copies and
//! atomics.
//!
//! Guest RAM is shared with a concurrently running "guest" (another thread or process), so no
//! `&[u8]` or `&T` into it ever leaves this module: reads and writes copy through raw pointers,
//! and ring fields that need ordering go through atomics built on the raw pointer.
//!
//! A vhost-user frontend hands over RAM as a table of regions (guest base, size, fd, offset),
//! possibly with holes between them; every access must lie inside one region. The region that
//! starts at guest-physical 0 is also kept as a flat (base, size) pair, so with one region the
//! lookup is the single bounds check it always was.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use super::address::{GuestAddress, PAGE_SIZE};
use super::backing::Backing;
use super::error::MemoryError;
use super::region::{os_err, Region};
use super::vectored::VectoredState;

/// Largest guest we map: 1 TiB of address space (untouched memory costs nothing).
pub const MAX_GUEST_SIZE: u64 = 1 << 40;

/// Most regions one guest may have (a vhost-user frontend sends at most a few dozen).
pub const MAX_REGIONS: usize = 64;

/// One region of a multi-region guest, as a vhost-user frontend's memory table describes it.
#[derive(Debug)]
pub struct RegionSpec {
    /// Guest-physical address of the region's first byte (page-aligned).
    pub guest_base: GuestAddress,
    /// Length in bytes (a positive multiple of 4 KiB).
    pub size: u64,
    /// The shared file behind it, or `None` for private anonymous memory.
    pub fd: Option<OwnedFd>,
    /// Where in the file the region starts (page-aligned; 0 without a file).
    pub fd_offset: u64,
}

/// A region of guest RAM as [`GuestMemory::regions`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Guest-physical address of the first byte.
    pub guest_base: GuestAddress,
    /// Length in bytes.
    pub size: u64,
    /// How it is backed.
    pub backing: Backing,
    /// The file behind it (borrowed: the `GuestMemory` owns and closes it).
    pub fd: Option<RawFd>,
    /// Where in the file the region starts.
    pub fd_offset: u64,
}

/// Guest physical RAM: one or more mappings at guest-physical bases, without overlap.
#[derive(Debug)]
pub struct GuestMemory {
    /// Host address of guest-physical 0 and how many bytes from there are one mapping: the
    /// fast path (`flat_size` is 0 if no region starts at guest-physical 0).
    flat_base: NonNull<u8>,
    flat_size: u64,
    /// One past the highest guest-physical byte.
    span: u64,
    /// Sorted by guest base, disjoint, never empty.
    regions: Vec<Region>,
    pub(super) vectored: VectoredState,
}

// SAFETY: the mappings are plain memory owned by this value until Drop; every access goes
// through raw-pointer copies or atomics, which are sound to perform from any thread.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; no method hands out references into the mappings.
unsafe impl Sync for GuestMemory {}

fn check_size(size: u64) -> Result<(), MemoryError> {
    if size == 0 || size % PAGE_SIZE != 0 || size > MAX_GUEST_SIZE {
        return Err(MemoryError::BadSize { size });
    }
    Ok(())
}

/// The size of the file behind `fd`.
fn file_size(fd: &OwnedFd) -> Result<u64, MemoryError> {
    // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os_err("fstat"));
    }
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Checks a shared file for a region of `size` bytes at `offset` and maps it.
fn map_fd(
    guest_base: u64,
    fd: OwnedFd,
    offset: u64,
    size: u64,
    require_seal: bool,
) -> Result<Region, MemoryError> {
    check_size(size)?;
    if offset
        .checked_add(size)
        .is_none_or(|end| file_size(&fd).is_ok_and(|f| f < end))
    {
        return Err(MemoryError::BadSize { size });
    }
    match super::seal::seal_shrink(&fd) {
        Err(e) if require_seal => return Err(e),
        _ => {}
    }
    let backing = super::huge::memfd_backing(&fd);
    let huge = super::huge::HUGE_PAGE_SIZE;
    if backing == Backing::Hugetlb && (size % huge != 0 || offset % huge != 0) {
        return Err(MemoryError::NotHugeAligned { size, huge });
    }
    Region::map(guest_base, size, backing, Some(fd), offset, None)
}

impl GuestMemory {
    /// Maps `size` bytes of guest RAM (a positive multiple of 4 KiB, at most [`MAX_GUEST_SIZE`]).
    ///
    /// The mapping is `MAP_NORESERVE` and left unpopulated: only pages the guest touches cost
    /// host memory. Transparent huge pages are turned off for it so that discarding a 4 KiB page
    /// returns exactly 4 KiB, as on a 4 KiB-backed VM; the huge backings (see `super::huge`)
    /// need a multiple of 2 MiB and fail with [`MemoryError::HugePagesUnavailable`] up front.
    pub fn new(size: u64, backing: Backing) -> Result<GuestMemory, MemoryError> {
        check_size(size)?;
        super::huge::check(backing, size)?;
        let fd = match backing {
            Backing::Anonymous | Backing::Thp => None,
            Backing::Hugetlb => Some(super::huge::hugetlb_memfd(size)?),
            Backing::Memfd => {
                // SAFETY: the name is a valid NUL-terminated string; flags are constants.
                let raw = unsafe {
                    libc::memfd_create(
                        c"vballoon-guest".as_ptr(),
                        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
                    )
                };
                if raw < 0 {
                    return Err(os_err("memfd_create"));
                }
                // SAFETY: `raw` is a fresh descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let len = libc::off_t::try_from(size).map_err(|_| MemoryError::BadSize { size })?;
                // SAFETY: `fd` is a valid memfd.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
                    return Err(os_err("ftruncate"));
                }
                super::seal::seal_shrink(&fd)?;
                Some(fd)
            }
        };
        Self::with_regions(vec![Region::map(0, size, backing, fd, 0, None)?])
    }

    /// Like [`GuestMemory::new`] (anonymous only), but at exactly host address `at`, for test
    /// rigs that put canary pages right next to guest RAM.
    ///
    /// Uses `MAP_FIXED_NOREPLACE`, so it fails rather than replace anything already mapped there.
    pub fn new_at(size: u64, at: usize) -> Result<GuestMemory, MemoryError> {
        check_size(size)?;
        Self::with_regions(vec![Region::map(
            0,
            size,
            Backing::Anonymous,
            None,
            0,
            Some(at),
        )?])
    }

    /// Maps an existing memfd (for example one received from another process) as guest RAM.
    ///
    /// The memfd must be at least `size` bytes long and sealable (`MFD_ALLOW_SEALING`): it is
    /// sealed against shrinking, so no holder of a descriptor can truncate it under the mapping.
    pub fn from_memfd(fd: OwnedFd, size: u64) -> Result<GuestMemory, MemoryError> {
        Self::with_regions(vec![map_fd(0, fd, 0, size, true)?])
    }

    /// Maps another process's shared RAM file (a vhost-user frontend's): sealed against
    /// shrinking where the file allows it; where it cannot be sealed (UML's plain tmp file), the
    /// frontend that owns it could truncate it under us, as it could its own guest.
    pub fn from_frontend_fd(fd: OwnedFd, size: u64) -> Result<GuestMemory, MemoryError> {
        Self::with_regions(vec![map_fd(0, fd, 0, size, false)?])
    }

    /// Maps several regions, as a vhost-user frontend's memory table gives them (`VHOST_USER_
    /// SET_MEM_TABLE`: guest base, size, fd and offset each). Files are sealed against
    /// shrinking where they allow it, as in [`GuestMemory::from_frontend_fd`].
    ///
    /// Bases and offsets must be page-aligned, sizes positive page multiples, regions must not
    /// overlap, there may be at most [`MAX_REGIONS`], and the highest byte must lie below
    /// [`MAX_GUEST_SIZE`]; otherwise [`MemoryError::BadRegion`].
    pub fn from_regions(mut specs: Vec<RegionSpec>) -> Result<GuestMemory, MemoryError> {
        if specs.is_empty() || specs.len() > MAX_REGIONS {
            return Err(MemoryError::BadRegion {
                guest_base: 0,
                size: 0,
                reason: "a guest needs between 1 and MAX_REGIONS (64) regions",
            });
        }
        specs.sort_by_key(|s| s.guest_base);
        let mut end = 0u64;
        for s in &specs {
            let bad = |reason| MemoryError::BadRegion {
                guest_base: s.guest_base.0,
                size: s.size,
                reason,
            };
            check_size(s.size).map_err(|_| bad("size is not a positive multiple of 4 KiB"))?;
            if !s.guest_base.is_aligned(PAGE_SIZE) || s.fd_offset % PAGE_SIZE != 0 {
                return Err(bad("guest base or file offset is not page-aligned"));
            }
            if s.guest_base.0 < end {
                return Err(bad("overlaps the region before it"));
            }
            end = s.guest_base.0 + s.size;
            if end > MAX_GUEST_SIZE {
                return Err(bad("ends above MAX_GUEST_SIZE (1 TiB)"));
            }
        }
        let mut regions = Vec::with_capacity(specs.len());
        for s in specs {
            regions.push(match s.fd {
                Some(fd) => map_fd(s.guest_base.0, fd, s.fd_offset, s.size, false)?,
                None => Region::map(s.guest_base.0, s.size, Backing::Anonymous, None, 0, None)?,
            });
        }
        Self::with_regions(regions)
    }

    /// Wraps mapped regions (sorted, disjoint, at least one).
    fn with_regions(regions: Vec<Region>) -> Result<GuestMemory, MemoryError> {
        let first = regions.first().ok_or(MemoryError::BadSize { size: 0 })?;
        let flat_size = if first.guest_base == 0 { first.size } else { 0 };
        let flat_base = first.host;
        let span = regions.last().map_or(0, Region::guest_end);
        Ok(GuestMemory {
            flat_base,
            flat_size,
            span,
            regions,
            vectored: VectoredState::default(),
        })
    }

    /// One past the highest guest-physical byte: the size of guest RAM when it is one region.
    pub fn size(&self) -> u64 {
        self.span
    }

    /// Number of 4 KiB guest pages below [`size`](GuestMemory::size) (holes included).
    pub fn pages(&self) -> u64 {
        self.span / PAGE_SIZE
    }

    /// How the RAM is backed (that of the first region).
    pub fn backing(&self) -> Backing {
        self.regions[0].backing
    }

    /// Whether every region is private anonymous memory.
    pub fn is_private(&self) -> bool {
        self.regions.iter().all(|r| r.backing.is_private())
    }

    /// The memfd behind the (first region's) RAM, if it is memfd-backed.
    ///
    /// Borrowed: this `GuestMemory` owns and closes it; `dup` it to keep it longer. It is
    /// sealed against shrinking, so a holder cannot truncate RAM under the mapping.
    pub fn memfd(&self) -> Option<RawFd> {
        self.regions[0].fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The regions, by ascending guest base.
    pub fn regions(&self) -> impl Iterator<Item = RegionInfo> + '_ {
        self.regions.iter().map(|r| RegionInfo {
            guest_base: GuestAddress(r.guest_base),
            size: r.size,
            backing: r.backing,
            fd: r.fd.as_ref().map(AsRawFd::as_raw_fd),
            fd_offset: r.fd_offset,
        })
    }

    /// Whether `[addr, addr + len)` lies inside one region of guest RAM.
    #[inline]
    pub fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        // The fast path, as in `host_ptr`: the device checks every buffer of every chain.
        addr.0
            .checked_add(len)
            .is_some_and(|end| end <= self.flat_size)
            || self.contains_slow(addr, len)
    }

    #[cold]
    fn contains_slow(&self, addr: GuestAddress, len: u64) -> bool {
        self.locate(addr, len).is_ok()
    }

    /// The region holding all of `[addr, addr + len)`, and the offset of `addr` in it.
    pub(super) fn locate(
        &self,
        addr: GuestAddress,
        len: u64,
    ) -> Result<(&Region, u64), MemoryError> {
        let end = addr.0.checked_add(len);
        if end.is_some_and(|e| e <= self.flat_size) {
            return Ok((&self.regions[0], addr.0));
        }
        let i = self.regions.partition_point(|r| r.guest_base <= addr.0);
        match (i.checked_sub(1).map(|i| &self.regions[i]), end) {
            (Some(r), Some(end)) if r.holds(addr.0, end) => Ok((r, addr.0 - r.guest_base)),
            (_, Some(end)) if end <= self.span => {
                Err(MemoryError::NotInOneRegion { addr: addr.0, len })
            }
            _ => Err(MemoryError::OutOfRange {
                addr: addr.0,
                len,
                size: self.span,
            }),
        }
    }

    /// A raw host pointer to `[addr, addr + len)`, bounds-checked.
    ///
    /// The pointer must only be used for copies or atomics (never turned into a reference), and
    /// not after this `GuestMemory` is dropped.
    #[inline]
    pub fn host_ptr(&self, addr: GuestAddress, len: u64) -> Result<*mut u8, MemoryError> {
        // The fast path: one bounds check against the region at guest-physical 0.
        if addr
            .0
            .checked_add(len)
            .is_some_and(|end| end <= self.flat_size)
        {
            // SAFETY: `addr + len <= flat_size`, so the result stays inside the first mapping.
            return Ok(unsafe { self.flat_base.as_ptr().add(addr.0 as usize) });
        }
        self.host_ptr_slow(addr, len)
    }

    #[cold]
    fn host_ptr_slow(&self, addr: GuestAddress, len: u64) -> Result<*mut u8, MemoryError> {
        let (r, off) = self.locate(addr, len)?;
        Ok(r.at(off))
    }

    /// Checks that `[addr, addr + len)` is whole pages inside one region; returns the region
    /// and the offset in it.
    pub(super) fn locate_pages(
        &self,
        addr: GuestAddress,
        len: u64,
    ) -> Result<(&Region, u64), MemoryError> {
        if !addr.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(MemoryError::NotPageAligned { addr: addr.0, len });
        }
        self.locate(addr, len)
    }

    /// Faults in the pages of `[addr, addr + len)` for writing without changing their contents.
    ///
    /// Uses `MADV_POPULATE_WRITE` (Linux 5.14+) and falls back to touching each page.
    pub fn populate(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let (r, off) = self.locate_pages(addr, len)?;
        if len > 0 {
            r.populate(off, len);
        }
        Ok(())
    }

    /// Residency of each page of `[addr, addr + len)` as mincore reports it (bit 0 = resident).
    ///
    /// Note that reading a never-touched anonymous page maps the shared zero page, which mincore
    /// then reports as resident.
    pub fn residency(&self, addr: GuestAddress, len: u64) -> Result<Vec<u8>, MemoryError> {
        let (r, off) = self.locate_pages(addr, len)?;
        r.residency(off, len)
    }

    /// Number of resident pages in `[addr, addr + len)`.
    pub fn resident_pages(&self, addr: GuestAddress, len: u64) -> Result<u64, MemoryError> {
        // Walk in 1 GiB slices so the mincore vector stays small for huge guests.
        const STEP: u64 = 1 << 30;
        let mut count = 0;
        let mut at = 0;
        while at < len {
            let n = STEP.min(len - at);
            let v = self.residency(GuestAddress(addr.0 + at), n)?;
            count += v.iter().filter(|b| **b & 1 != 0).count() as u64;
            at += n;
        }
        Ok(count)
    }
}
