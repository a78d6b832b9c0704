//! Driver and device ends together, single-threaded.

use std::sync::Arc;

use crate::memory::{Backing, GuestAddress, GuestMemory};

use super::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use super::*;

const MEM: u64 = 1 << 20;
const BUF: u64 = 0x8_0000;

fn setup(size: u16, features: u64) -> (Arc<GuestMemory>, DriverQueue, DeviceQueue) {
    let mem = Arc::new(GuestMemory::new(MEM, Backing::Anonymous).unwrap());
    let mut cfg = PairConfig::new(GuestAddress(0x1000), size, features);
    cfg.notify = NotifyMode::Polling;
    let (drv, dev) = pair_with(Arc::clone(&mem), &cfg).unwrap();
    (mem, drv, dev)
}

fn v1() -> u64 {
    feature(VIRTIO_F_VERSION_1)
}

#[test]
fn test_round_trip_readable_and_writable() {
    let (mem, mut drv, mut dev) = setup(8, v1());
    mem.write(GuestAddress(BUF), b"hello ").unwrap();
    mem.write(GuestAddress(BUF + 0x100), b"world").unwrap();
    let head = drv
        .add_chain(
            &[(GuestAddress(BUF), 6), (GuestAddress(BUF + 0x100), 5)],
            &[
                (GuestAddress(BUF + 0x200), 4),
                (GuestAddress(BUF + 0x300), 8),
            ],
        )
        .unwrap();
    assert_eq!(drv.num_free(), 4);
    assert!(drv.kick().unwrap());
    assert_eq!(dev.kick_notifier().take().unwrap(), 1);

    let chain = dev.pop().unwrap().unwrap();
    assert_eq!(chain.head(), head);
    assert_eq!(chain.readable().len(), 2);
    assert_eq!(chain.writable_len(), 12);
    assert_eq!(chain.read_all(&mem).unwrap(), b"hello world");
    let n = chain.write_all(&mem, b"0123456789").unwrap();
    assert_eq!(n, 10);
    dev.add_used(chain.head(), n).unwrap();
    assert!(dev.signal_used().unwrap());
    assert!(dev.pop().unwrap().is_none());

    assert_eq!(drv.wait_interrupt(None).unwrap(), 1);
    assert_eq!(drv.pop_used().unwrap(), Some(UsedElem { head, len: 10 }));
    assert_eq!(drv.pop_used().unwrap(), None);
    assert_eq!(drv.num_free(), 8);
    let mut back = [0u8; 12];
    mem.read(GuestAddress(BUF + 0x200), &mut back[..4]).unwrap();
    mem.read(GuestAddress(BUF + 0x300), &mut back[4..]).unwrap();
    assert_eq!(&back[..10], b"0123456789");
}

#[test]
fn test_queue_full_and_free_list_reuse() {
    let (_mem, mut drv, mut dev) = setup(4, v1());
    let seg = |i: u64| Segment::readable(GuestAddress(BUF + i * 16), 16);
    let a = drv.add(&[seg(0), seg(1), seg(2)]).unwrap();
    let b = drv.add(&[seg(3)]).unwrap();
    assert_eq!(drv.num_free(), 0);
    assert!(matches!(
        drv.add(&[seg(4)]),
        Err(VirtqError::QueueFull { needed: 1, free: 0 })
    ));
    // Complete out of order: b first, then a.
    let ca = dev.pop().unwrap().unwrap();
    let cb = dev.pop().unwrap().unwrap();
    assert_eq!((ca.head(), cb.head()), (a, b));
    assert_eq!(ca.len(), 3);
    dev.add_used(b, 0).unwrap();
    dev.add_used(a, 0).unwrap();
    assert_eq!(drv.pop_used().unwrap().unwrap().head, b);
    assert_eq!(drv.num_free(), 1);
    assert_eq!(drv.pop_used().unwrap().unwrap().head, a);
    assert_eq!(drv.num_free(), 4);
    assert_eq!(drv.in_flight(), 0);
    // All four descriptors are reusable as one chain.
    let c = drv.add(&[seg(0), seg(1), seg(2), seg(3)]).unwrap();
    assert_eq!(dev.pop().unwrap().unwrap().len(), 4);
    dev.add_used(c, 0).unwrap();
    assert_eq!(drv.pop_used().unwrap().unwrap().head, c);
}

