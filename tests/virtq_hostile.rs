//! A misbehaving guest: raw bytes written into the rings, one test per protocol violation.
//!
//! Each violation must give its own typed error, put the device queue in needs-reset (further
//! pops fail with `NeedsReset`), and never panic or touch memory outside guest RAM.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::virtq::defs::{
    feature, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use vballoon::virtq::{Descriptor, DeviceQueue, QueueLayout, VirtqError};

const NEXT: u16 = VIRTQ_DESC_F_NEXT;
const WRITE: u16 = VIRTQ_DESC_F_WRITE;
const INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;
const SIZE: u16 = 8;
const MEM: u64 = 1 << 20;
const BUF: u64 = 0x8_0000;
const TABLE: u64 = 0x4_0000;
/// 2 GiB + 1: two such buffers overflow a chain's 32-bit byte count.
const HALF_4GIB_PLUS_1: u32 = 0x8000_0001;

/// The guest's view: raw ring writes, no driver logic.
struct Guest {
    mem: Arc<GuestMemory>,
    layout: QueueLayout,
    avail_idx: u16,
}

impl Guest {
    fn new(mem_size: u64) -> (Guest, DeviceQueue) {
        Guest::with_features(
            mem_size,
            feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_INDIRECT_DESC),
        )
    }

    fn with_features(mem_size: u64, features: u64) -> (Guest, DeviceQueue) {
        let mem = Arc::new(GuestMemory::new(mem_size, Backing::Anonymous).unwrap());
        let layout = QueueLayout::place(GuestAddress(0x1000), SIZE).unwrap();
        let dev = DeviceQueue::new(Arc::clone(&mem), layout, features).unwrap();
        let guest = Guest {
            mem,
            layout,
            avail_idx: 0,
        };
        (guest, dev)
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        Descriptor::new(addr, len, flags, next)
            .write_to(&self.mem, self.layout.desc(index))
            .unwrap();
    }

    fn table_entry(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        Descriptor::new(addr, len, flags, next)
            .write_to(&self.mem, GuestAddress(table + 16 * u64::from(index)))
            .unwrap();
    }

    /// Puts `head` in the available ring and bumps `avail.idx`.
    fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % SIZE;
        self.mem
            .write_u16(self.layout.avail_entry(slot), head)
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem
            .store_u16(self.layout.avail_idx(), idx, Ordering::Release)
            .unwrap();
    }
}

/// The queue is dead after `err`: needs_reset, and every later operation says so.
fn assert_needs_reset(dev: &mut DeviceQueue, err: &VirtqError) {
    assert!(err.is_driver_violation(), "{err}");
    assert!(dev.needs_reset(), "{err}");
    assert!(matches!(dev.pop(), Err(VirtqError::NeedsReset)));
    assert!(matches!(dev.add_used(0, 0), Err(VirtqError::NeedsReset)));
    assert!(matches!(
        dev.enable_notifications(),
        Err(VirtqError::NeedsReset)
    ));
}

fn pop_err(dev: &mut DeviceQueue) -> VirtqError {
    match dev.pop() {
        Err(e) => e,
        Ok(c) => panic!("expected an error, popped {c:?}"),
    }
}

