//! The device driven only through the narrow transport interface (`VirtioDevice`), as the
//! vhost-user backend drives it: rings at addresses handed in from outside, the caller's own
//! eventfds for kicks and interrupts, feature checks at activation, config reads and writes,
//! and a reset followed by a renegotiation onto other rings with other features.

use std::sync::Arc;

use vballoon::abi::{
    bit, CONFIG_ACTUAL, CONFIG_NUM_PAGES, VIRTIO_BALLOON_F_MUST_TELL_HOST,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use vballoon::device::{BalloonDevice, BalloonError, DeviceConfig, QueueRole};
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::transport::{Activation, QueueActivation, TransportError, VirtioDevice};
use vballoon::virtq::defs::{feature, VIRTIO_F_VERSION_1};
use vballoon::virtq::{DriverQueue, Notifier, QueueLayout};

/// 16 MiB of guest RAM.
const PAGES: u64 = 4096;
/// Where the first and the second negotiation put their rings.
const RINGS: [u64; 2] = [0x10_0000, 0x30_0000];
/// Where inflate messages go.
const BUFS: u64 = 0x50_0000;

/// The device's queues as the caller set them up, and the driver's ends of them.
struct Wired {
    activation: Activation,
    driver: Vec<DriverQueue>,
}

/// `n` queues of 16 entries at `rings`, each with a fresh kick and call eventfd.
fn wire(mem: &Arc<GuestMemory>, features: u64, n: u16, rings: u64) -> Wired {
    let mut queues = Vec::new();
    let mut driver = Vec::new();
    for i in 0..n {
        let layout = QueueLayout::place(GuestAddress(rings + u64::from(i) * 0x1000), 16).unwrap();
        let (kick, call) = (Notifier::eventfd().unwrap(), Notifier::eventfd().unwrap());
        let mut q = DriverQueue::new(Arc::clone(mem), layout, features).unwrap();
        q.set_notifiers(kick.clone(), call.clone());
        driver.push(q);
        queues.push(QueueActivation { layout, kick, call });
    }
    Wired {
        activation: Activation { features, queues },
        driver,
    }
}

/// Inflates `pfns` through queue 0 (PFN arrays) and serves it with a notify.
fn inflate(dev: &mut BalloonDevice, mem: &GuestMemory, w: &mut Wired, pfns: &[u32]) {
    let msg: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write(GuestAddress(BUFS), &msg).unwrap();
    let len = u32::try_from(msg.len()).unwrap();
    w.driver[0]
        .add_chain(&[(GuestAddress(BUFS), len)], &[])
        .unwrap();
    w.driver[0].kick().unwrap();
    dev.notify(0).unwrap();
    assert!(w.driver[0].pop_used().unwrap().is_some(), "buffer used");
}

fn device() -> (Arc<GuestMemory>, BalloonDevice) {
    let mem = Arc::new(GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap());
    let dev = BalloonDevice::new(Arc::clone(&mem), DeviceConfig::default()).unwrap();
    (mem, dev)
}

#[test]
fn test_activation_from_outside_serves_and_interrupts_through_the_callers_eventfds() {
    let (mem, mut dev) = device();
    let f = feature(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_BALLOON_F_MUST_TELL_HOST)
        | bit(VIRTIO_BALLOON_F_STATS_VQ);
    assert_eq!(dev.queues_for(f), 3);
    let mut w = wire(&mem, f, 3, RINGS[0]);
    VirtioDevice::activate(&mut dev, w.activation.clone()).unwrap();
    assert!(dev.is_active());
    assert_eq!(dev.queue_role(2), Some(QueueRole::Stats));
    inflate(&mut dev, &mem, &mut w, &[100, 101, 102, 700]);
    assert_eq!(dev.balloon_pages(), 4);
    // The interrupt went to the caller's call eventfd, not to the in-process transport's.
    assert_eq!(w.activation.queues[0].call.take().unwrap(), 1);
    assert_eq!(
        dev.transport()
            .interrupt_notifier(0)
            .unwrap()
            .take()
            .unwrap(),
        0
    );

    // Reset, then a renegotiation without the stats queue, rings elsewhere.
    VirtioDevice::reset(&mut dev);
    assert!(!dev.is_active());
    let old_rings = {
        let mut b = vec![0u8; 0x3000];
        mem.read(GuestAddress(RINGS[0]), &mut b).unwrap();
        b
    };
    let fewer = feature(VIRTIO_F_VERSION_1) | bit(VIRTIO_BALLOON_F_MUST_TELL_HOST);
    let mut w2 = wire(&mem, fewer, 2, RINGS[1]);
    VirtioDevice::activate(&mut dev, w2.activation.clone()).unwrap();
    assert_eq!(dev.num_queues(), 2);
    inflate(&mut dev, &mem, &mut w2, &[200]);
    // The host's view of the balloon carries across the reset; the old rings are untouched.
    assert_eq!(dev.balloon_pages(), 5);
    let mut now = vec![0u8; 0x3000];
    mem.read(GuestAddress(RINGS[0]), &mut now).unwrap();
    assert_eq!(now, old_rings);
}

#[test]
fn test_activation_checks_features_and_queues() {
    let (mem, mut dev) = device();
    let offered = dev.offered_features();
    let mth = bit(VIRTIO_BALLOON_F_MUST_TELL_HOST);
    // Not offered.
    let f = feature(VIRTIO_F_VERSION_1) | mth | (1 << 50);
    assert_eq!(offered & (1 << 50), 0);
    let r = VirtioDevice::activate(&mut dev, wire(&mem, f, 2, RINGS[0]).activation);
    assert!(matches!(
        r,
        Err(BalloonError::Transport(
            TransportError::FeaturesRefused { .. }
        ))
    ));
    // No VERSION_1 (no legacy interface).
    let r = VirtioDevice::activate(&mut dev, wire(&mem, mth, 2, RINGS[0]).activation);
    assert!(matches!(
        r,
        Err(BalloonError::Transport(
            TransportError::FeaturesRefused { .. }
        ))
    ));
    // Fewer queues than the features make present.
    let f = feature(VIRTIO_F_VERSION_1) | mth;
    let r = VirtioDevice::activate(&mut dev, wire(&mem, f, 1, RINGS[0]).activation);
    assert!(matches!(r, Err(BalloonError::NotReady { .. })));
    assert!(!dev.is_active());
}

#[test]
fn test_config_reads_and_driver_writes_through_the_interface() {
    let (_mem, mut dev) = device();
    dev.set_num_pages(1234).unwrap();
    assert_eq!(dev.config_notifier().take().unwrap(), 1);
    let mut b = [0u8; 4];
    dev.read_config(CONFIG_NUM_PAGES, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 1234);
    dev.write_config(CONFIG_ACTUAL, &77u32.to_le_bytes())
        .unwrap();
    assert_eq!(dev.actual(), 77);
    // num_pages is the device's; a driver write is refused and changes nothing.
    assert!(matches!(
        dev.write_config(CONFIG_NUM_PAGES, &1u32.to_le_bytes()),
        Err(TransportError::ConfigReadOnly { .. })
    ));
    assert!(dev.write_config(CONFIG_ACTUAL, &[1, 2]).is_err());
    assert!(dev.write_config(usize::MAX - 1, &[0; 4]).is_err());
    assert_eq!(dev.num_pages(), 1234);
}
