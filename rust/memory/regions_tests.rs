//! Multi-region guest RAM: real memfds mapped at non-contiguous guest bases.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::*;

const MIB: u64 = 1 << 20;
/// Guest base of the second region: far above the first, leaving a hole.
const HIGH: u64 = 0x1_0000_0000;

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: the name is a valid NUL-terminated string; flags are constants.
    let raw = unsafe { libc::memfd_create(c"regions-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    std::fs::File::from(fd.try_clone().unwrap())
        .set_len(size)
        .unwrap();
    fd
}

/// Reads `buf.len()` bytes of `fd` at `off`, as another process sharing the file would.
fn pread(fd: &OwnedFd, off: u64, buf: &mut [u8]) {
    std::fs::File::from(fd.try_clone().unwrap())
        .read_exact_at(buf, off)
        .unwrap();
}

/// 1 MiB at guest 0 (file A from 0) and 2 MiB at guest 4 GiB (file B from its second MiB).
fn two_regions() -> (GuestMemory, OwnedFd, OwnedFd) {
    let (a, b) = (memfd(MIB), memfd(3 * MIB));
    let spec = |base: u64, size, fd: &OwnedFd, off| RegionSpec {
        guest_base: GuestAddress(base),
        size,
        fd: Some(fd.try_clone().unwrap()),
        fd_offset: off,
    };
    // Given out of order: the constructor sorts by guest base.
    let mem =
        GuestMemory::from_regions(vec![spec(HIGH, 2 * MIB, &b, MIB), spec(0, MIB, &a, 0)]).unwrap();
    (mem, a, b)
}

#[test]
fn test_each_region_maps_its_file_at_its_offset() {
    let (mem, a, b) = two_regions();
    assert_eq!(mem.size(), HIGH + 2 * MIB);
    let regions: Vec<RegionInfo> = mem.regions().collect();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[1].guest_base, GuestAddress(HIGH));
    assert_eq!(regions[1].fd_offset, MIB);
    assert_eq!(regions[1].backing, Backing::Memfd);
    mem.write_u64(GuestAddress(0x2000), 0xaaaa).unwrap();
    mem.write_u64(GuestAddress(HIGH + 0x3000), 0xbbbb).unwrap();
    let mut buf = [0u8; 8];
    pread(&a, 0x2000, &mut buf);
    assert_eq!(u64::from_le_bytes(buf), 0xaaaa);
    pread(&b, MIB + 0x3000, &mut buf);
    assert_eq!(u64::from_le_bytes(buf), 0xbbbb);
    assert_eq!(mem.read_u64(GuestAddress(HIGH + 0x3000)).unwrap(), 0xbbbb);
    assert_eq!(
        mem.load_u32(
            GuestAddress(HIGH + 0x3000),
            std::sync::atomic::Ordering::Acquire
        )
        .unwrap(),
        0xbbbb
    );
}

#[test]
fn test_accesses_outside_one_region_are_refused() {
    let (mem, _a, _b) = two_regions();
    let mut buf = [0u8; 16];
    // In the hole, across the end of region one, across the start of region two.
    for addr in [MIB, MIB - 8, HIGH - 8, 2 * MIB] {
        assert!(
            matches!(
                mem.read(GuestAddress(addr), &mut buf),
                Err(MemoryError::NotInOneRegion { addr: a, len: 16 }) if a == addr
            ),
            "{addr:#x}"
        );
    }
    assert!(matches!(
        mem.read(GuestAddress(HIGH + 2 * MIB - 8), &mut buf),
        Err(MemoryError::OutOfRange { .. })
    ));
    assert!(!mem.contains(GuestAddress(MIB - PAGE_SIZE), 2 * PAGE_SIZE));
    assert!(mem.contains(GuestAddress(HIGH), 2 * MIB));
    assert!(mem
        .discard(GuestAddress(MIB - PAGE_SIZE), 2 * PAGE_SIZE)
        .is_err());
    assert!(mem
        .residency(GuestAddress(HIGH - PAGE_SIZE), 2 * PAGE_SIZE)
        .is_err());
}

