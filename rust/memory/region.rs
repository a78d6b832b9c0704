//! The guest's RAM: one mmap'd region, accessed only through bounds-checked copies and atomics.
//!
//! Guest RAM is shared with a concurrently running "guest" (another thread or process), so no
//! `&[u8]` or `&T` into it ever leaves this module: reads and writes copy through raw pointers,
//! and ring fields that need ordering go through atomics built on the raw pointer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::address::{GuestAddress, PAGE_SIZE};
use super::error::MemoryError;

/// Where the guest's RAM lives on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`: discard with `MADV_DONTNEED`.
    Anonymous,
    /// A memfd mapped `MAP_SHARED`, so a second process can map the same RAM: discard with
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    Memfd,
    /// Like `Anonymous`, aligned to 2 MiB with `MADV_HUGEPAGE`: transparent huge pages.
    Thp,
    /// A hugetlbfs memfd of 2 MiB pages (`MFD_HUGETLB | MFD_HUGE_2MB`), mapped shared: discard
    /// punches whole 2 MiB holes. Needs reserved pages (`/proc/sys/vm/nr_hugepages`).
    Hugetlb,
}

impl Backing {
    /// Parses `"anonymous"`/`"anon"`, `"memfd"`, `"thp"` or `"hugetlb"`.
    pub fn parse(s: &str) -> Option<Backing> {
        match s {
            "anonymous" | "anon" | "private" => Some(Backing::Anonymous),
            "memfd" | "shared" => Some(Backing::Memfd),
            "thp" | "transparent-huge" => Some(Backing::Thp),
            "hugetlb" | "hugetlbfs" => Some(Backing::Hugetlb),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anonymous => "anonymous",
            Backing::Memfd => "memfd",
            Backing::Thp => "thp",
            Backing::Hugetlb => "hugetlb",
        }
    }
}

/// Largest guest we map: 1 TiB of address space (untouched memory costs nothing).
pub const MAX_GUEST_SIZE: u64 = 1 << 40;

/// One contiguous mapping that is the guest's physical RAM, guest-physical address 0 at its start.
#[derive(Debug)]
pub struct GuestMemory {
    base: NonNull<u8>,
    size: u64,
    backing: Backing,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory owned by this value until Drop; every access goes through
// raw-pointer copies or atomics, which are sound to perform from any thread.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for GuestMemory {}

fn os_err(op: &'static str) -> MemoryError {
    MemoryError::Os {
        op,
        source: io::Error::last_os_error(),
    }
}

impl GuestMemory {
    /// Maps `size` bytes of guest RAM (a positive multiple of 4 KiB, at most [`MAX_GUEST_SIZE`]).
    ///
    /// The mapping is `MAP_NORESERVE` and left unpopulated: only pages the guest touches cost
    /// host memory. Transparent huge pages are turned off for it so that discarding a 4 KiB page
    /// returns exactly 4 KiB, as on a 4 KiB-backed VM; the huge backings (see `super::huge`)
    /// need a multiple of 2 MiB and fail with [`MemoryError::HugePagesUnavailable`] up front.
    pub fn new(size: u64, backing: Backing) -> Result<GuestMemory, MemoryError> {
        Self::check_size(size)?;
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
        Self::map(size, backing, fd, None)
    }

    /// Like [`GuestMemory::new`] (anonymous only), but at exactly host address `at`, for test
    /// rigs that put canary pages right next to guest RAM.
    ///
    /// Uses `MAP_FIXED_NOREPLACE`, so it fails rather than replace anything already mapped there.
    pub fn new_at(size: u64, at: usize) -> Result<GuestMemory, MemoryError> {
        Self::check_size(size)?;
        Self::map(size, Backing::Anonymous, None, Some(at))
    }

    /// Maps an existing memfd (for example one received from another process) as guest RAM.
    ///
    /// The memfd must be at least `size` bytes long and sealable (`MFD_ALLOW_SEALING`): it is
    /// sealed against shrinking, so no holder of a descriptor can truncate it under the mapping.
    pub fn from_memfd(fd: OwnedFd, size: u64) -> Result<GuestMemory, MemoryError> {
        Self::from_fd(fd, size, true)
    }

