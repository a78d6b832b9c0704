//! The balloon end to end: driver and device over a transport and real rings, every encoding,
//! both run modes, and the feature-dependent behaviours (MUST_TELL_HOST, DEFLATE_ON_OOM,
//! stats, queue numbering, the v3 ABI byte for byte).

use std::sync::Arc;
use std::time::Duration;

use vballoon::abi::{
    bit, AbiMode, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_S_MEMFREE, VIRTIO_BALLOON_S_MEMTOT,
};
use vballoon::device::{BalloonDevice, DeviceConfig, DiscardPolicy, QueueRole};
use vballoon::guest::{BalloonDriver, DriverOptions, Step};
use vballoon::guest::{Guest, GuestError, Workload};
use vballoon::machine::{MachineConfig, Outcome, RunMode, Session};
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use vballoon::pages::bitmap::{BmapHeader, BMAP_HEADER_LEN};
use vballoon::pages::Encoding;
use vballoon::virtq::{Descriptor, NotifyMode};
use vballoon::Error;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn session(enc: Encoding, f: impl FnOnce(&mut MachineConfig)) -> Session {
    let mut cfg = MachineConfig {
        guest_bytes: 64 * MIB,
        encoding: enc,
        ..MachineConfig::default()
    };
    f(&mut cfg);
    Session::new(cfg).unwrap()
}

/// Checks MEMFREE + balloon + used = total, and MEMTOT = total - balloon (no DEFLATE_ON_OOM).
fn check_stats(s: &mut Session) {
    let sample = s.stats(T).unwrap().expect("stats negotiated");
    let a = s.guest().allocator();
    let total = a.total_pages();
    let balloon = s.driver().balloon_pages();
    let free = sample.get(VIRTIO_BALLOON_S_MEMFREE).unwrap() / PAGE_SIZE;
    let used_by_guest = a.used_pages() - balloon;
    assert_eq!(free, a.free_pages());
    assert_eq!(free + balloon + used_by_guest, total);
    assert_eq!(
        sample.get(VIRTIO_BALLOON_S_MEMTOT).unwrap(),
        (total - balloon) * PAGE_SIZE
    );
}

/// The first `runs` runs of the balloon read as zero, and no page of the workload changed.
fn check_zero_and_untouched(s: &Session, mem: &GuestMemory, sums: &[(Pfn, u64)], runs: usize) {
    for PageRange { start, len } in s.balloon_set().runs().take(runs) {
        assert!(mem
            .is_zero(GuestAddress(start * PAGE_SIZE), len * PAGE_SIZE)
            .unwrap());
    }
    assert!(Workload::changed_pages(s.guest(), sums).unwrap().is_empty());
}

fn inflate_deflate_round_trip(enc: Encoding, backing: Backing, mode: RunMode) {
    let mut s = session(enc, |c| {
        c.backing = backing;
        c.mode = mode;
    });
    // A workload holds 8 MiB of random data; everything is resident.
    let mut w = Workload::new(3);
    w.allocate(s.guest_mut(), 8 * MIB, 0).unwrap();
    let sums = w.checksums(s.guest()).unwrap();
    let mem = Arc::clone(s.memory());
    mem.populate(GuestAddress(0), mem.size()).unwrap();
    let free_before = s.guest().allocator().free_pages();
    let resident_before = s.resident_pages().unwrap();
    check_stats(&mut s);

    let target = 32 * MIB / PAGE_SIZE;
    s.set_target_pages(target).unwrap();
    let r = s.run_until_settled(T).unwrap();
    assert_eq!(r.outcome, Outcome::Settled, "{enc}: {r}");
    assert_eq!((r.pages_inflated, r.end_pages), (target, target));
    assert_eq!(s.actual(), target);
    assert_eq!(s.balloon_pages(), target);
    assert_eq!(s.balloon_set().count(), target);
    assert_eq!(s.guest().allocator().free_pages(), free_before - target);
    // The host got the memory back: residency fell by the balloon, within 5%.
    let dropped = resident_before - s.resident_pages().unwrap();
    let diff = dropped.abs_diff(target) as f64 / target as f64;
    assert!(
        diff < 0.05,
        "{enc}: resident drop {dropped} pages for {target}"
    );
    check_zero_and_untouched(&s, &mem, &sums, 4);
    assert_eq!(r.bad_buffers, 0);
    assert_eq!(s.device_counters().bad_buffers, 0);
    check_stats(&mut s);

    s.set_target_pages(0).unwrap();
    let r = s.run_until_settled(T).unwrap();
    assert_eq!((r.pages_deflated, r.end_pages), (target, 0), "{enc}: {r}");
    assert_eq!(s.actual(), 0);
    assert_eq!(s.balloon_pages(), 0);
    assert_eq!(s.guest().allocator().free_pages(), free_before);
    assert!(Workload::changed_pages(s.guest(), &sums)
        .unwrap()
        .is_empty());
    assert_eq!(s.device_counters().pages_stray_deflated, 0);
    check_stats(&mut s);
    assert!(s.device_errors().is_empty(), "{:?}", s.device_errors());
    s.stop().unwrap();
}

