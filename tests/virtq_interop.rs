//! Interop with rust-vmm's `virtio-queue`: the same bytes in guest memory, read by both.
//!
//! Our driver publishes, their `Queue` pops and uses; their `MockSplitQueue` publishes, our
//! device pops and uses. Both views share one mapping: vm-memory gets a `GuestMemoryMmap` over
//! our `GuestMemory`'s host pointer.

mod virtio_queue_support;

use std::sync::Arc;

use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::virtq::defs::{
    feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use vballoon::virtq::{
    pair_with, DeviceQueue, DriverQueue, NotifyMode, PairConfig, QueueLayout, Segment, UsedElem,
};
use virtio_queue::desc::split::{Descriptor as TheirDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_queue_support::vm;
use vm_memory::{Bytes, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Our guest memory plus a vm-memory view of the same bytes. Field order matters: the view is
/// dropped before the mapping it points into.
struct Shared {
    vm: GuestMemoryMmap,
    mem: Arc<GuestMemory>,
}

impl Shared {
    fn new(size: u64) -> Shared {
        let mem = Arc::new(GuestMemory::new(size, Backing::Anonymous).unwrap());
        let ptr = mem.host_ptr(GuestAddress(0), size).unwrap();
        // SAFETY: `ptr..ptr + size` is exactly our live, page-aligned private anonymous mapping;
        // the region does not own it (no munmap on drop), and `Shared` drops the view before
        // the `Arc<GuestMemory>` it keeps alive.
        let region = unsafe {
            MmapRegion::<()>::build_raw(
                ptr,
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        }
        .unwrap();
        let region = GuestRegionMmap::new(region, vm_memory::GuestAddress(0)).unwrap();
        let vm = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        Shared { vm, mem }
    }
}

/// Their device-side queue over our layout, checked valid against `mem`.
fn their_queue(layout: &QueueLayout, event_idx: bool, mem: &GuestMemoryMmap) -> Queue {
    let q = virtio_queue_support::their_queue(layout, event_idx);
    assert!(q.is_valid(mem));
    q
}

fn our_pair(sh: &Shared, size: u16, features: u64) -> (DriverQueue, DeviceQueue) {
    let mut cfg = PairConfig::new(GuestAddress(0x1000), size, features);
    cfg.notify = NotifyMode::Polling;
    pair_with(Arc::clone(&sh.mem), &cfg).unwrap()
}

/// Their view of one popped chain as our segment type.
fn their_segments(chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> Vec<Segment> {
    chain
        .map(|d: TheirDescriptor| Segment {
            addr: GuestAddress(d.addr().0),
            len: d.len(),
            writable: d.is_write_only(),
        })
        .collect()
}

fn sample_chains() -> Vec<Vec<Segment>> {
    let r = |a: u64, l: u32| Segment::readable(GuestAddress(0x10_0000 + a), l);
    let w = |a: u64, l: u32| Segment::writable(GuestAddress(0x10_0000 + a), l);
    vec![
        vec![r(0, 8)],
        vec![w(0x100, 4096)],
        vec![r(0x2000, 16), r(0x3000, 24), w(0x4000, 100), w(0x5000, 1)],
        vec![r(0x6000, 0)],
        (0..12).map(|i| r(0x7000 + i * 64, 64)).collect(),
    ]
}

fn our_driver_to_their_queue(features: u64) {
    let sh = Shared::new(4 << 20);
    let (mut drv, _dev) = our_pair(&sh, 32, features);
    let mut q = their_queue(drv.layout(), false, &sh.vm);
    for round in 0..3u32 {
        let chains = sample_chains();
        let heads: Vec<u16> = chains.iter().map(|c| drv.add(c).unwrap()).collect();
        for (i, want) in chains.iter().enumerate() {
            let chain = q
                .pop_descriptor_chain(&sh.vm)
                .expect("their queue saw no chain");
            assert_eq!(chain.head_index(), heads[i]);
            assert_eq!(&their_segments(chain), want, "round {round} chain {i}");
        }
        assert!(q.pop_descriptor_chain(&sh.vm).is_none());
        // Used in reverse order, with distinct lengths; our driver must see exactly that.
        for (i, h) in heads.iter().enumerate().rev() {
            q.add_used(&sh.vm, *h, 1000 * round + i as u32).unwrap();
        }
        for (i, h) in heads.iter().enumerate().rev() {
            let used = drv.pop_used().unwrap();
            assert_eq!(
                used,
                Some(UsedElem {
                    head: *h,
                    len: 1000 * round + i as u32
                })
            );
        }
        assert_eq!(drv.pop_used().unwrap(), None);
        assert_eq!(drv.num_free(), 32);
    }
}

#[test]
fn test_our_driver_their_queue_direct() {
    our_driver_to_their_queue(feature(VIRTIO_F_VERSION_1));
}

#[test]
fn test_our_driver_their_queue_indirect() {
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_INDIRECT_DESC);
    our_driver_to_their_queue(features);
}

#[test]
fn test_notification_suppression_agrees_with_event_idx() {
    let sh = Shared::new(4 << 20);
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_EVENT_IDX);
    let (mut drv, _dev) = our_pair(&sh, 8, features);
    let mut q = their_queue(drv.layout(), true, &sh.vm);
    let buf = [(GuestAddress(0x10_0000), 8)];

    // Their device asks for a kick at its next_avail; our driver honours it once.
    assert!(!q.enable_notification(&sh.vm).unwrap());
    drv.add_chain(&buf, &[]).unwrap();
    assert!(drv.should_kick().unwrap());
    drv.add_chain(&buf, &[]).unwrap();
    assert!(!drv.should_kick().unwrap());
    let a = q.pop_descriptor_chain(&sh.vm).unwrap().head_index();
    let b = q.pop_descriptor_chain(&sh.vm).unwrap().head_index();

    // Our driver suppresses interrupts: their device must not notify.
    drv.disable_interrupts().unwrap();
    q.add_used(&sh.vm, a, 0).unwrap();
    assert!(!q.needs_notification(&sh.vm).unwrap());
    // Re-enabled (with a used buffer pending, which enable reports), then the next one notifies.
    assert!(drv.enable_interrupts().unwrap());
    assert_eq!(drv.pop_used().unwrap().unwrap().head, a);
    q.add_used(&sh.vm, b, 0).unwrap();
    assert!(q.needs_notification(&sh.vm).unwrap());
    assert_eq!(drv.pop_used().unwrap().unwrap().head, b);
}

#[test]
fn test_kick_suppression_agrees_without_event_idx() {
    let sh = Shared::new(4 << 20);
    let (mut drv, _dev) = our_pair(&sh, 8, feature(VIRTIO_F_VERSION_1));
    let mut q = their_queue(drv.layout(), false, &sh.vm);
    let buf = [(GuestAddress(0x10_0000), 8)];
    q.disable_notification(&sh.vm).unwrap();
    drv.add_chain(&buf, &[]).unwrap();
    assert!(!drv.should_kick().unwrap());
    assert!(q.enable_notification(&sh.vm).unwrap());
    drv.add_chain(&buf, &[]).unwrap();
    assert!(drv.should_kick().unwrap());
}

/// Their mock driver's layout, with our own used ring: `MockSplitQueue` 0.18 places its used
/// ring `size` bytes (not `2 * size + 6`) past the available ring's entries, overlapping it for
/// sizes above 1, so a device writing its used ring there would clobber the available ring.
fn layout_for_mock(mq: &MockSplitQueue<'_, GuestMemoryMmap>, size: u16) -> QueueLayout {
    let avail_end = mq.avail_addr().0 + vballoon::virtq::avail_ring_bytes(size);
    assert!(
        size < 2 || mq.used_addr().0 < avail_end,
        "mock layout changed: use it"
    );
    let used = GuestAddress(0x8000);
    QueueLayout::new(
        size,
        GuestAddress(mq.desc_table_addr().0),
        GuestAddress(mq.avail_addr().0),
        used,
    )
    .unwrap()
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(TheirDescriptor::new(addr, len, flags, next))
}

#[test]
fn test_their_mock_driver_our_device() {
    use vballoon::virtq::defs::{VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE};
    let sh = Shared::new(4 << 20);
    let size = 16;
    let mq = MockSplitQueue::create(&sh.vm, vm_memory::GuestAddress(0x1000), size);
    let layout = layout_for_mock(&mq, size);
    let mut dev =
        DeviceQueue::new(Arc::clone(&sh.mem), layout, feature(VIRTIO_F_VERSION_1)).unwrap();

    // Three chains: [0], [1 -> 2 -> 3 (last two writable)], [4 -> 5].
    let descs = [
        raw(0x10_0000, 100, 0, 0),
        raw(0x10_1000, 16, NEXT, 2),
        raw(0x10_2000, 32, NEXT | WRITE, 3),
        raw(0x10_3000, 64, WRITE, 0),
        raw(0x10_4000, 1, NEXT, 5),
        raw(0x10_5000, 2, 0, 0),
    ];
    mq.add_desc_chains(&descs, 0).unwrap();
    let want = [
        (0u16, vec![Segment::readable(GuestAddress(0x10_0000), 100)]),
        (
            1,
            vec![
                Segment::readable(GuestAddress(0x10_1000), 16),
                Segment::writable(GuestAddress(0x10_2000), 32),
                Segment::writable(GuestAddress(0x10_3000), 64),
            ],
        ),
        (
            4,
            vec![
                Segment::readable(GuestAddress(0x10_4000), 1),
                Segment::readable(GuestAddress(0x10_5000), 2),
            ],
        ),
    ];
    for (head, segs) in &want {
        let c = dev.pop().unwrap().unwrap();
        assert_eq!(c.head(), *head);
        assert_eq!(c.segments(), &segs[..]);
    }
    assert!(dev.pop().unwrap().is_none());

    // Used entries, read back through their types.
    for (i, (head, _)) in want.iter().enumerate() {
        dev.add_used(*head, 7 * i as u32).unwrap();
    }
    let used_idx: u16 = sh.vm.read_obj(vm(layout.used_idx())).unwrap();
    assert_eq!(u16::from_le(used_idx), 3);
    for (i, (head, _)) in want.iter().enumerate() {
        let e: VirtqUsedElem = sh.vm.read_obj(vm(layout.used_elem(i as u16))).unwrap();
        assert_eq!((e.id(), e.len()), (u32::from(*head), 7 * i as u32));
    }
}

#[test]
fn test_their_mock_indirect_chains_our_device() {
    // The mock puts indirect tables at 0x3000_0000; our guest is big enough (never touched).
    let sh = Shared::new(1 << 30);
    let size = 16;
    let mut mq = MockSplitQueue::create(&sh.vm, vm_memory::GuestAddress(0x1000), size);
    let layout = layout_for_mock(&mq, size);
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_INDIRECT_DESC);
    let mut dev = DeviceQueue::new(Arc::clone(&sh.mem), layout, features).unwrap();
    // The mock reuses descriptor 0 for every head, so each chain is popped before the next.
    for (n, indirect) in [(3usize, true), (2, false), (16, true)] {
        if indirect {
            mq.add_indirect_chain(n as u16).unwrap();
        } else {
            mq.add_chain(n as u16).unwrap();
        }
        let c = dev.pop().unwrap().unwrap();
        // Their mock fills every buffer with (0x1000, 0x1000), device-readable.
        assert_eq!(
            c.segments(),
            &vec![Segment::readable(GuestAddress(0x1000), 0x1000); n][..]
        );
        dev.add_used(c.head(), n as u32).unwrap();
    }
    assert!(dev.pop().unwrap().is_none());
}

#[test]
fn test_their_queue_and_our_device_agree_on_same_rings() {
    // Both devices read the same published rings (ours keeps its own position).
    let sh = Shared::new(4 << 20);
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_INDIRECT_DESC);
    let (mut drv, mut dev) = our_pair(&sh, 32, features);
    let mut q = their_queue(drv.layout(), false, &sh.vm);
    for c in sample_chains() {
        drv.add(&c).unwrap();
    }
    while let Some(theirs) = q.iter(&sh.vm).unwrap().next() {
        let head = theirs.head_index();
        let ours = dev.pop().unwrap().unwrap();
        assert_eq!(ours.head(), head);
        assert_eq!(ours.segments(), &their_segments(theirs)[..]);
    }
    assert!(dev.pop().unwrap().is_none());
}
