//! Driver and device in two processes: guest RAM is a shared memfd, kicks and interrupts are
//! eventfds inherited by the child (this test binary, re-run as `child_device`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1};
use vballoon::virtq::{
    pair_with, DescriptorChain, DeviceQueue, EventFd, Notifier, PairConfig, QueueLayout,
};

const MEM: u64 = 1 << 20;
const BASE: u64 = 0x1000;
const SIZE: u16 = 32;
const BUFS: u64 = 0x8_0000;
const TOTAL: u32 = 2000;
const ENV: &str = "VBALLOON_VIRTQ_CHILD_FDS";

fn features() -> u64 {
    feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_EVENT_IDX)
}

/// A copy of `fd` without CLOEXEC, for the child to inherit.
fn inheritable(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is a valid open descriptor owned by this process; dup returns a new one
    // (without FD_CLOEXEC) that we own, or -1, checked below.
    let dup = unsafe { libc::dup(fd) };
    assert!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(dup) }
}

#[test]
fn test_device_in_child_process() {
    let mem = Arc::new(GuestMemory::new(MEM, Backing::Memfd).unwrap());
    let cfg = PairConfig::new(GuestAddress(BASE), SIZE, features());
    let (mut drv, _unused_device) = pair_with(Arc::clone(&mem), &cfg).unwrap();
    let fds = [
        inheritable(mem.memfd().unwrap()),
        inheritable(drv.kick_notifier().raw_fd().unwrap()),
        inheritable(drv.interrupt_notifier().raw_fd().unwrap()),
    ];
    let raw: Vec<String> = fds
        .iter()
        .map(|f| std::os::fd::AsRawFd::as_raw_fd(f).to_string())
        .collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_device", "--ignored", "--nocapture"])
        .env(ENV, raw.join(","))
        .spawn()
        .unwrap();
    drop(fds);

    drv.disable_interrupts().unwrap();
    let (mut sent, mut received) = (0u32, 0u32);
    while received < TOTAL {
        while sent < TOTAL && drv.num_free() >= 2 {
            let slot = u64::from(sent % u32::from(SIZE));
            let req = GuestAddress(BUFS + slot * 8);
            mem.write_u32(req, sent).unwrap();
            drv.add_chain(&[(req, 4)], &[(GuestAddress(req.raw() + 4), 4)])
                .unwrap();
            sent += 1;
        }
        drv.kick().unwrap();
        let mut got = false;
        while let Some(u) = drv.pop_used().unwrap() {
            assert_eq!(u.len, 4);
            let slot = u64::from(received % u32::from(SIZE));
            let answer = mem.read_u32(GuestAddress(BUFS + slot * 8 + 4)).unwrap();
            assert_eq!(answer, !received, "answers come back in order");
            received += 1;
            got = true;
        }
        if !got && !drv.enable_interrupts().unwrap() {
            let n = drv.wait_interrupt(Some(Duration::from_secs(10))).unwrap();
            assert!(n > 0, "no interrupt from the child device");
            drv.disable_interrupts().unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// The device process. Runs only when started by the test above.
#[test]
#[ignore = "started by test_device_in_child_process"]
fn child_device() {
    let Ok(fds) = std::env::var(ENV) else {
        return;
    };
    let fds: Vec<OwnedFd> = fds
        .split(',')
        // SAFETY: the parent passed these descriptors to us and nothing else in this process
        // owns them.
        .map(|s| unsafe { OwnedFd::from_raw_fd(s.parse().unwrap()) })
        .collect();
    let [memfd, kick, interrupt] = <[OwnedFd; 3]>::try_from(fds).unwrap();
    let mem = Arc::new(GuestMemory::from_memfd(memfd, MEM).unwrap());
    let layout = QueueLayout::place(GuestAddress(BASE), SIZE).unwrap();
    let mut dev = DeviceQueue::new(Arc::clone(&mem), layout, features()).unwrap();
    dev.set_notifiers(
        Notifier::EventFd(Arc::new(EventFd::from_owned_fd(kick))),
        Notifier::EventFd(Arc::new(EventFd::from_owned_fd(interrupt))),
    );
    let mut chain = DescriptorChain::new();
    let mut done = 0;
    while done < TOTAL {
        dev.disable_notifications().unwrap();
        while dev.pop_into(&mut chain).unwrap() {
            let v = mem.read_u32(chain.readable()[0].addr).unwrap();
            let n = chain.write_all(&mem, &(!v).to_le_bytes()).unwrap();
            dev.add_used(chain.head(), n).unwrap();
            done += 1;
        }
        dev.signal_used().unwrap();
        if done < TOTAL && !dev.enable_notifications().unwrap() {
            assert!(dev.wait_kick(Some(Duration::from_secs(10))).unwrap() > 0);
        }
    }
}