#[test]
fn test_indices_wrap_past_65536() {
    let (mem, mut drv, mut dev) = setup(2, v1() | feature(VIRTIO_F_EVENT_IDX));
    let mut chain = DescriptorChain::new();
    for i in 0..70_000u32 {
        mem.write_u32(GuestAddress(BUF), i).unwrap();
        let head = drv
            .add_chain(&[(GuestAddress(BUF), 4)], &[(GuestAddress(BUF + 64), 4)])
            .unwrap();
        assert!(dev.pop_into(&mut chain).unwrap());
        assert_eq!(chain.read_all(&mem).unwrap(), i.to_le_bytes());
        dev.add_used(chain.head(), i).unwrap();
        assert_eq!(drv.pop_used().unwrap(), Some(UsedElem { head, len: i }));
    }
    assert_eq!(u32::from(dev.next_avail()), 70_000u32 % 65536);
}

#[test]
fn test_indirect_chain_uses_one_descriptor() {
    let features = v1() | feature(VIRTIO_F_INDIRECT_DESC);
    let (mem, mut drv, mut dev) = setup(32, features);
    assert!(drv.indirect_area().is_some());
    let segs: Vec<Segment> = (0..6)
        .map(|i| Segment {
            addr: GuestAddress(BUF + i * 0x40),
            len: 0x40,
            writable: i >= 4,
        })
        .collect();
    let head = drv.add(&segs).unwrap();
    assert_eq!(drv.num_free(), 31);
    let d = Descriptor::read_from(&mem, drv.layout().desc(head)).unwrap();
    assert!(d.is_indirect() && !d.has_next());
    assert_eq!(d.len, 6 * 16);
    let chain = dev.pop().unwrap().unwrap();
    assert_eq!(chain.segments(), &segs[..]);
    dev.add_used(head, 0x80).unwrap();
    assert_eq!(drv.pop_used().unwrap(), Some(UsedElem { head, len: 0x80 }));
    assert_eq!(drv.num_free(), 32);
    // Longer than a slot: falls back to direct descriptors.
    let long: Vec<Segment> = (0..17)
        .map(|i| Segment::readable(GuestAddress(BUF + i * 8), 8))
        .collect();
    drv.add(&long).unwrap();
    assert_eq!(drv.num_free(), 15);
    assert_eq!(dev.pop().unwrap().unwrap().segments(), &long[..]);
}

#[test]
fn test_kick_suppression_without_event_idx() {
    let (_mem, mut drv, mut dev) = setup(8, v1());
    let r = [(GuestAddress(BUF), 8)];
    dev.disable_notifications().unwrap();
    drv.add_chain(&r, &[]).unwrap();
    assert!(!drv.kick().unwrap());
    // Re-enabling reports the chain that arrived meanwhile.
    assert!(dev.enable_notifications().unwrap());
    assert!(dev.pop().unwrap().is_some());
    assert!(!dev.enable_notifications().unwrap());
    drv.add_chain(&r, &[]).unwrap();
    assert!(drv.kick().unwrap());
    // Nothing new since the last decision: no kick.
    assert!(!drv.kick().unwrap());
}

#[test]
fn test_kick_suppression_with_event_idx() {
    let (_mem, mut drv, mut dev) = setup(8, v1() | feature(VIRTIO_F_EVENT_IDX));
    let r = [(GuestAddress(BUF), 8)];
    // avail_event starts at 0: the first chain (index 0 -> 1) kicks, the next does not.
    drv.add_chain(&r, &[]).unwrap();
    assert!(drv.kick().unwrap());
    drv.add_chain(&r, &[]).unwrap();
    assert!(!drv.kick().unwrap());
    assert!(dev.pop().unwrap().is_some());
    assert!(dev.pop().unwrap().is_some());
    assert!(!dev.enable_notifications().unwrap());
    // avail_event = 2 now: the next chain kicks, even batched with another.
    drv.add_chain(&r, &[]).unwrap();
    drv.add_chain(&r, &[]).unwrap();
    assert!(drv.kick().unwrap());
}

#[test]
fn test_interrupt_suppression() {
    for features in [v1(), v1() | feature(VIRTIO_F_EVENT_IDX)] {
        let (_mem, mut drv, mut dev) = setup(8, features);
        let r = [(GuestAddress(BUF), 8)];
        drv.disable_interrupts().unwrap();
        for _ in 0..3 {
            drv.add_chain(&r, &[]).unwrap();
        }
        let heads: Vec<u16> = (0..3).map(|_| dev.pop().unwrap().unwrap().head()).collect();
        dev.add_used(heads[0], 0).unwrap();
        assert!(!dev.needs_interrupt().unwrap(), "features {features:#x}");
        // Enabling reports the used buffer already there.
        assert!(drv.enable_interrupts().unwrap());
        assert!(drv.pop_used().unwrap().is_some());
        assert!(!drv.enable_interrupts().unwrap());
        dev.add_used(heads[1], 0).unwrap();
        assert!(dev.needs_interrupt().unwrap());
        assert!(!dev.needs_interrupt().unwrap());
        if features & feature(VIRTIO_F_EVENT_IDX) != 0 {
            // Not yet consumed by the driver: used_event still 1, so no second interrupt.
            dev.add_used(heads[2], 0).unwrap();
            assert!(!dev.needs_interrupt().unwrap());
        }
    }
}