/// One test per protocol violation: `name(g, dev: guest) { ring writes } => expected error,`.
/// Each test builds the rings, pops once, matches the error and checks the queue is dead.
macro_rules! violations {
    ($(
        $(#[$doc:meta])*
        $name:ident($g:ident, $dev:ident: $guest:expr) $build:block => $pat:pat $(if $guard:expr)?,
    )*) => {$(
        $(#[$doc])*
        #[test]
        #[allow(unused_mut)]
        fn $name() {
            let (mut $g, mut $dev) = $guest;
            $build
            let e = pop_err(&mut $dev);
            assert!(matches!(e, $pat $(if $guard)?), "{e}");
            assert_needs_reset(&mut $dev, &e);
        }
    )*};
}

violations! {
    test_head_out_of_range(g, dev: Guest::new(MEM)) {
        g.publish(SIZE);
    } => VirtqError::HeadOutOfRange { head: SIZE, size: SIZE },

    test_next_out_of_range(g, dev: Guest::new(MEM)) {
        g.desc(0, BUF, 8, NEXT, 200);
        g.publish(0);
    } => VirtqError::NextOutOfRange { next: 200, limit: 8 },

    test_chain_loops(g, dev: Guest::new(MEM)) {
        g.desc(0, BUF, 8, NEXT, 1);
        g.desc(1, BUF, 8, NEXT, 2);
        g.desc(2, BUF, 8, NEXT, 0);
        g.publish(0);
    } => VirtqError::ChainTooLong { limit: 8 },

    /// No loop: an indirect table of SIZE + 1 linked entries.
    test_chain_longer_than_queue(g, dev: Guest::new(MEM)) {
        let n = SIZE + 1;
        for i in 0..n {
            let (flags, next) = if i + 1 < n { (NEXT, i + 1) } else { (0, 0) };
            g.table_entry(TABLE, i, BUF, 8, flags, next);
        }
        g.desc(0, TABLE, 16 * u32::from(n), INDIRECT, 0);
        g.publish(0);
    } => VirtqError::ChainTooLong { limit: 8 },

    test_loop_inside_indirect_table(g, dev: Guest::new(MEM)) {
        g.table_entry(TABLE, 0, BUF, 8, NEXT, 1);
        g.table_entry(TABLE, 1, BUF, 8, NEXT, 0);
        g.desc(0, TABLE, 32, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::ChainTooLong { limit: 8 },

    test_buffer_outside_memory(g, dev: Guest::new(MEM)) {
        g.desc(0, MEM - 4, 8, 0, 0);
        g.publish(0);
    } => VirtqError::BufferOutsideMemory { addr, len: 8 } if addr == MEM - 4,

    test_buffer_address_overflows(g, dev: Guest::new(MEM)) {
        g.desc(0, u64::MAX - 3, 8, 0, 0);
        g.publish(0);
    } => VirtqError::BufferAddressOverflow { addr, len: 8 } if addr == u64::MAX - 3,

    /// Two overlapping buffers of 2 GiB + 1 byte each, inside a 2 GiB + 4 KiB guest (never
    /// touched, so it costs nothing).
    test_chain_longer_than_4gib(g, dev: Guest::new((1 << 31) + 4096)) {
        g.desc(0, 0, HALF_4GIB_PLUS_1, NEXT, 1);
        g.desc(1, 0, HALF_4GIB_PLUS_1, 0, 0);
        g.publish(0);
    } => VirtqError::ChainBytesOverflow { total } if total == 2 * u64::from(HALF_4GIB_PLUS_1),

    test_nested_indirect(g, dev: Guest::new(MEM)) {
        g.table_entry(TABLE, 0, BUF, 8, NEXT, 1);
        g.table_entry(TABLE, 1, TABLE + 0x100, 16, INDIRECT, 0);
        g.desc(0, TABLE, 32, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::NestedIndirect { index: 1 },

    test_indirect_with_next(g, dev: Guest::new(MEM)) {
        g.table_entry(TABLE, 0, BUF, 8, 0, 0);
        g.desc(0, BUF, 8, NEXT, 1);
        g.desc(1, TABLE, 16, INDIRECT | NEXT, 2);
        g.desc(2, BUF, 8, 0, 0);
        g.publish(0);
    } => VirtqError::IndirectWithNext { index: 1 },

    test_indirect_table_length_not_multiple_of_16(g, dev: Guest::new(MEM)) {
        g.table_entry(TABLE, 0, BUF, 8, 0, 0);
        g.desc(0, TABLE, 24, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::IndirectTableLength { len: 24 },

    test_indirect_table_empty(g, dev: Guest::new(MEM)) {
        g.desc(0, TABLE, 0, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::IndirectTableEmpty { addr: TABLE },

    test_indirect_table_outside_memory(g, dev: Guest::new(MEM)) {
        g.desc(0, MEM - 16, 32, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::BufferOutsideMemory { len: 32, .. },

    test_indirect_next_out_of_range(g, dev: Guest::new(MEM)) {
        g.table_entry(TABLE, 0, BUF, 8, NEXT, 2);
        g.desc(0, TABLE, 32, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::NextOutOfRange { next: 2, limit: 2 },

    test_indirect_without_feature(g, dev: Guest::with_features(MEM, feature(VIRTIO_F_VERSION_1))) {
        g.table_entry(TABLE, 0, BUF, 8, 0, 0);
        g.desc(0, TABLE, 16, INDIRECT, 0);
        g.publish(0);
    } => VirtqError::IndirectNotNegotiated { index: 0 },

    test_avail_index_too_far_ahead(g, dev: Guest::new(MEM)) {
        g.set_avail_idx(SIZE + 1);
    } => VirtqError::AvailIndexAhead { avail_idx: 9, next_avail: 0, size: 8 },

    /// Never decrement avail idx (§2.7.13.3): after two pops, idx 1 looks 65535 ahead.
    test_avail_index_moved_backwards(g, dev: Guest::new(MEM)) {
        g.desc(0, BUF, 8, 0, 0);
        g.publish(0);
        g.publish(0);
        assert!(dev.pop().unwrap().is_some());
        assert!(dev.pop().unwrap().is_some());
        g.set_avail_idx(1);
    } => VirtqError::AvailIndexAhead { avail_idx: 1, next_avail: 2, .. },

    test_writable_before_readable(g, dev: Guest::new(MEM)) {
        g.desc(0, BUF, 8, NEXT, 1);
        g.desc(1, BUF + 8, 8, WRITE | NEXT, 2);
        g.desc(2, BUF + 16, 8, 0, 0);
        g.publish(0);
    } => VirtqError::WritableBeforeReadable { index: 2 },
}

#[test]
fn test_writable_on_readable_only_queue() {
    let (mut g, mut dev) = Guest::new(MEM);
    g.desc(0, BUF, 8, NEXT, 1);
    g.desc(1, BUF + 8, 8, WRITE, 0);
    g.publish(0);
    let e = dev.pop_readable_only().unwrap_err();
    assert!(
        matches!(e, VirtqError::UnexpectedWritable { addr, len: 8 } if addr == BUF + 8),
        "{e}"
    );
    assert_needs_reset(&mut dev, &e);
}

#[test]
fn test_valid_chain_still_pops_and_device_writes_nothing() {
    // Control case: the same helpers build a chain the device accepts, and popping only reads.
    let (mut g, mut dev) = Guest::new(MEM);
    g.mem.fill(GuestAddress(BUF), 0x100, 0xa5).unwrap();
    g.table_entry(TABLE, 0, BUF, 8, NEXT, 1);
    g.table_entry(TABLE, 1, BUF + 8, 8, WRITE, 0);
    g.desc(3, BUF + 0x20, 8, NEXT, 5);
    g.desc(5, TABLE, 32, INDIRECT | WRITE, 0);
    g.publish(3);
    let c = dev.pop().unwrap().unwrap();
    assert_eq!(c.head(), 3);
    assert_eq!(c.len(), 3);
    assert_eq!(c.readable().len(), 2);
    let mut b = [0u8; 0x100];
    g.mem.read(GuestAddress(BUF), &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0xa5));
    assert!(!dev.needs_reset());
}

mod random_rings {
    use super::*;
    use proptest::prelude::*;

    fn any_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        (
            prop_oneof![
                0..MEM,
                (MEM - 64)..(MEM + 64),
                Just(u64::MAX - 7),
                any::<u64>()
            ],
            prop_oneof![0u32..64, Just(u32::MAX), any::<u32>()],
            0u16..8,
            prop_oneof![0u16..10, any::<u16>()],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the guest writes, pop returns a valid chain or a driver-violation error,
        /// and a valid chain's buffers all lie in guest RAM.
        #[test]
        fn prop_random_rings_never_panic(
            descs in proptest::collection::vec(any_desc(), 8),
            heads in proptest::collection::vec(0u16..10, 1..4),
            table in proptest::collection::vec(any_desc(), 4),
        ) {
            let (mut g, mut dev) = Guest::new(MEM);
            for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
                // Point some indirect descriptors at a real table.
                let addr = if flags & INDIRECT != 0 && addr % 2 == 0 { TABLE } else { addr };
                g.desc(i as u16, addr, len, flags, next);
            }
            for (i, (addr, len, flags, next)) in table.into_iter().enumerate() {
                g.table_entry(TABLE, i as u16, addr, len, flags, next);
            }
            for h in &heads {
                g.publish(*h);
            }
            for _ in 0..heads.len() {
                match dev.pop() {
                    Ok(Some(c)) => {
                        for s in c.segments() {
                            prop_assert!(g.mem.contains(s.addr, u64::from(s.len)));
                        }
                        dev.add_used(c.head(), 0).unwrap();
                    }
                    Ok(None) => prop_assert!(false, "published chains went missing"),
                    Err(e) => {
                        prop_assert!(e.is_driver_violation(), "{}", e);
                        prop_assert!(dev.needs_reset());
                        break;
                    }
                }
            }
        }
    }
}
