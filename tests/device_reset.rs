//! Driver reset (virtio 1.2 §2.4, §3.1.1): status 0 makes the device drop its queues, features
//! and encoding (and clears DEVICE_NEEDS_RESET); the driver renegotiates, possibly with other
//! features, and the device serves the new rings while never touching the old ones. The host's
//! view of the balloon carries across: every page stays accounted for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vballoon::abi::{bit, VBALLOON_F_PAGE_AUTO, VIRTIO_BALLOON_F_STATS_VQ};
use vballoon::device::{BalloonDevice, BalloonError, DeviceConfig, QueueRole};
use vballoon::memory::{GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::pages::{encode, Encoding, PageRange, PageSet};
use vballoon::rig::DriverStart;
use vballoon::transport::{Transport, VIRTIO_CONFIG_S_NEEDS_RESET};
use vballoon::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vballoon::virtq::{DriverQueue, NotifyMode, Segment};

/// 16 MiB of guest RAM.
const PAGES: u64 = 4096;
/// Entries per queue.
const QSIZE: u16 = 16;
/// The first and the second negotiation's rings (elsewhere: the device must let go of the old
/// ones), and their buffers.
const RINGS: [u64; 2] = [0x10_0000, 0x20_0000];
const BUFS: [u64; 2] = [0x40_0000, 0x60_0000];

struct Driver {
    queues: Vec<DriverQueue>,
    next_buf: u64,
}

/// Plays §3.1.1 with `features`, rings at `rings`; returns the driver's queues.
fn negotiate(
    t: &Transport,
    mem: &Arc<GuestMemory>,
    features: u64,
    rings: u64,
    bufs: u64,
) -> Driver {
    let n = vballoon::abi::BalloonFeatures::new(features, vballoon::abi::AbiMode::Vballoon)
        .queues()
        .count;
    let start = DriverStart {
        features: Some(features),
        queues: Some(n),
        ring_base: rings,
        reset: true,
        ..DriverStart::new(QSIZE, 0x1000)
    };
    let queues = start.driver_queues(t, mem).unwrap();
    Driver {
        queues,
        next_buf: bufs,
    }
}

impl Driver {
    /// Posts `runs` in `enc` on `queue` (one chain per message) and kicks.
    fn send(&mut self, mem: &GuestMemory, queue: u16, enc: Encoding, runs: &[(u64, u64)]) {
        let runs: Vec<PageRange> = runs.iter().map(|&r| r.into()).collect();
        for m in encode(enc, &runs).unwrap() {
            let mut segs = Vec::new();
            for s in &m.segments {
                mem.write(GuestAddress(self.next_buf), s).unwrap();
                segs.push(Segment::readable(
                    GuestAddress(self.next_buf),
                    s.len() as u32,
                ));
                self.next_buf += (s.len() as u64).max(1).next_multiple_of(64);
            }
            self.queues[usize::from(queue)].add(&segs).unwrap();
        }
        self.queues[usize::from(queue)].kick().unwrap();
    }

    fn used(&mut self, queue: u16) -> usize {
        let mut n = 0;
        while self.queues[usize::from(queue)]
            .pop_used()
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        n
    }
}

fn device() -> (Arc<GuestMemory>, BalloonDevice) {
    let mem = Arc::new(
        GuestMemory::new(PAGES * PAGE_SIZE, vballoon::memory::Backing::Anonymous).unwrap(),
    );
    let cfg = DeviceConfig {
        encoding: Encoding::Auto,
        stats: true,
        notify: NotifyMode::Polling,
        ..DeviceConfig::default()
    };
    let ring = feature(VIRTIO_F_EVENT_IDX) | feature(VIRTIO_F_INDIRECT_DESC);
    let dev = BalloonDevice::with_extra_features(Arc::clone(&mem), cfg, ring).unwrap();
    (mem, dev)
}

fn set_of(runs: &[(u64, u64)]) -> PageSet {
    PageSet::from_runs(PAGES, runs.iter().copied()).unwrap()
}

fn ring_bytes(mem: &GuestMemory, at: u64) -> Vec<u8> {
    let mut b = vec![0u8; 0x3000];
    mem.read(GuestAddress(at), &mut b).unwrap();
    b
}

#[test]
fn test_reset_then_renegotiate_with_another_encoding_keeps_every_page_accounted_for() {
    let (mem, mut dev) = device();
    let t = Arc::clone(dev.transport());
    let all = t.device_features();
    assert_ne!(
        all & feature(VIRTIO_F_EVENT_IDX),
        0,
        "ring features offered"
    );
    let mut a = negotiate(&t, &mem, all, RINGS[0], BUFS[0]);
    dev.activate().unwrap();
    assert_eq!(dev.encoding(), Encoding::Auto);
    assert_eq!(dev.num_queues(), 3);

    let r1 = [(10u64, 100u64), (300, 1), (302, 1), (1000, 64)];
    a.send(&mem, 0, Encoding::Auto, &r1);
    dev.process_kicked().unwrap();
    assert_eq!(a.used(0), 1);
    assert_eq!(dev.balloon(), &set_of(&r1));
    // The device holds a stats buffer of the first negotiation, and one inflate buffer is
    // posted but not yet served when the driver resets.
    let mut sample = Vec::new();
    vballoon::abi::encode_stats(&[(4, 1 << 20)], &mut sample);
    mem.write(GuestAddress(BUFS[0] + 0x10_0000), &sample)
        .unwrap();
    let seg = Segment::readable(GuestAddress(BUFS[0] + 0x10_0000), sample.len() as u32);
    a.queues[2].add(&[seg]).unwrap();
    dev.process_queue(2).unwrap();
    assert!(dev.holds_stats_buffer());
    a.send(&mem, 0, Encoding::Auto, &[(2000, 10)]);
    let old_rings = ring_bytes(&mem, RINGS[0]);

    // Reset: status 0. The device notices at its next entry point.
    t.set_status(0).unwrap();
    assert_eq!(dev.process_kicked().unwrap(), 0);
    assert!(!dev.is_active());
    assert_eq!(dev.features(), None);
    assert_eq!(dev.encoding(), Encoding::Pfn);
    assert!(!dev.holds_stats_buffer());
    assert!(!dev.request_stats().unwrap());
    assert!(matches!(
        dev.process_queue(0),
        Err(BalloonError::NotReady { .. })
    ));

    // Renegotiate without AUTO (PFN arrays) and without the stats queue, rings elsewhere.
    let fewer = all & !bit(VBALLOON_F_PAGE_AUTO) & !bit(VIRTIO_BALLOON_F_STATS_VQ);
    let mut b = negotiate(&t, &mem, fewer, RINGS[1], BUFS[1]);
    // The device was running when the driver reset it: it follows DRIVER_OK by itself.
    let r2 = [(50u64, 100u64), (3000, 5)];
    b.send(&mem, 0, Encoding::Pfn, &r2);
    assert_eq!(dev.process_kicked().unwrap(), 1);
    assert!(dev.is_active());
    assert_eq!(dev.encoding(), Encoding::Pfn);
    assert_eq!(dev.num_queues(), 2);
    assert_eq!(dev.queue_role(1), Some(QueueRole::Deflate));
    assert_eq!(b.used(0), 1);
    // Nothing was written into the first negotiation's rings after the reset, and its last
    // inflate buffer was never served.
    assert_eq!(ring_bytes(&mem, RINGS[0]), old_rings);
    let mut inflated = set_of(&r1);
    inflated.union_with(&set_of(&r2));
    assert_eq!(dev.balloon(), &inflated);

    // Deflate part of both negotiations' pages.
    let d = [(10u64, 150u64), (3000, 5), (1000, 32)];
    b.send(&mem, 1, Encoding::Pfn, &d);
    dev.process_kicked().unwrap();
    assert_eq!(b.used(1), 1);
    let mut left = inflated.clone();
    left.difference_with(&set_of(&d));
    assert_eq!(dev.balloon(), &left);
    let c = dev.counters();
    assert_eq!(c.pages_inflated, inflated.count());
    assert_eq!(
        c.pages_deflated + c.pages_stray_deflated,
        set_of(&d).count()
    );
    assert_eq!(c.pages_inflated - c.pages_deflated, dev.balloon_pages());
    assert_eq!(c.bad_buffers, 0);
    assert_eq!(dev.errors_total(), 0, "{:?}", dev.take_errors());
}

#[test]
fn test_reset_after_a_hostile_ring_restores_service() {
    let (mem, mut dev) = device();
    let t = Arc::clone(dev.transport());
    let features = t.device_features();
    let a = negotiate(&t, &mem, features, RINGS[0], BUFS[0]);
    dev.activate().unwrap();
    // The guest claims more buffers than the queue holds: the ring is broken.
    let avail_idx = a.queues[0].layout().avail_idx();
    mem.store_u16(avail_idx, QSIZE + 5, Ordering::Release)
        .unwrap();
    assert!(matches!(
        dev.process_queue(0),
        Err(BalloonError::NeedsReset { .. })
    ));
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(matches!(
        dev.process_queue(0),
        Err(BalloonError::NeedsReset { .. })
    ));

    // The driver resets (clearing NEEDS_RESET) and sets the same rings up again, zeroed.
    t.set_status(0).unwrap();
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    mem.fill(GuestAddress(RINGS[0]), 0x3000, 0).unwrap();
    let mut b = negotiate(&t, &mem, features, RINGS[0], BUFS[1]);
    // This time the owner activates explicitly, as a VMM that saw DRIVER_OK would.
    dev.activate().unwrap();
    b.send(&mem, 0, Encoding::Auto, &[(7, 9)]);
    assert_eq!(dev.process_kicked().unwrap(), 1);
    assert_eq!(b.used(0), 1);
    assert_eq!(dev.balloon(), &set_of(&[(7, 9)]));
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    b.send(&mem, 1, Encoding::Auto, &[(7, 9)]);
    dev.process_kicked().unwrap();
    assert_eq!(dev.balloon_pages(), 0);
    drop(a);
}
