//! The three hint protocols end to end over real virtqueues in guest RAM, device and driver
//! run in turn on one thread: the seed's misc queue, upstream free page hinting, and free page
//! reporting. Every hinted page crossed a queue; the test compares them with the guest's free
//! lists at request time.

use std::sync::{Arc, Mutex};

use vballoon::abi::{
    bit, AbiMode, VBALLOON_F_MISC_VQ, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_REPORTING,
};
use vballoon::device::{
    BalloonDevice, BalloonError, DeviceConfig, FreePageStatus, HintError, HintEvent, HintOffer,
};
use vballoon::guest::{BalloonDriver, DriverError, DriverOptions, HintStep};
use vballoon::guest::{Guest, Workload};
use vballoon::memory::{Backing, GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use vballoon::pages::{Encoding, PageSet};
use vballoon::virtq::NotifyMode;

const MIB: u64 = 1 << 20;
const ID: u32 = 0x8000_0000;

struct Rig {
    guest: Guest,
    drv: BalloonDriver,
    dev: BalloonDevice,
    events: Arc<Mutex<Vec<HintEvent>>>,
}

fn rig_with(bytes: u64, abi: AbiMode, offer: HintOffer, stats: bool, queue: u16) -> Rig {
    let mem = Arc::new(GuestMemory::new(bytes, Backing::Anonymous).unwrap());
    let mut guest = Guest::new(Arc::clone(&mem)).unwrap();
    let mut dev = BalloonDevice::new(
        mem,
        DeviceConfig {
            abi,
            stats,
            hints: offer,
            // The bitmap encoding needs 64 descriptors; small queues use PFN arrays.
            encoding: if queue < 64 {
                Encoding::Pfn
            } else {
                Encoding::Bitmap
            },
            queue_max_size: queue,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let opts = DriverOptions {
        abi,
        queue_size: queue,
        ..DriverOptions::default()
    };
    let drv = BalloonDriver::probe(Arc::clone(dev.transport()), &mut guest, opts).unwrap();
    dev.activate().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    dev.set_hint_sink(Some(Arc::new(move |e| sink.lock().unwrap().push(e))));
    dev.process_kicked().unwrap();
    Rig {
        guest,
        drv,
        dev,
        events,
    }
}

fn rig(bytes: u64) -> Rig {
    rig_with(bytes, AbiMode::Vballoon, HintOffer::ALL, true, 128)
}

impl Rig {
    /// Runs driver and device in turn until neither has anything left to do.
    fn pump(&mut self) {
        for _ in 0..100_000 {
            let step = self.drv.service_hints(&mut self.guest).unwrap();
            let served = self.dev.process_kicked().unwrap();
            if step == HintStep::Idle && served == 0 {
                return;
            }
        }
        panic!("hint queues never settled");
    }

    fn report_all(&mut self) {
        for _ in 0..100_000 {
            let step = self.drv.report_free_pages(&mut self.guest).unwrap();
            self.dev.process_kicked().unwrap();
            if step == HintStep::Idle {
                return;
            }
        }
        panic!("reporting never settled");
    }

    fn take_events(&self) -> Vec<HintEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn free_set(&self) -> PageSet {
        let mut free = PageSet::new(self.guest.memory().pages());
        self.guest
            .allocator()
            .for_each_free_block(|p, o| free.insert_range(p.0, 1 << o));
        free
    }

    fn pages_of(&self, events: &[HintEvent], want: u64) -> PageSet {
        let mut set = PageSet::new(self.guest.memory().pages());
        for e in events {
            if let HintEvent::Pages { id, pfn, npages } = *e {
                assert_eq!(id, want, "hint under id {id:#x}");
                assert_eq!(set.count_range(pfn, npages), 0, "page hinted twice");
                set.insert_range(pfn, npages);
            }
        }
        set
    }
}

fn finished(events: &[HintEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            HintEvent::Finished { id } => Some(*id),
            _ => None,
        })
        .collect()
}

/// Allocates and fills a scattered pattern, then frees part of it again.
fn scatter(g: &mut Guest, bytes: u64, seed: u64) -> Workload {
    let mut w = Workload::new(seed);
    w.fragment(g, bytes, 0.3, 0.6).unwrap();
    w.allocate(g, bytes / 4, 3).unwrap();
    w
}

#[test]
fn test_misc_hints_every_free_page_at_request_time_once() {
    let mut r = rig(64 * MIB);
    let _w = scatter(&mut r.guest, 24 * MIB, 1);
    assert!(r.dev.holds_misc_request_buffer());
    let free = r.free_set();
    assert!(r.dev.request_unused_pages(u64::from(ID)).unwrap());
    r.pump();
    let ev = r.take_events();
    assert_eq!(r.pages_of(&ev, u64::from(ID)), free);
    assert_eq!(finished(&ev), vec![u64::from(ID)]);
    let c = r.drv.hint_counters();
    assert_eq!((c.unused_requests, c.free_list_walks), (1, 1));
    assert_eq!(c.unused_pages, free.count());
    let d = r.dev.hint_counters();
    assert_eq!(
        (d.unused_requests, d.unused_done, d.stale_replies),
        (1, 1, 0)
    );
    assert_eq!(r.dev.errors_total(), 0);
    // The request buffer is back with the device: it can ask again, and the answer follows
    // the guest's new state.
    assert!(r.dev.holds_misc_request_buffer());
    let p = r.guest.allocator_mut().alloc(4).unwrap();
    let free = r.free_set();
    assert!(!free.contains(p.0));
    r.dev.request_unused_pages(u64::from(ID) + 1).unwrap();
    r.pump();
    let ev = r.take_events();
    assert_eq!(r.pages_of(&ev, u64::from(ID) + 1), free);
}

#[test]
fn test_misc_answers_a_large_guest_window_by_window_walking_once() {
    // 33 GiB: two 32 GiB windows. Never touched, so it costs the host nothing.
    let mut r = rig(33 << 30);
    let _w = scatter(&mut r.guest, 8 * MIB, 2);
    let free = r.free_set();
    r.dev.request_unused_pages(5).unwrap();
    r.pump();
    let ev = r.take_events();
    assert_eq!(r.pages_of(&ev, 5), free);
    assert_eq!(finished(&ev), vec![5]);
    let c = r.drv.hint_counters();
    assert_eq!(c.free_list_walks, 1);
    assert_eq!(c.unused_replies, 2, "one reply per window, CONT then DONE");
    assert_eq!(r.drv.hint_area().unwrap().pieces, 32);
}

#[test]
fn test_misc_in_v3_abi_mode_uses_bit_4_and_queue_3() {
    let mut r = rig_with(16 * MIB, AbiMode::V3, HintOffer::ALL, true, 128);
    let f = r.drv.features();
    assert!(f.misc_vq() && f.page_bitmap() && !f.free_page_hint());
    assert!(r.dev.transport().driver_features() & bit(4) != 0);
    assert_eq!(r.drv.queue_indexes().misc, Some(3));
    let free = r.free_set();
    r.dev.request_unused_pages(9).unwrap();
    r.pump();
    assert_eq!(r.pages_of(&r.take_events(), 9), free);
    // Without the stats queue the v3 rule drops the misc queue.
    let mut r = rig_with(16 * MIB, AbiMode::V3, HintOffer::ALL, false, 128);
    assert!(!r.drv.features().misc_vq());
    assert!(matches!(
        r.dev.request_unused_pages(1),
        Err(BalloonError::Hint(HintError::NotNegotiated { .. }))
    ));
    let r2 = rig_with(16 * MIB, AbiMode::Vballoon, HintOffer::ALL, false, 128);
    assert_eq!(
        r2.dev.transport().driver_features() & bit(VBALLOON_F_MISC_VQ),
        0
    );
    r.pump();
}

#[test]
fn test_misc_stale_request_id_is_ignored() {
    let mut r = rig(16 * MIB);
    // The guest starts answering request 1; the host moves on to request 2 meanwhile.
    r.dev.request_unused_pages(1).unwrap();
    r.drv.service_hints(&mut r.guest).unwrap();
    assert_eq!(r.drv.answering_unused_request(), Some(1));
    assert!(
        !r.dev.request_unused_pages(2).unwrap(),
        "buffer not back yet"
    );
    r.guest.allocator_mut().alloc(0).unwrap();
    let free = r.free_set();
    r.pump();
    let ev = r.take_events();
    assert_eq!(r.pages_of(&ev, 2), free, "only request 2's answer counts");
    assert_eq!(finished(&ev), vec![2]);
    let d = r.dev.hint_counters();
    assert_eq!(d.stale_replies, 1);
    assert_eq!(d.unused_requests, 2);
    assert_eq!(
        r.dev.errors_total(),
        0,
        "a late answer is expected, not an error"
    );
    // A cancelled request's answer is dropped too.
    r.dev.request_unused_pages(3).unwrap();
    r.dev.cancel_unused_pages();
    r.pump();
    assert!(r.take_events().is_empty());
    assert_eq!(r.dev.hint_counters().stale_replies, 2);
}

/// Every free aligned 4 MiB block, as the upstream driver can allocate them.
fn order10_blocks(g: &Guest) -> PageSet {
    let mut set = PageSet::new(g.memory().pages());
    for p in g.allocator().free_list(10) {
        set.insert_range(p.0, 1024);
    }
    set
}

#[test]
fn test_upstream_hints_every_free_4mib_block_and_holds_them_until_done() {
    // A queue of 8: seven blocks per batch, one descriptor kept for the command id.
    let mut r = rig_with(96 * MIB, AbiMode::Vballoon, HintOffer::ALL, true, 8);
    let _w = scatter(&mut r.guest, 20 * MIB, 3);
    let blocks = order10_blocks(&r.guest);
    assert!(blocks.count() >= 16 * 1024);
    let free_before = r.guest.allocator().free_pages();
    r.dev.start_free_page_hint(ID).unwrap();
    assert_eq!(r.dev.free_page_status(), FreePageStatus::Requested(ID));
    r.pump();
    let ev = r.take_events();
    assert_eq!(r.pages_of(&ev, u64::from(ID)), blocks);
    assert_eq!(finished(&ev), vec![u64::from(ID)], "the guest's STOP");
    assert_eq!(r.dev.free_page_status(), FreePageStatus::Stop);
    // Held, not free: the blocks stay allocated until DONE.
    let held: u64 = r.drv.held_hint_pages();
    assert_eq!(held, blocks.count());
    assert_eq!(r.guest.allocator().free_pages(), free_before - held);
    assert_eq!(r.guest.allocator().free_blocks(10), 0);
    let d = r.dev.hint_counters();
    assert_eq!((d.cmd_id_acks, d.guest_stops, d.stale_blocks), (1, 1, 0));
    assert_eq!(d.hint_pages, blocks.count());
    // STOP from the host changes nothing for the guest's blocks...
    r.dev.stop_free_page_hint().unwrap();
    r.pump();
    assert_eq!(r.drv.held_hint_pages(), held);
    // ...DONE gives them back.
    r.dev.free_page_hint_done().unwrap();
    assert_eq!(
        r.dev.transport().read_config_u32(8).unwrap(),
        VIRTIO_BALLOON_CMD_ID_DONE
    );
    r.pump();
    assert_eq!(r.drv.held_hint_pages(), 0);
    assert_eq!(r.guest.allocator().free_pages(), free_before);
    assert_eq!(order10_blocks(&r.guest), blocks);
    assert_eq!(r.drv.hint_counters().done_blocks, blocks.count() / 1024);
    r.guest.allocator().check_invariants().unwrap();
    assert_eq!(r.dev.errors_total(), 0);
}

#[test]
fn test_upstream_stale_cmd_id_is_ignored() {
    let mut r = rig_with(64 * MIB, AbiMode::Vballoon, HintOffer::ALL, true, 8);
    r.dev.start_free_page_hint(ID).unwrap();
    // The guest acknowledges ID and sends a first batch...
    r.drv.service_hints(&mut r.guest).unwrap();
    // ...but the host stopped and asked again before it looked at them.
    r.dev.stop_free_page_hint().unwrap();
    r.dev.start_free_page_hint(ID + 1).unwrap();
    r.pump();
    let ev = r.take_events();
    let got = r.pages_of(&ev, u64::from(ID + 1));
    assert!(got.count() > 0);
    assert_eq!(finished(&ev), vec![u64::from(ID + 1)]);
    let d = r.dev.hint_counters();
    assert!(d.stale_blocks >= 1, "{d:?}");
    assert!(d.stale_cmd_ids >= 1, "{d:?}");
    assert_eq!(r.dev.errors_total(), 0);
    // Every block the guest holds was hinted under one id or the other: the stale ones too
    // are held (the guest cannot tell), and they are free again at DONE.
    assert_eq!(r.drv.held_hint_pages(), got.count() + d.stale_blocks * 1024);
    // An id is not issued twice before the driver's STOP for it; 0 and 1 are reserved.
    r.dev.start_free_page_hint(ID + 2).unwrap();
    assert!(matches!(
        r.dev.start_free_page_hint(ID + 2),
        Err(BalloonError::Hint(HintError::CmdIdNotAllowed { .. }))
    ));
    for bad in [0, 1] {
        assert!(r.dev.start_free_page_hint(bad).is_err());
    }
    r.pump();
    r.dev.start_free_page_hint(ID + 2).unwrap();
    r.dev.free_page_hint_done().unwrap();
    r.pump();
    assert_eq!(r.drv.held_hint_pages(), 0);
}

#[test]
fn test_memory_pressure_takes_held_blocks_back() {
    let mut r = rig_with(32 * MIB, AbiMode::Vballoon, HintOffer::ALL, true, 16);
    // Use up everything below order 10, so only the hinted blocks are left.
    let mut w = Workload::new(4);
    while r.guest.allocator().free_pages() > r.guest.allocator().free_blocks(10) * 1024 {
        w.allocate(&mut r.guest, PAGE_SIZE, 0).unwrap();
    }
    r.dev.start_free_page_hint(ID).unwrap();
    r.pump();
    let held = r.drv.held_hint_pages();
    assert!(held >= 4 * 1024);
    assert_eq!(r.guest.allocator().free_pages(), 0);
    // An allocation now fails in the allocator, and the shrinker returns one block.
    assert!(r.guest.allocator_mut().alloc(0).is_err());
    let p = r.guest.alloc(0).unwrap();
    assert_eq!(r.drv.held_hint_pages(), held - 1024);
    assert_eq!(r.drv.hint_counters().shrunk_blocks, 1);
    // A workload that needs more takes more.
    w.allocate(&mut r.guest, 6 * MIB, 0).unwrap();
    assert_eq!(r.drv.held_hint_pages(), held - 2 * 1024);
    assert!(!r.drv.held_hint_blocks().contains(&Pfn(p.0 & !1023)));
    // DONE returns what is left; nothing is freed twice.
    r.dev.free_page_hint_done().unwrap();
    r.pump();
    assert_eq!(r.drv.held_hint_pages(), 0);
    r.guest.allocator().check_invariants().unwrap();
}

#[test]
fn test_reporting_discards_and_marks_blocks_reported() {
    let mut r = rig(64 * MIB);
    // Stale data in free memory: allocate and fill 48 MiB, free it all.
    let mut w = Workload::new(5);
    w.allocate(&mut r.guest, 48 * MIB, 0).unwrap();
    w.free_all(&mut r.guest).unwrap();
    let mem = Arc::clone(r.guest.memory());
    let resident = |m: &GuestMemory| m.resident_pages(GuestAddress(0), m.size()).unwrap();
    let before = resident(&mem);
    assert!(before >= 48 * MIB / PAGE_SIZE);
    let big: u64 = (9..=10)
        .map(|o| r.guest.allocator().free_blocks(o) << o)
        .sum();
    r.report_all();
    let a = r.guest.allocator();
    assert_eq!(a.reported_pages(), big);
    assert_eq!(a.isolated_pages(), 0);
    a.check_invariants().unwrap();
    let after = resident(&mem);
    assert!(
        before - after >= 47 * MIB / PAGE_SIZE,
        "residency {before} -> {after}"
    );
    let c = r.drv.hint_counters();
    assert_eq!(c.reported_pages, big);
    assert!(c.reports >= 1 && c.reported_blocks <= c.reports * 32);
    assert_eq!(r.dev.hint_counters().reported_pages, big);
    // Nothing new to report: the next pass sends nothing.
    let reports = c.reports;
    r.report_all();
    assert_eq!(r.drv.hint_counters().reports, reports);
    // An allocation clears the mark; the block is reported again once free.
    let p = r.guest.allocator_mut().alloc(10).unwrap();
    assert!(!r.guest.allocator().is_reported(p));
    r.guest.allocator_mut().free(p, 10).unwrap();
    r.report_all();
    assert_eq!(r.drv.hint_counters().reports, reports + 1);
    assert!(r.guest.allocator().is_reported(p));
}

#[test]
fn test_no_hint_features_no_hints() {
    let mut r = rig_with(16 * MIB, AbiMode::Vballoon, HintOffer::default(), true, 128);
    let f = r.dev.transport().driver_features();
    for b in [
        VBALLOON_F_MISC_VQ,
        VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        VIRTIO_BALLOON_F_REPORTING,
    ] {
        assert_eq!(f & bit(b), 0);
    }
    assert_eq!(r.drv.queue_indexes().count, 3);
    assert!(r.drv.hint_area().is_none());
    assert!(matches!(
        r.dev.request_unused_pages(1),
        Err(BalloonError::Hint(HintError::NotNegotiated { .. }))
    ));
    assert!(r.dev.start_free_page_hint(ID).is_err());
    assert!(matches!(
        r.drv.report_free_pages(&mut r.guest),
        Err(DriverError::NotReady(_))
    ));
    assert_eq!(r.drv.service_hints(&mut r.guest).unwrap(), HintStep::Idle);
    r.pump();
    assert!(r.take_events().is_empty());
}

#[test]
fn test_queue_indexes_follow_the_hint_features() {
    let r = rig(16 * MIB);
    let q = r.drv.queue_indexes();
    assert_eq!(
        (q.stats, q.misc, q.free_page, q.reporting, q.count),
        (Some(2), Some(3), Some(4), Some(5), 6)
    );
    let offer = HintOffer {
        misc: false,
        ..HintOffer::ALL
    };
    let r = rig_with(16 * MIB, AbiMode::Vballoon, offer, false, 128);
    let q = r.drv.queue_indexes();
    assert_eq!(
        (q.stats, q.misc, q.free_page, q.reporting, q.count),
        (None, None, Some(2), Some(3), 4)
    );
}

#[test]
fn test_misc_answer_leaves_out_ballooned_and_held_pages() {
    let mut r = rig(64 * MIB);
    // Inflate 2 MiB into the balloon.
    r.dev.set_num_pages(512).unwrap();
    for _ in 0..10_000 {
        match r.drv.advance(&mut r.guest).unwrap() {
            vballoon::guest::Step::Settled => break,
            _ => {
                r.dev.process_kicked().unwrap();
            }
        }
    }
    assert_eq!(r.drv.balloon_pages(), 512);
    // Hint upstream and keep the blocks (no DONE yet).
    r.dev.start_free_page_hint(ID).unwrap();
    r.pump();
    assert!(r.drv.held_hint_pages() > 0);
    r.take_events();
    let mut held = PageSet::new(r.guest.memory().pages());
    r.drv.unused_pages_into(&mut held);
    assert_eq!(held.count(), 512 + r.drv.held_hint_pages());
    let free = r.free_set();
    r.dev.request_unused_pages(77).unwrap();
    r.pump();
    let hinted = r.pages_of(&r.take_events(), 77);
    assert_eq!(hinted, free);
    let mut both = hinted.clone();
    both.intersect_with(&held);
    assert!(both.is_empty(), "ballooned or held pages hinted as unused");
}
