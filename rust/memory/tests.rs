use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::*;

const MIB: u64 = 1 << 20;

#[test]
fn test_discarded_pages_read_back_as_zero() {
    for backing in [Backing::Anonymous, Backing::Memfd] {
        let mem = GuestMemory::new(4 * MIB, backing).unwrap();
        mem.fill(GuestAddress(0), 4 * MIB, 0xab).unwrap();
        mem.discard(GuestAddress(MIB), MIB).unwrap();
        assert!(mem.is_zero(GuestAddress(MIB), MIB).unwrap(), "{backing:?}");
        assert_eq!(mem.read_u8(GuestAddress(MIB - 1)).unwrap(), 0xab);
        assert_eq!(mem.read_u8(GuestAddress(2 * MIB)).unwrap(), 0xab);
    }
}

#[test]
fn test_memfd_discard_visible_through_second_mapping() {
    let mem = GuestMemory::new(2 * MIB, Backing::Memfd).unwrap();
    // Duplicate the fd the way a second process would receive it.
    let fd = mem.memfd().unwrap();
    // SAFETY: `fd` is the memfd `mem` owns, open for the whole borrow.
    let dup: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .unwrap();
    let other = GuestMemory::from_memfd(dup, 2 * MIB).unwrap();
    mem.write_u64(GuestAddress(0x1000), 0xdead_beef).unwrap();
    assert_eq!(other.read_u64(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
    other.discard(GuestAddress(0x1000), PAGE_SIZE).unwrap();
    assert_eq!(mem.read_u64(GuestAddress(0x1000)).unwrap(), 0);
}

#[test]
fn test_out_of_range_access_is_an_error() {
    let mem = GuestMemory::new(MIB, Backing::Anonymous).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(
        mem.read(GuestAddress(MIB - 4), &mut buf),
        Err(MemoryError::OutOfRange { addr, len: 8, size }) if addr == MIB - 4 && size == MIB
    ));
    assert!(mem.write(GuestAddress(u64::MAX - 2), &buf).is_err());
    assert!(mem.read_u8(GuestAddress(MIB)).is_err());
    assert!(mem.discard(GuestAddress(MIB), PAGE_SIZE).is_err());
    assert!(matches!(
        mem.discard(GuestAddress(1), PAGE_SIZE),
        Err(MemoryError::NotPageAligned { .. })
    ));
    assert!(matches!(
        mem.load_u16(GuestAddress(3), Ordering::Acquire),
        Err(MemoryError::Misaligned { addr: 3, align: 2 })
    ));
    assert!(mem.host_ptr(GuestAddress(0), MIB + 1).is_err());
}

#[test]
fn test_bad_sizes_are_rejected() {
    for size in [0, 4095, MAX_GUEST_SIZE + PAGE_SIZE] {
        assert!(matches!(
            GuestMemory::new(size, Backing::Anonymous),
            Err(MemoryError::BadSize { .. })
        ));
    }
}

#[test]
fn test_huge_guest_costs_nothing_until_touched() {
    let mem = GuestMemory::new(128 << 30, Backing::Anonymous).unwrap();
    mem.write_u64(GuestAddress((128 << 30) - 8), 7).unwrap();
    assert_eq!(
        mem.resident_pages(GuestAddress(127 << 30), 1 << 30)
            .unwrap(),
        1
    );
}

#[test]
fn test_populate_keeps_contents_and_makes_resident() {
    let mem = GuestMemory::new(MIB, Backing::Anonymous).unwrap();
    mem.write_u32(GuestAddress(0x2000), 42).unwrap();
    mem.populate(GuestAddress(0), MIB).unwrap();
    assert_eq!(mem.read_u32(GuestAddress(0x2000)).unwrap(), 42);
    assert_eq!(
        mem.resident_pages(GuestAddress(0), MIB).unwrap(),
        MIB / PAGE_SIZE
    );
}

#[test]
fn test_atomics_are_little_endian() {
    let mem = GuestMemory::new(MIB, Backing::Anonymous).unwrap();
    mem.store_u16(GuestAddress(2), 0x1234, Ordering::Release)
        .unwrap();
    assert_eq!(mem.read_u8(GuestAddress(2)).unwrap(), 0x34);
    mem.store_u32(GuestAddress(8), 0xa1b2c3d4, Ordering::Release)
        .unwrap();
    assert_eq!(mem.read_u32(GuestAddress(8)).unwrap(), 0xa1b2c3d4);
    assert_eq!(
        mem.load_u32(GuestAddress(8), Ordering::Acquire).unwrap(),
        0xa1b2c3d4
    );
    assert_eq!(
        mem.load_u64(GuestAddress(8), Ordering::Acquire).unwrap(),
        0xa1b2c3d4
    );
}
