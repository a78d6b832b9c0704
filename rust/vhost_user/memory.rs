//! The frontend's guest RAM, from SET_MEM_TABLE: its regions, the translation of ring addresses
//! from the frontend's userspace address space, and one [`GuestMemory`] the device works on.
//!
//! A frontend whose regions all come from one file with file offset == guest-physical address
//! (User-Mode Linux: its physmem file; QEMU with one memfd region at 0) is mapped whole, shared,
//! from offset 0, as one flat region: the device's lookups stay as fast as for its own RAM.
//! Any other layout (several files, or file offsets that differ from guest addresses: QEMU's
//! RAM below and above 4 GiB) becomes one [`GuestMemory`] region per table entry
//! ([`GuestMemory::from_regions`]), each mapped from its own fd at its own offset. Either way a
//! discard punches a hole at the right file offset (`fallocate(PUNCH_HOLE)`; `MADV_DONTNEED`
//! frees nothing on shared files).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;

use super::error::VhostUserError;
use crate::memory::{GuestAddress, GuestMemory, RegionSpec, MAX_GUEST_SIZE, PAGE_SIZE};

/// Most regions we take in one table (virtio_uml sends one or two; QEMU up to 8).
pub const MAX_REGIONS: usize = 8;

/// One region as the frontend described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address of its first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the frontend maps it (ring addresses are in this space).
    pub user_addr: u64,
    /// Offset of its first byte in the file.
    pub mmap_offset: u64,
}

/// The frontend's memory as mapped here.
#[derive(Debug)]
pub struct FrontendMemory {
    regions: Vec<Region>,
    guest: Arc<GuestMemory>,
    /// Each distinct file behind the regions, once (for [`FrontendMemory::backed_bytes`]).
    files: Vec<OwnedFd>,
    ram_bytes: u64,
}

fn bad(reason: String) -> VhostUserError {
    VhostUserError::MemoryTable { reason }
}

fn file_id(f: &File) -> Result<(u64, u64, i64, u32), VhostUserError> {
    // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0 {
        return Err(VhostUserError::os("fstat(region fd)"));
    }
    Ok((st.st_dev, st.st_ino, st.st_size, st.st_mode))
}