    /// Maps another process's shared RAM file (a vhost-user frontend's): sealed against
    /// shrinking where the file allows it; where it cannot be sealed (UML's plain tmp file), the
    /// frontend that owns it could truncate it under us, as it could its own guest.
    pub fn from_frontend_fd(fd: OwnedFd, size: u64) -> Result<GuestMemory, MemoryError> {
        Self::from_fd(fd, size, false)
    }

    fn from_fd(fd: OwnedFd, size: u64, require_seal: bool) -> Result<GuestMemory, MemoryError> {
        Self::check_size(size)?;
        // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is a valid descriptor and `st` a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os_err("fstat"));
        }
        if u64::try_from(st.st_size).unwrap_or(0) < size {
            return Err(MemoryError::BadSize { size });
        }
        match super::seal::seal_shrink(&fd) {
            Err(e) if require_seal => return Err(e),
            _ => {}
        }
        let backing = super::huge::memfd_backing(&fd);
        if backing == Backing::Hugetlb && size % super::huge::HUGE_PAGE_SIZE != 0 {
            let huge = super::huge::HUGE_PAGE_SIZE;
            return Err(MemoryError::NotHugeAligned { size, huge });
        }
        Self::map(size, backing, Some(fd), None)
    }

    fn check_size(size: u64) -> Result<(), MemoryError> {
        if size == 0 || size % PAGE_SIZE != 0 || size > MAX_GUEST_SIZE {
            return Err(MemoryError::BadSize { size });
        }
        Ok(())
    }