#[test]
fn test_every_encoding_inflates_and_deflates() {
    for enc in Encoding::ALL {
        inflate_deflate_round_trip(enc, Backing::Anonymous, RunMode::Synchronous);
    }
}

#[test]
fn test_memfd_backing_punches_holes() {
    inflate_deflate_round_trip(Encoding::Bitmap, Backing::Memfd, RunMode::Synchronous);
    inflate_deflate_round_trip(Encoding::Pfn, Backing::Memfd, RunMode::Synchronous);
}

#[test]
fn test_threaded_mode_works_and_stops_cleanly() {
    for enc in [Encoding::Pfn, Encoding::Extents] {
        inflate_deflate_round_trip(enc, Backing::Anonymous, RunMode::Threaded);
    }
    let mut s = session(Encoding::Bitmap, |c| c.mode = RunMode::Threaded);
    assert!(s.is_threaded());
    s.set_target_pages(1000).unwrap();
    s.run_until_settled(T).unwrap();
    s.stop().unwrap();
    assert!(!s.is_threaded());
    s.stop().unwrap();
    drop(s);
    // Dropping a running session stops its thread too.
    let s = session(Encoding::Auto, |c| c.mode = RunMode::Threaded);
    drop(s);
}

#[test]
fn test_discard_policies_count_calls() {
    let pages = 4096;
    for (enc, policy, max_calls) in [
        (Encoding::Pfn, DiscardPolicy::PerPage, pages),
        (Encoding::Pfn, DiscardPolicy::Coalesced, pages / 256),
        (Encoding::Bitmap, DiscardPolicy::Coalesced, 2),
        (Encoding::Bitmap, DiscardPolicy::Never, 0),
        (Encoding::Bitmap, DiscardPolicy::Vectored, 2),
    ] {
        let mut s = session(enc, |c| c.discard = policy);
        s.set_target_pages(pages).unwrap();
        let r = s.run_until_settled(T).unwrap();
        assert_eq!(r.pages_inflated, pages);
        assert!(r.discard_calls <= max_calls, "{enc} {policy}: {r}");
        if policy == DiscardPolicy::PerPage {
            assert_eq!(r.discard_calls, pages);
        }
    }
}

#[test]
fn test_higher_order_allocation_knob() {
    let mut s = session(Encoding::Extents, |c| c.alloc_order = 9);
    s.set_target_pages(5000).unwrap();
    let r = s.run_until_settled(T).unwrap();
    assert_eq!(r.end_pages, 5000);
    let orders: Vec<u8> = s.driver().ballooned_blocks().map(|b| b.1).collect();
    assert!(orders.iter().filter(|o| **o == 9).count() >= 9);
    s.set_target_pages(0).unwrap();
    s.run_until_settled(T).unwrap();
    assert_eq!(s.balloon_pages(), 0);
}

#[test]
fn test_stuck_when_the_guest_has_nothing_left() {
    let mut s = session(Encoding::Bitmap, |_| {});
    let all = s.guest().allocator().total_pages();
    s.set_target_pages(all).unwrap();
    let r = s.run_until_settled(T).unwrap();
    assert_eq!(r.outcome, Outcome::Stuck);
    // Every page but the driver's own rings and buffers went into the balloon.
    assert_eq!(r.end_pages, all - s.driver().area().pages);
    assert_eq!(s.guest().allocator().free_pages(), 0);
}

