//! Driver and device on two threads, woken only by kicks and interrupts: no lost wakeups, every
//! chain comes back once with the device's answer.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::virtq::defs::{
    feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use vballoon::virtq::{pair_with, DescriptorChain, NotifyMode, PairConfig};

const SIZE: u16 = 64;
const BUFS: u64 = 0x10_0000;
/// Long enough that only a lost wakeup (a bug) hits it on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `total` request/response chains; returns (driver waits that timed out, device waits
/// that timed out).
fn run(features: u64, notify: NotifyMode, total: u32) -> (u32, u32) {
    let mem = Arc::new(GuestMemory::new(4 << 20, Backing::Anonymous).unwrap());
    let mut cfg = PairConfig::new(GuestAddress(0x1000), SIZE, features);
    cfg.notify = notify;
    let (mut drv, mut dev) = pair_with(Arc::clone(&mem), &cfg).unwrap();

    let device = thread::spawn(move || {
        let mem = Arc::clone(dev.mem());
        let mut chain = DescriptorChain::new();
        let mut timeouts = 0;
        let mut done = 0;
        while done < total {
            dev.disable_notifications().unwrap();
            while dev.pop_into(&mut chain).unwrap() {
                // Request: a u32 in the readable buffer; answer: that value plus one.
                let mut req = [0u8; 4];
                mem.read(chain.readable()[0].addr, &mut req).unwrap();
                let answer = (u32::from_le_bytes(req) + 1).to_le_bytes();
                let n = chain.write_all(&mem, &answer).unwrap();
                dev.add_used(chain.head(), n).unwrap();
                done += 1;
            }
            dev.signal_used().unwrap();
            if done < total
                && !dev.enable_notifications().unwrap()
                && dev.wait_kick(Some(TIMEOUT)).unwrap() == 0
            {
                timeouts += 1;
            }
        }
        timeouts
    });

    // The device answers in order and at most SIZE / 2 two-buffer chains are in flight, so
    // slot `n % SIZE` of chain number n is never shared by two chains in flight.
    let req = |slot: u32| GuestAddress(BUFS + u64::from(slot) * 16);
    let resp = |slot: u32| GuestAddress(BUFS + u64::from(slot) * 16 + 8);
    let mut sent_as = vec![0u32; usize::from(SIZE)];
    let (mut sent, mut received, mut timeouts) = (0u32, 0u32, 0u32);
    drv.disable_interrupts().unwrap();
    while received < total {
        while sent < total && drv.num_free() >= 2 {
            let slot = sent % u32::from(SIZE);
            mem.write_u32(req(slot), sent).unwrap();
            let head = drv
                .add_chain(&[(req(slot), 4)], &[(resp(slot), 4)])
                .unwrap();
            sent_as[usize::from(head)] = sent;
            sent += 1;
        }
        drv.kick().unwrap();
        let mut got = false;
        while let Some(u) = drv.pop_used().unwrap() {
            let n = sent_as[usize::from(u.head)];
            assert_eq!(n, received, "answers come back in order");
            assert_eq!(u.len, 4);
            let slot = n % u32::from(SIZE);
            assert_eq!(mem.read_u32(resp(slot)).unwrap(), n + 1);
            received += 1;
            got = true;
        }
        if !got && !drv.enable_interrupts().unwrap() {
            if drv.wait_interrupt(Some(TIMEOUT)).unwrap() == 0 {
                timeouts += 1;
            }
            drv.disable_interrupts().unwrap();
        }
    }
    let dev_timeouts = device.join().unwrap();
    (timeouts, dev_timeouts)
}

#[test]
fn test_two_threads_eventfd_event_idx() {
    let f = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_EVENT_IDX);
    assert_eq!(run(f, NotifyMode::EventFd, 20_000), (0, 0));
}

#[test]
fn test_two_threads_eventfd_flags() {
    assert_eq!(
        run(feature(VIRTIO_F_VERSION_1), NotifyMode::EventFd, 20_000),
        (0, 0)
    );
}

#[test]
fn test_two_threads_eventfd_event_idx_indirect() {
    let f =
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_EVENT_IDX) | feature(VIRTIO_F_INDIRECT_DESC);
    assert_eq!(run(f, NotifyMode::EventFd, 20_000), (0, 0));
}

#[test]
fn test_two_threads_polling() {
    let f = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_EVENT_IDX);
    assert_eq!(run(f, NotifyMode::Polling, 5_000), (0, 0));
}
