//! Unit tests of [`BalloonHints`] on a small guest, the balloon run inline (deterministic):
//! plugging in and out, what an upstream round hints, and command id allocation.

use super::*;
use crate::machine::Scenario;

const MIB: u64 = 1 << 20;

/// 16 MiB: 8 MiB allocated in 4 MiB blocks and filled, half of it freed again, the rest never
/// touched (the balloon's rings and buffers need a free block when it plugs in).
fn small_guest() -> GuestRunner {
    let s = Scenario {
        alloc_order: 10,
        workload_bytes: 8 * MIB,
        free_share: 0.5,
        ..Scenario::m2().with_guest_bytes(16 * MIB)
    };
    s.build().expect("scenario builds").0
}

fn inline(offer: HintOffer) -> BalloonHints {
    BalloonHints::new(BalloonHintsConfig {
        offer,
        run: HintRun::Inline,
        queue_size: 64,
        ..BalloonHintsConfig::default()
    })
}

#[test]
fn test_attach_negotiates_the_offer_and_detach_gives_the_memory_back() {
    let guest = small_guest();
    let free_before = guest.free_pages().count();
    let p = inline(HintOffer::ALL);
    assert!(!p.stats().attached);
    p.attach(&guest).expect("balloon plugs in");
    let s = p.stats();
    assert!(
        s.attached && s.misc && s.free_page_hint && s.reporting,
        "{s:?}"
    );
    // Rings and request buffers come from the guest's own allocator.
    assert!(guest.free_pages().count() < free_before);
    p.detach();
    assert!(!p.stats().attached);
    assert_eq!(guest.free_pages().count(), free_before);
    assert!(p.device_errors().is_empty());
}

#[test]
fn test_upstream_round_hints_free_pages_only_and_done_returns_them() {
    let guest = small_guest();
    let p = inline(HintOffer::ALL);
    p.attach(&guest).expect("balloon plugs in");
    let free = guest.free_pages();
    let mut src = p
        .hint_source(HintMode::Upstream, &guest)
        .expect("source")
        .expect("upstream is supported");
    src.start(1).expect("round starts");
    let mut hinted = PageSet::new(guest.memory().pages());
    let mut finished = false;
    for _ in 0..64 {
        finished = src
            .poll(&mut |r| hinted.insert_range(r.start, r.len))
            .expect("poll");
        if finished {
            break;
        }
    }
    assert!(finished, "the guest never finished the round");
    assert!(
        hinted.count() > 0,
        "no hints from a guest with free 4 MiB blocks"
    );
    let mut outside = hinted.clone();
    outside.difference_with(&free);
    assert_eq!(outside.count(), 0, "hinted pages that were not free");
    // The driver holds the hinted blocks until DONE, then frees them again.
    let held = p.stats().driver.hint_blocks;
    assert!(held > 0);
    src.done();
    drop(src);
    let (shared, _) = p.shared_for(&guest).expect("attached");
    shared.pump(1 << 16).expect("pump");
    assert!(shared.settled());
    assert_eq!(p.stats().driver.done_blocks, held);
    assert_eq!(guest.free_pages().count(), free.count());
}

#[test]
fn test_command_ids_skip_stop_and_done_when_they_wrap() {
    let guest = small_guest();
    let p = inline(HintOffer::ALL);
    let (shared, run) = p.shared_for(&guest).expect("balloon plugs in");
    assert_eq!(run, HintRun::Inline);
    assert_eq!(shared.new_id(), FIRST_ID);
    assert_eq!(shared.new_id(), FIRST_ID + 1);
    shared.next_id.store(u32::MAX, Ordering::Relaxed);
    assert_eq!(shared.new_id(), u32::MAX);
    let wrapped = shared.new_id();
    assert_eq!(wrapped, FIRST_ID);
    assert!(wrapped >= VIRTIO_BALLOON_CMD_ID_MIN);
}