#[test]
fn test_deflate_on_oom_lets_an_allocation_succeed() {
    for oom in [true, false] {
        let mut s = session(Encoding::Bitmap, |c| {
            c.guest_bytes = 16 * MIB;
            c.deflate_on_oom = oom;
        });
        let all = s.guest().allocator().total_pages();
        s.set_target_pages(all).unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.guest().allocator().free_pages(), 0);
        let before = s.balloon_pages();
        let r = s.guest_alloc(0, T);
        if oom {
            let pfn = r.unwrap();
            assert!(s.guest().allocator().allocated_order(pfn).is_some());
            // Linux's OOM notifier gives back 256 pages and tells the host.
            assert_eq!(s.balloon_pages(), before - 256);
            assert_eq!(s.device_counters().pages_deflated, 256);
            assert_eq!(s.actual(), before - 256);
            assert_eq!(s.driver().counters().oom_deflates, 1);
            // MEMTOT is not shrunk by a DEFLATE_ON_OOM balloon.
            let st = s.stats(T).unwrap().unwrap();
            assert_eq!(st.get(VIRTIO_BALLOON_S_MEMTOT).unwrap(), all * PAGE_SIZE);
        } else {
            assert!(matches!(
                r,
                Err(Error::Guest(GuestError::OutOfMemory { order: 0 }))
            ));
            assert_eq!(s.balloon_pages(), before);
        }
    }
}