#[test]
fn test_discard_and_residency_per_region() {
    let (mem, a, b) = two_regions();
    mem.fill(GuestAddress(0), MIB, 1).unwrap();
    mem.fill(GuestAddress(HIGH), 2 * MIB, 2).unwrap();
    let high_pfn = HIGH / PAGE_SIZE;
    let runs = [PageRange::new(4, 2), PageRange::new(high_pfn + 8, 3)];
    let mut failed = Vec::new();
    mem.discard_runs(&runs, DiscardMode::PerRun, &mut |e| failed.push(e));
    assert!(failed.is_empty(), "{failed:?}");
    // Before any read through the mapping: reading a hole there allocates a page.
    let res = mem.residency(GuestAddress(HIGH), 16 * PAGE_SIZE).unwrap();
    let resident: Vec<bool> = res.iter().map(|v| v & 1 != 0).collect();
    assert!(resident[7] && !resident[8] && !resident[10] && resident[11]);
    let populated = mem.populated(GuestAddress(HIGH), 16 * PAGE_SIZE).unwrap();
    assert_eq!(populated[8..11], [0, 0, 0]);
    assert_eq!(populated[11], 1);
    assert_eq!(
        mem.resident_pages(GuestAddress(0), MIB).unwrap(),
        MIB / PAGE_SIZE - 2
    );
    // The holes were punched at each region's own file offset.
    let mut buf = [0xffu8; 1];
    pread(&b, MIB + 8 * PAGE_SIZE, &mut buf);
    assert_eq!(buf[0], 0);
    pread(&b, 8 * PAGE_SIZE, &mut buf);
    assert_eq!(buf[0], 0, "outside the region the file was never written");
    pread(&a, 4 * PAGE_SIZE, &mut buf);
    assert_eq!(buf[0], 0);
    assert!(mem
        .is_zero(GuestAddress(4 * PAGE_SIZE), 2 * PAGE_SIZE)
        .unwrap());
    assert!(mem
        .is_zero(GuestAddress(HIGH + 8 * PAGE_SIZE), 3 * PAGE_SIZE)
        .unwrap());
    assert_eq!(mem.read_u8(GuestAddress(6 * PAGE_SIZE)).unwrap(), 1);
    assert_eq!(mem.read_u8(GuestAddress(HIGH + 11 * PAGE_SIZE)).unwrap(), 2);
    mem.populate(GuestAddress(HIGH + 8 * PAGE_SIZE), PAGE_SIZE)
        .unwrap();
    assert_eq!(
        mem.populated(GuestAddress(HIGH + 8 * PAGE_SIZE), PAGE_SIZE)
            .unwrap(),
        [1]
    );
    assert!(a.as_raw_fd() >= 0);
}

#[test]
fn test_first_region_above_zero_and_anonymous_regions() {
    let mem = GuestMemory::from_regions(vec![
        RegionSpec {
            guest_base: GuestAddress(HIGH),
            size: MIB,
            fd: None,
            fd_offset: 0,
        },
        RegionSpec {
            guest_base: GuestAddress(2 * HIGH),
            size: MIB,
            fd: None,
            fd_offset: 0,
        },
    ])
    .unwrap();
    assert!(mem.is_private());
    assert!(mem.read_u8(GuestAddress(0)).is_err());
    mem.write_u8(GuestAddress(HIGH), 7).unwrap();
    mem.write_u8(GuestAddress(2 * HIGH + MIB - 1), 8).unwrap();
    assert_eq!(mem.read_u8(GuestAddress(HIGH)).unwrap(), 7);
    let runs = [
        PageRange::new(HIGH / PAGE_SIZE, 1),
        PageRange::new(2 * HIGH / PAGE_SIZE + 255, 1),
    ];
    for mode in [DiscardMode::Vectored, DiscardMode::Parallel { unit: 1 }] {
        let mut failed = Vec::new();
        mem.discard_runs(&runs, mode, &mut |e| failed.push(e));
        assert!(failed.is_empty(), "{mode:?}: {failed:?}");
    }
    assert_eq!(mem.read_u8(GuestAddress(HIGH)).unwrap(), 0);
    assert_eq!(mem.read_u8(GuestAddress(2 * HIGH + MIB - 1)).unwrap(), 0);
}

#[test]
fn test_malformed_region_tables_are_refused() {
    let anon = |base: u64, size: u64| RegionSpec {
        guest_base: GuestAddress(base),
        size,
        fd: None,
        fd_offset: 0,
    };
    let bad = |specs: Vec<RegionSpec>| {
        matches!(
            GuestMemory::from_regions(specs),
            Err(MemoryError::BadRegion { .. })
        )
    };
    assert!(bad(vec![]));
    assert!(bad(vec![anon(0, 2 * MIB), anon(MIB, MIB)]), "overlap");
    assert!(bad(vec![anon(0x800, MIB)]), "unaligned base");
    assert!(bad(vec![anon(0, 0)]), "empty");
    assert!(bad(vec![anon(MAX_GUEST_SIZE, MIB)]), "too high");
    assert!(bad((0..=MAX_REGIONS as u64)
        .map(|i| anon(i * MIB, MIB))
        .collect()));
    // A file shorter than offset + size.
    let short = RegionSpec {
        guest_base: GuestAddress(0),
        size: MIB,
        fd: Some(memfd(MIB)),
        fd_offset: PAGE_SIZE,
    };
    assert!(matches!(
        GuestMemory::from_regions(vec![short]),
        Err(MemoryError::BadSize { .. })
    ));
}