impl FrontendMemory {
    /// Checks and maps a memory table (vhost-user SET_MEM_TABLE): every field is the frontend's
    /// word and is checked before use.
    pub fn new(table: &[VhostUserMemoryRegion], files: Vec<File>) -> Result<Self, VhostUserError> {
        if table.is_empty() || table.len() > MAX_REGIONS {
            return Err(bad(format!(
                "{} regions (1..={MAX_REGIONS} taken)",
                table.len()
            )));
        }
        if files.len() != table.len() {
            return Err(bad(format!(
                "{} regions but {} fds",
                table.len(),
                files.len()
            )));
        }
        let mut regions = Vec::with_capacity(table.len());
        let mut span = 0u64;
        let mut ram_bytes = 0u64;
        // Each distinct file by (device, inode), with the first region that uses it.
        let mut distinct: Vec<((u64, u64), usize)> = Vec::new();
        for (i, (r, f)) in table.iter().zip(&files).enumerate() {
            let reg = Region {
                guest_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            };
            let aligned = [reg.guest_addr, reg.size, reg.mmap_offset]
                .iter()
                .all(|v| v % PAGE_SIZE == 0);
            let end = reg.guest_addr.checked_add(reg.size);
            let uend = reg.user_addr.checked_add(reg.size);
            match (aligned, end, uend) {
                (true, Some(end), Some(_)) if reg.size > 0 && end <= MAX_GUEST_SIZE => {
                    span = span.max(end)
                }
                _ => {
                    return Err(bad(format!(
                        "region {i}: guest {:#x} size {:#x} offset {:#x} user {:#x} is empty, \
                     unaligned, overflowing or past {MAX_GUEST_SIZE:#x}",
                        reg.guest_addr, reg.size, reg.mmap_offset, reg.user_addr
                    )))
                }
            }
            let id = file_id(f)?;
            if id.3 & libc::S_IFMT != libc::S_IFREG {
                return Err(bad(format!(
                    "region {i}: fd is not a regular file or memfd"
                )));
            }
            let file_end = reg.mmap_offset.checked_add(reg.size);
            if file_end.is_none_or(|e| u64::try_from(id.2).unwrap_or(0) < e) {
                return Err(bad(format!(
                    "region {i}: file of {:#x} bytes is shorter than offset {:#x} + size {:#x}",
                    id.2, reg.mmap_offset, reg.size
                )));
            }
            if !distinct.iter().any(|&(d, _)| d == (id.0, id.1)) {
                distinct.push(((id.0, id.1), i));
            }
            for (j, o) in regions.iter().enumerate() {
                let o: &Region = o;
                let gap = |a: u64, b: u64| a + reg.size <= b || b + o.size <= a;
                if !gap(reg.guest_addr, o.guest_addr) || !gap(reg.user_addr, o.user_addr) {
                    return Err(bad(format!("regions {j} and {i} overlap")));
                }
            }
            ram_bytes += reg.size;
            regions.push(reg);
        }
        let dup = |f: &File| -> Result<OwnedFd, VhostUserError> {
            f.try_clone()
                .map(OwnedFd::from)
                .map_err(|source| VhostUserError::Os { op: "dup", source })
        };
        let flat = distinct.len() == 1 && regions.iter().all(|r| r.mmap_offset == r.guest_addr);
        let guest = if flat {
            // One file laid out by guest address: one flat mapping of [0, span).
            GuestMemory::from_frontend_fd(dup(&files[0])?, span)?
        } else {
            let specs = regions
                .iter()
                .zip(&files)
                .map(|(r, f)| {
                    Ok(RegionSpec {
                        guest_base: GuestAddress(r.guest_addr),
                        size: r.size,
                        fd: Some(dup(f)?),
                        fd_offset: r.mmap_offset,
                    })
                })
                .collect::<Result<Vec<_>, VhostUserError>>()?;
            GuestMemory::from_regions(specs)?
        };
        let files = distinct
            .into_iter()
            .map(|(_, i)| dup(&files[i]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FrontendMemory {
            regions,
            guest: Arc::new(guest),
            files,
            ram_bytes,
        })
    }

    /// The regions, in the frontend's order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Guest RAM as the device sees it (guest-physical 0 up to the last region's end).
    pub fn guest(&self) -> &Arc<GuestMemory> {
        &self.guest
    }

    /// Bytes in the frontend's regions.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// Bytes of the RAM files still allocated on the host (`st_blocks`, each file once): what
    /// discards return.
    pub fn backed_bytes(&self) -> Result<u64, VhostUserError> {
        let mut total = 0u64;
        for file in &self.files {
            // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `file` is our open descriptor and `st` a valid out-pointer.
            if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
                return Err(VhostUserError::os("fstat(region fd)"));
            }
            total += u64::try_from(st.st_blocks).unwrap_or(0) * 512;
        }
        Ok(total)
    }