    fn map(
        size: u64,
        backing: Backing,
        fd: Option<OwnedFd>,
        at: Option<usize>,
    ) -> Result<GuestMemory, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize { size })?;
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
                    0,
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
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| os_err("mmap"))?;
        Ok(GuestMemory {
            base,
            size,
            backing,
            fd,
        })
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of 4 KiB guest pages.
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// How the RAM is backed.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The memfd behind the RAM, if it is memfd-backed.
    ///
    /// Borrowed: this `GuestMemory` owns and closes it; `dup` it to keep it longer. It is
    /// sealed against shrinking, so a holder cannot truncate RAM under the mapping.
    pub fn memfd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether `[addr, addr + len)` lies inside guest RAM.
    pub fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        addr.0.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Checks `[addr, addr + len)` and returns its host offset.
    fn offset(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        if !self.contains(addr, len) {
            return Err(MemoryError::OutOfRange {
                addr: addr.0,
                len,
                size: self.size,
            });
        }
        // In range of a mapping we made from a usize length, so it fits.
        Ok(addr.0 as usize)
    }

    /// A raw host pointer to `[addr, addr + len)`, bounds-checked.
    ///
    /// The pointer must only be used for copies or atomics (never turned into a reference), and
    /// not after this `GuestMemory` is dropped.
    pub fn host_ptr(&self, addr: GuestAddress, len: u64) -> Result<*mut u8, MemoryError> {
        let off = self.offset(addr, len)?;
        // SAFETY: `off + len <= size`, so the result stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(off) })
    }

    fn aligned_ptr(&self, addr: GuestAddress, width: u64) -> Result<*mut u8, MemoryError> {
        if !addr.is_aligned(width) {
            return Err(MemoryError::Misaligned {
                addr: addr.0,
                align: width,
            });
        }
        self.host_ptr(addr, width)
    }

    /// Copies guest RAM at `addr` into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.host_ptr(addr, buf.len() as u64)?;
        // SAFETY: `src` is valid for `buf.len()` bytes (checked above) and cannot overlap a Rust
        // slice the caller owns, because no slice into the mapping is ever created.
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into guest RAM at `addr`.
    pub fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let dst = self.host_ptr(addr, buf.len() as u64)?;
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `addr` to `byte`.
    pub fn fill(&self, addr: GuestAddress, len: u64, byte: u8) -> Result<(), MemoryError> {
        let dst = self.host_ptr(addr, len)?;
        // SAFETY: `dst` is valid for `len` bytes (checked above); `len` fits usize because the
        // whole mapping does.
        unsafe { ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    /// Reads a little-endian u8 at `addr`.
    pub fn read_u8(&self, addr: GuestAddress) -> Result<u8, MemoryError> {
        let p = self.host_ptr(addr, 1)?;
        // SAFETY: `p` is in bounds; AtomicU8 has no alignment requirement.
        Ok(unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Relaxed))
    }

    /// Reads a little-endian u16 at `addr` (any alignment).
    pub fn read_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian u32 at `addr` (any alignment).
    pub fn read_u32(&self, addr: GuestAddress) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64 at `addr` (any alignment).
    pub fn read_u64(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u8 at `addr`.
    pub fn write_u8(&self, addr: GuestAddress, v: u8) -> Result<(), MemoryError> {
        self.write(addr, &[v])
    }

    /// Writes a little-endian u16 at `addr` (any alignment).
    pub fn write_u16(&self, addr: GuestAddress, v: u16) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a little-endian u32 at `addr` (any alignment).
    pub fn write_u32(&self, addr: GuestAddress, v: u32) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a little-endian u64 at `addr` (any alignment).
    pub fn write_u64(&self, addr: GuestAddress, v: u64) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Atomically loads the naturally aligned little-endian u16 at `addr` with `order`.
    ///
    /// Ring indexes shared with the other side use this, so that the ordering the virtio spec
    /// asks for (§2.7.13) is expressed with real acquire/release operations.
    pub fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Result<u16, MemoryError> {
        let p = self.aligned_ptr(addr, 2)?;
        // SAFETY: `p` is in bounds and 2-byte aligned; the mapping outlives this call.
        Ok(u16::from_le(
            unsafe { AtomicU16::from_ptr(p.cast()) }.load(order),
        ))
    }

    /// Atomically stores a naturally aligned little-endian u16 at `addr` with `order`.
    pub fn store_u16(
        &self,
        addr: GuestAddress,
        v: u16,
        order: Ordering,
    ) -> Result<(), MemoryError> {
        let p = self.aligned_ptr(addr, 2)?;
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p.cast()) }.store(v.to_le(), order);
        Ok(())
    }

    /// Atomically loads the naturally aligned little-endian u32 at `addr` with `order`.
    pub fn load_u32(&self, addr: GuestAddress, order: Ordering) -> Result<u32, MemoryError> {
        let p = self.aligned_ptr(addr, 4)?;
        // SAFETY: `p` is in bounds and 4-byte aligned.
        Ok(u32::from_le(
            unsafe { AtomicU32::from_ptr(p.cast()) }.load(order),
        ))
    }

    /// Atomically stores a naturally aligned little-endian u32 at `addr` with `order`.
    pub fn store_u32(
        &self,
        addr: GuestAddress,
        v: u32,
        order: Ordering,
    ) -> Result<(), MemoryError> {
        let p = self.aligned_ptr(addr, 4)?;
        // SAFETY: `p` is in bounds and 4-byte aligned.
        unsafe { AtomicU32::from_ptr(p.cast()) }.store(v.to_le(), order);
        Ok(())
    }

    /// Atomically loads the naturally aligned little-endian u64 at `addr` with `order`.
    pub fn load_u64(&self, addr: GuestAddress, order: Ordering) -> Result<u64, MemoryError> {
        let p = self.aligned_ptr(addr, 8)?;
        // SAFETY: `p` is in bounds and 8-byte aligned.
        Ok(u64::from_le(
            unsafe { AtomicU64::from_ptr(p.cast()) }.load(order),
        ))
    }

    fn check_pages(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        if !addr.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(MemoryError::NotPageAligned { addr: addr.0, len });
        }
        self.offset(addr, len)
    }

    /// Gives the pages in `[addr, addr + len)` back to the host; they read back as zero.
    ///
    /// Anonymous RAM uses `MADV_DONTNEED`; memfd RAM punches a hole in the file
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), which every mapping of it sees at once.
    pub fn discard(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let off = self.check_pages(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        match &self.fd {
            None => {
                // SAFETY: the range is page-aligned and inside our private anonymous mapping;
                // DONTNEED there only replaces contents with zero pages.
                let rc = unsafe {
                    libc::madvise(
                        self.base.as_ptr().add(off).cast(),
                        len as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                if rc != 0 {
                    return Err(os_err("madvise(MADV_DONTNEED)"));
                }
            }
            Some(fd) => {
                // SAFETY: plain syscall on our own memfd with an in-range, page-aligned extent.
                let rc = unsafe {
                    libc::fallocate(
                        fd.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if rc != 0 {
                    return Err(os_err("fallocate(PUNCH_HOLE)"));
                }
            }
        }
        Ok(())
    }

    /// Faults in the pages of `[addr, addr + len)` for writing without changing their contents.
    ///
    /// Uses `MADV_POPULATE_WRITE` (Linux 5.14+) and falls back to touching each page.
    pub fn populate(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let off = self.check_pages(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range is page-aligned and inside our mapping.
        let p = unsafe { self.base.as_ptr().add(off) };
        // SAFETY: as above; POPULATE_WRITE only faults pages in.
        if unsafe { libc::madvise(p.cast(), len as usize, libc::MADV_POPULATE_WRITE) } == 0 {
            return Ok(());
        }
        for page in (0..len).step_by(PAGE_SIZE as usize) {
            // SAFETY: in bounds; an atomic `fetch_or(0)` is a write access that keeps the byte.
            unsafe { AtomicU8::from_ptr(p.add(page as usize)) }.fetch_or(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Residency of each page of `[addr, addr + len)` as mincore reports it (bit 0 = resident).
    ///
    /// Note that reading a never-touched anonymous page maps the shared zero page, which mincore
    /// then reports as resident.
    pub fn residency(&self, addr: GuestAddress, len: u64) -> Result<Vec<u8>, MemoryError> {
        let off = self.check_pages(addr, len)?;
        let mut vec = vec![0u8; (len / PAGE_SIZE) as usize];
        if len == 0 {
            return Ok(vec);
        }
        // SAFETY: the range is inside our mapping and `vec` has one byte per page.
        let rc = unsafe {
            libc::mincore(
                self.base.as_ptr().add(off).cast(),
                len as usize,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(os_err("mincore"));
        }
        Ok(vec)
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

    /// Whether every byte of `[addr, addr + len)` is zero.
    pub fn is_zero(&self, addr: GuestAddress, len: u64) -> Result<bool, MemoryError> {
        let p = self.host_ptr(addr, len)?;
        // SAFETY: `p` is valid for `len` bytes; `is_zero_raw` only reads.
        Ok(unsafe { is_zero_raw(p, len as usize) })
    }
}

/// Whether `len` bytes at `p` are all zero, read in 64-byte blocks.
///
/// # Safety
/// `p` must be valid for reads of `len` bytes for the duration of the call.
pub unsafe fn is_zero_raw(p: *const u8, len: usize) -> bool {
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`, so the 8 unaligned u64 reads are in bounds (caller's contract).
        let acc = unsafe {
            let q = p.add(i).cast::<u64>();
            q.read_unaligned()
                | q.add(1).read_unaligned()
                | q.add(2).read_unaligned()
                | q.add(3).read_unaligned()
                | q.add(4).read_unaligned()
                | q.add(5).read_unaligned()
                | q.add(6).read_unaligned()
                | q.add(7).read_unaligned()
        };
        if acc != 0 {
            return false;
        }
        i += 64;
    }
    // SAFETY: `i < len` here, in bounds by the caller's contract.
    (i..len).all(|j| unsafe { p.add(j).read() } == 0)
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: we own the mapping, made with exactly this base and length.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size as usize) };
    }
}