#[test]
fn test_driver_rejects_bad_chains() {
    let (_mem, mut drv, _dev) = setup(4, v1());
    assert!(matches!(drv.add(&[]), Err(VirtqError::EmptyChain)));
    assert!(matches!(
        drv.add(&[
            Segment::writable(GuestAddress(BUF), 1),
            Segment::readable(GuestAddress(BUF), 1)
        ]),
        Err(VirtqError::WritableBeforeReadable { index: 1 })
    ));
    assert!(matches!(
        drv.add_chain(&[(GuestAddress(MEM - 4), 8)], &[]),
        Err(VirtqError::BufferOutsideMemory { .. })
    ));
    assert!(matches!(
        drv.add_chain(&[(GuestAddress(u64::MAX - 2), 8)], &[]),
        Err(VirtqError::BufferAddressOverflow { .. })
    ));
    let five = [(GuestAddress(BUF), 1); 5];
    assert!(matches!(
        drv.add_chain(&five, &[]),
        Err(VirtqError::TooManySegments {
            segments: 5,
            limit: 4
        })
    ));
    assert_eq!(drv.num_free(), 4);
}

#[test]
fn test_driver_rejects_bad_used_id() {
    let (mem, mut drv, _dev) = setup(4, v1());
    drv.add_chain(&[(GuestAddress(BUF), 1)], &[]).unwrap();
    // A device that returns head 3, which was never added.
    let l = *drv.layout();
    mem.write_u32(l.used_elem(0), 3).unwrap();
    mem.store_u16(l.used_idx(), 1, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert!(matches!(
        drv.pop_used(),
        Err(VirtqError::UsedIdInvalid { id: 3 })
    ));
}

#[test]
fn test_device_reset_clears_needs_reset() {
    let (mem, mut drv, mut dev) = setup(4, v1());
    let l = *dev.layout();
    mem.store_u16(l.avail_idx(), 9, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert!(matches!(
        dev.pop(),
        Err(VirtqError::AvailIndexAhead { avail_idx: 9, .. })
    ));
    assert!(dev.needs_reset());
    assert!(matches!(dev.add_used(0, 0), Err(VirtqError::NeedsReset)));
    // The driver re-initialises its rings, the device resets.
    let features = drv.features();
    drv = DriverQueue::new(Arc::clone(&mem), l, features).unwrap();
    dev.reset();
    assert!(!dev.needs_reset());
    let h = drv.add_chain(&[(GuestAddress(BUF), 1)], &[]).unwrap();
    assert_eq!(dev.pop().unwrap().unwrap().head(), h);
}

#[test]
fn test_undo_pop_and_pending() {
    let (_mem, mut drv, mut dev) = setup(4, v1());
    let h = drv.add_chain(&[(GuestAddress(BUF), 1)], &[]).unwrap();
    assert_eq!(dev.pending().unwrap(), 1);
    assert_eq!(dev.pop().unwrap().unwrap().head(), h);
    assert_eq!(dev.pending().unwrap(), 0);
    dev.undo_pop();
    assert_eq!(dev.pop().unwrap().unwrap().head(), h);
}

#[test]
fn test_pair_footprint_and_bounds() {
    let mem = Arc::new(GuestMemory::new(0x2000, Backing::Anonymous).unwrap());
    let cfg = PairConfig::new(GuestAddress(0), 256, v1() | feature(VIRTIO_F_INDIRECT_DESC));
    assert_eq!(
        cfg.footprint(),
        QueueLayout::placed_bytes(256).next_multiple_of(16) + 256 * 16 * 16
    );
    assert!(matches!(
        pair_with(Arc::clone(&mem), &cfg),
        Err(VirtqError::RingOutsideMemory { .. })
    ));
    assert!(pair(mem, GuestAddress(0), 64, v1()).is_ok());
}

#[test]
fn test_queue_ends_move_across_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<DriverQueue>();
    assert_send::<DeviceQueue>();
    assert_send::<DescriptorChain>();
    assert_send::<Notifier>();
}
