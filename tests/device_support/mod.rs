//! Set-up the device tests share: the driver's side of the initialisation sequence (virtio 1.2
//! §3.1.1) on the in-process transport, with the rings where each test wants them.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::sync::Arc;

use vballoon::abi::{AbiMode, BalloonFeatures};
use vballoon::device::BalloonDevice;
use vballoon::memory::{GuestAddress, GuestMemory};
use vballoon::transport::{
    Transport, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use vballoon::virtq::{DriverQueue, QueueLayout};

/// Where the driver puts its rings: queue `i` at `at + i * stride`, `size` entries each.
#[derive(Clone, Copy, Debug)]
pub struct Rings {
    pub at: u64,
    pub stride: u64,
    pub size: u16,
}

impl Rings {
    /// Queue `i` at `at + i * stride`, `size` entries each.
    pub const fn new(at: u64, stride: u64, size: u16) -> Rings {
        Rings { at, stride, size }
    }
}

/// Resets the device, negotiates `features` (asserting the device accepts them), sets up every
/// queue they make present at `rings`, wired to the transport's kick and interrupt notifiers,
/// and sets DRIVER_OK; returns the driver's ends of the queues.
pub fn negotiate(
    t: &Transport,
    mem: &Arc<GuestMemory>,
    features: u64,
    rings: Rings,
) -> Vec<DriverQueue> {
    let st = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    t.set_status(0).unwrap();
    t.set_status(st).unwrap();
    t.set_driver_features(features).unwrap();
    let ok = t.set_status(st | VIRTIO_CONFIG_S_FEATURES_OK).unwrap();
    assert_ne!(
        ok & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "features {features:#x} refused"
    );
    let n = BalloonFeatures::new(features, AbiMode::Vballoon)
        .queues()
        .count;
    let mut queues = Vec::new();
    for i in 0..n {
        let at = GuestAddress(rings.at + u64::from(i) * rings.stride);
        let layout = QueueLayout::place(at, rings.size).unwrap();
        let mut q = DriverQueue::new(Arc::clone(mem), layout, features).unwrap();
        q.set_notifiers(
            t.kick_notifier(i).unwrap(),
            t.interrupt_notifier(i).unwrap(),
        );
        t.set_queue(i, layout).unwrap();
        t.set_queue_ready(i, true).unwrap();
        queues.push(q);
    }
    t.set_status(st | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
        .unwrap();
    queues
}

/// Negotiates every feature the device offers with rings at `rings`, and activates it.
pub fn start(dev: &mut BalloonDevice, rings: Rings) -> Vec<DriverQueue> {
    let t = Arc::clone(dev.transport());
    let queues = negotiate(&t, dev.memory(), t.device_features(), rings);
    dev.activate().unwrap();
    queues
}