    /// The guest-physical address of `[user_addr, user_addr + len)` in the frontend's address
    /// space, if it lies inside one region.
    pub fn translate(&self, user_addr: u64, len: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|r| {
            let off = user_addr.checked_sub(r.user_addr)?;
            (off.checked_add(len)? <= r.size).then(|| GuestAddress(r.guest_addr + off))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(size: u64) -> File {
        // SAFETY: valid name, constant flags.
        let raw = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd.
        let f = unsafe { File::from_raw_fd(raw) };
        f.set_len(size).unwrap();
        f
    }

    fn region(g: u64, s: u64, u: u64, o: u64) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(g, s, u, o)
    }

    #[test]
    fn test_translate_two_regions() {
        let f = memfd(8 << 20);
        let f2 = f.try_clone().unwrap();
        let t = [
            region(0x10_0000, 0x30_0000, 0x7f00_0010_0000, 0x10_0000),
            region(0x50_0000, 0x30_0000, 0x7f00_0050_0000, 0x50_0000),
        ];
        let m = FrontendMemory::new(&t, vec![f, f2]).unwrap();
        assert_eq!(m.guest().size(), 0x80_0000);
        assert_eq!(m.ram_bytes(), 0x60_0000);
        assert_eq!(
            m.translate(0x7f00_0010_1000, 16),
            Some(GuestAddress(0x10_1000))
        );
        assert_eq!(
            m.translate(0x7f00_0050_0000, 8),
            Some(GuestAddress(0x50_0000))
        );
        assert_eq!(m.translate(0x7f00_0040_0000 - 8, 16), None);
        assert_eq!(m.translate(0x1000, 1), None);
    }

    #[test]
    fn test_bad_tables_are_refused() {
        let cases: Vec<Vec<VhostUserMemoryRegion>> = vec![
            vec![],
            vec![region(0, 0, 0, 0)],
            vec![region(0x800, 0x1000, 0, 0x800)],
            // Past the end of its (1 MiB) file.
            vec![region(0, 0x2000, 0, 1 << 20)],
            vec![region(u64::MAX - 0xfff, 0x1000, 0, u64::MAX - 0xfff)],
            vec![region(0, 1 << 30, 0, 0)],
        ];
        for (i, t) in cases.into_iter().enumerate() {
            let files = t.iter().map(|_| memfd(1 << 20)).collect();
            assert!(
                matches!(
                    FrontendMemory::new(&t, files),
                    Err(VhostUserError::MemoryTable { .. })
                ),
                "case {i}"
            );
        }
        let overlap = [
            region(0, 0x2000, 0, 0),
            region(0x1000, 0x2000, 0x9000, 0x1000),
        ];
        let f = memfd(1 << 20);
        let files = vec![f.try_clone().unwrap(), f];
        assert!(FrontendMemory::new(&overlap, files).is_err());
    }

    #[test]
    fn test_two_files_at_their_own_offsets_map_as_two_regions() {
        use std::os::unix::fs::FileExt;
        // QEMU's layout: RAM below 4 GiB from one memfd, above it from another at an offset.
        let (low, high) = (memfd(1 << 20), memfd(3 << 20));
        let t = [
            region(0, 1 << 20, 0x7f00_0000_0000, 0),
            region(1 << 32, 1 << 20, 0x7f10_0000_0000, 2 << 20),
        ];
        let files = vec![low.try_clone().unwrap(), high.try_clone().unwrap()];
        let m = FrontendMemory::new(&t, files).unwrap();
        let g = m.guest();
        assert_eq!(g.size(), (1 << 32) + (1 << 20));
        g.write(GuestAddress(0x1000), b"low").unwrap();
        g.write(GuestAddress((1 << 32) + 0x2000), b"high").unwrap();
        let mut buf = [0u8; 4];
        low.read_exact_at(&mut buf[..3], 0x1000).unwrap();
        assert_eq!(&buf[..3], b"low");
        high.read_exact_at(&mut buf, (2 << 20) + 0x2000).unwrap();
        assert_eq!(&buf, b"high");
        // The hole between the regions is not guest RAM.
        assert!(g.write(GuestAddress(2 << 20), b"x").is_err());
        assert_eq!(
            m.translate(0x7f10_0000_2000, 4),
            Some(GuestAddress((1 << 32) + 0x2000))
        );
        // Both files count once each; a discard gives the page back in the right file.
        let before = m.backed_bytes().unwrap();
        assert!(before >= 2 * 4096);
        g.discard(GuestAddress((1 << 32) + 0x2000), 4096).unwrap();
        assert_eq!(m.backed_bytes().unwrap(), before - 4096);
        high.read_exact_at(&mut buf, (2 << 20) + 0x2000).unwrap();
        assert_eq!(buf, [0; 4]);
    }
}