/// A driver and device by hand (synchronous), to look between driver and device steps.
fn manual(mtu: bool) -> (Guest, BalloonDriver, BalloonDevice) {
    let mem = Arc::new(GuestMemory::new(16 * MIB, Backing::Anonymous).unwrap());
    let mut guest = Guest::new(Arc::clone(&mem)).unwrap();
    let mut dev = BalloonDevice::new(
        mem,
        DeviceConfig {
            must_tell_host: mtu,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let drv = BalloonDriver::probe(
        Arc::clone(dev.transport()),
        &mut guest,
        DriverOptions::default(),
    )
    .unwrap();
    dev.activate().unwrap();
    dev.process_kicked().unwrap();
    (guest, drv, dev)
}

fn settle(g: &mut Guest, drv: &mut BalloonDriver, dev: &mut BalloonDevice) {
    loop {
        match drv.advance(g).unwrap() {
            Step::Settled => return,
            Step::Stuck => panic!("stuck"),
            _ => {
                dev.process_kicked().unwrap();
            }
        }
    }
}

#[test]
fn test_must_tell_host_pages_not_reused_before_the_deflate_ack() {
    for mtu in [true, false] {
        let (mut g, mut drv, mut dev) = manual(mtu);
        assert_eq!(drv.features().must_tell_host(), mtu);
        dev.set_num_pages(1024).unwrap();
        settle(&mut g, &mut drv, &mut dev);
        let free = g.allocator().free_pages();
        dev.set_num_pages(0).unwrap();
        // The driver sends the deflate request; the device has not seen it yet.
        assert_eq!(drv.advance(&mut g).unwrap(), Step::Progress);
        assert!(drv.busy());
        if mtu {
            assert_eq!(g.allocator().free_pages(), free, "reused before the ack");
            assert_eq!(dev.balloon_pages(), 1024);
        } else {
            assert_eq!(g.allocator().free_pages(), free + 1024);
        }
        dev.process_kicked().unwrap();
        assert_eq!(dev.balloon_pages(), 0);
        assert_eq!(drv.advance(&mut g).unwrap(), Step::Progress);
        assert_eq!(g.allocator().free_pages(), free + 1024);
        assert_eq!(drv.advance(&mut g).unwrap(), Step::Settled);
        assert_eq!(dev.actual(), 0);
    }
}

#[test]
fn test_inflated_pages_are_not_noted_before_the_ack() {
    let (mut g, mut drv, mut dev) = manual(true);
    dev.set_num_pages(100).unwrap();
    assert_eq!(drv.advance(&mut g).unwrap(), Step::Progress);
    // Sent, not acknowledged: actual is still 0 and the host holds nothing yet.
    assert_eq!(
        (dev.actual(), drv.balloon_pages(), dev.balloon_pages()),
        (0, 0, 0)
    );
    assert!(matches!(drv.advance(&mut g).unwrap(), Step::Waiting(0)));
    dev.process_kicked().unwrap();
    assert_eq!(dev.balloon_pages(), 100);
    assert_eq!(drv.advance(&mut g).unwrap(), Step::Progress);
    assert_eq!((dev.actual(), drv.balloon_pages()), (100, 100));
}

#[test]
fn test_queue_indexes_follow_features() {
    for stats in [true, false] {
        let s = session(Encoding::Pfn, |c| c.stats = stats);
        let q = s.driver().queue_indexes();
        let dev = s.device();
        assert_eq!(dev.queue_role(0), Some(QueueRole::Inflate));
        assert_eq!(dev.queue_role(1), Some(QueueRole::Deflate));
        if stats {
            assert_eq!((q.stats, q.count), (Some(2), 3));
            assert_eq!(dev.queue_role(2), Some(QueueRole::Stats));
            assert!(dev.holds_stats_buffer());
        } else {
            assert_eq!((q.stats, q.count), (None, 2));
            assert_eq!(dev.num_queues(), 2);
        }
        assert_eq!(s.transport().num_queues(), q.count);
    }
}

#[test]
fn test_driver_feature_mask_limits_negotiation() {
    let mut s = session(Encoding::Auto, |c| c.driver_feature_mask = !bit(19));
    // The device only offered auto; the driver refused it, so PFN arrays it is.
    assert_eq!(s.driver().encoding(), Encoding::Pfn);
    assert_eq!(s.device().encoding(), Encoding::Pfn);
    s.set_target_pages(300).unwrap();
    assert_eq!(s.run_until_settled(T).unwrap().end_pages, 300);
}

#[test]
fn test_device_refuses_features_without_must_tell_host() {
    let mem = Arc::new(GuestMemory::new(16 * MIB, Backing::Anonymous).unwrap());
    let mut guest = Guest::new(Arc::clone(&mem)).unwrap();
    let dev = BalloonDevice::new(
        mem,
        DeviceConfig {
            require_must_tell_host: true,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let opts = DriverOptions {
        feature_mask: !bit(0),
        ..DriverOptions::default()
    };
    let e = BalloonDriver::probe(Arc::clone(dev.transport()), &mut guest, opts).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(dev.transport().status() & vballoon::transport::VIRTIO_CONFIG_S_FAILED != 0);
}

/// The first inflate message's bytes, read from the ring before the device sees it.
fn first_message(g: &Guest, drv: &BalloonDriver) -> Vec<Vec<u8>> {
    let q = drv.queue(0).unwrap();
    let mem = g.memory();
    let head = mem.read_u16(q.layout().avail_entry(0)).unwrap();
    let mut idx = head;
    let mut out = Vec::new();
    loop {
        let d = Descriptor::read_from(mem, q.layout().desc(idx)).unwrap();
        let mut b = vec![0u8; d.len as usize];
        mem.read(GuestAddress(d.addr), &mut b).unwrap();
        out.push(b);
        if !d.has_next() {
            return out;
        }
        idx = d.next;
    }
}

#[test]
fn test_v3_abi_byte_for_byte() {
    let mem = Arc::new(GuestMemory::new(16 * MIB, Backing::Anonymous).unwrap());
    let mut g = Guest::new(Arc::clone(&mem)).unwrap();
    let mut dev = BalloonDevice::new(
        mem,
        DeviceConfig {
            abi: AbiMode::V3,
            encoding: Encoding::Bitmap,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    // Bit 3 is PAGE_BITMAP in v3 mode.
    assert!(dev.transport().device_features() & bit(3) != 0);
    let opts = DriverOptions {
        abi: AbiMode::V3,
        ..DriverOptions::default()
    };
    let mut drv = BalloonDriver::probe(Arc::clone(dev.transport()), &mut g, opts).unwrap();
    assert!(dev.transport().driver_features() & bit(3) != 0);
    assert!(drv.features().page_bitmap() && !drv.features().free_page_hint());
    assert_eq!(drv.encoding(), Encoding::Bitmap);
    dev.activate().unwrap();
    dev.process_kicked().unwrap();
    dev.set_num_pages(100).unwrap();
    assert_eq!(drv.advance(&mut g).unwrap(), Step::Progress);
    let msg = first_message(&g, &drv);
    // Header alone in s/g element 0, then one piece: bitmap bytes of 64-page words.
    assert_eq!(msg[0].len(), BMAP_HEADER_LEN);
    let h = &msg[0];
    let start = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let len = u64::from_le_bytes(h[24..32].try_into().unwrap());
    assert_eq!(&h[0..2], &0u16.to_le_bytes(), "cmd");
    assert_eq!(&h[2..4], &12u16.to_le_bytes(), "page_shift");
    assert_eq!(&h[4..8], &[0, 0, 0, 0], "flag, reserved");
    assert_eq!(&h[8..16], &[0; 8], "req_id");
    assert_eq!(start % 64, 0);
    assert_eq!(len, msg[1..].iter().map(|s| s.len() as u64).sum::<u64>());
    assert_eq!(
        BmapHeader::from_bytes(h.as_slice().try_into().unwrap()).bmap_len,
        len
    );
    let bits: u32 = msg[1..].iter().flatten().map(|b| b.count_ones()).sum();
    assert_eq!(bits, 100);
    dev.process_kicked().unwrap();
    settle(&mut g, &mut drv, &mut dev);
    assert_eq!(dev.balloon_pages(), 100);
}

#[test]
fn test_v3_rule_without_stats_clears_page_bitmap() {
    let s = session(Encoding::Bitmap, |c| {
        c.abi = AbiMode::V3;
        c.stats = false;
    });
    let f = s.driver().features();
    assert!(!f.page_bitmap());
    assert_eq!(f.bits & bit(VIRTIO_BALLOON_F_STATS_VQ), 0);
    assert_eq!(s.driver().encoding(), Encoding::Pfn);
}

#[test]
fn test_populate_on_deflate_faults_pages_back_in() {
    let mut s = session(Encoding::Extents, |c| c.populate_on_deflate = true);
    let mem = Arc::clone(s.memory());
    mem.populate(GuestAddress(0), mem.size()).unwrap();
    let all = s.resident_pages().unwrap();
    s.set_target_pages(2048).unwrap();
    s.run_until_settled(T).unwrap();
    assert!(s.resident_pages().unwrap() <= all - 2048);
    s.set_target_pages(0).unwrap();
    s.run_until_settled(T).unwrap();
    assert_eq!(s.resident_pages().unwrap(), all);
}

#[test]
fn test_fragmented_guest_with_vectored_discards() {
    for policy in [DiscardPolicy::Vectored, DiscardPolicy::Coalesced] {
        let mut s = session(Encoding::Bitmap, |c| c.discard = policy);
        let mem = Arc::clone(s.memory());
        let mut w = Workload::new(5);
        let free = s.guest().allocator().free_pages() * PAGE_SIZE;
        // Every other page stays held: the balloon gets single-page runs.
        w.fragment(s.guest_mut(), free, 0.5, 1.0).unwrap();
        let sums = w.checksums(s.guest()).unwrap();
        let before = s.resident_pages().unwrap();
        let target = s.guest().allocator().free_pages();
        s.set_target_pages(target).unwrap();
        let r = s.run_until_settled(T).unwrap();
        assert_eq!(r.end_pages, target);
        assert!(r.discard_calls < target, "{policy}: {r}");
        if policy == DiscardPolicy::Vectored {
            assert!(r.discard_calls <= target.div_ceil(1024) + 1, "{r}");
        }
        // The driver's request buffers fault in as it first writes them.
        let dropped = before - s.resident_pages().unwrap();
        assert!(
            dropped.abs_diff(target) <= s.driver().area().pages,
            "{dropped} {target}"
        );
        check_zero_and_untouched(&s, &mem, &sums, usize::MAX);
    }
}
