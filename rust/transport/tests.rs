use std::sync::Arc;

use super::*;
use crate::memory::GuestAddress;

fn transport(check: Option<FeatureCheck>) -> Arc<Transport> {
    Transport::new(TransportConfig {
        device_id: 5,
        device_features: 0b1011,
        num_queues: 3,
        queue_max_size: 64,
        notify: NotifyMode::Polling,
        driver_writable: 0x00f0,
        feature_check: check,
    })
    .unwrap()
}

fn init(t: &Transport, features: u64) -> u8 {
    t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE).unwrap();
    t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
        .unwrap();
    t.set_driver_features(features).unwrap();
    t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
        .unwrap()
}

#[test]
fn test_negotiation_accepts_a_subset() {
    let t = transport(None);
    assert_eq!(t.negotiated_features(), None);
    let s = init(&t, 0b0011);
    assert!(s & VIRTIO_CONFIG_S_FEATURES_OK != 0);
    assert_eq!(t.negotiated_features(), Some(0b0011));
    assert!(matches!(
        t.set_driver_features(1),
        Err(TransportError::FeaturesAfterOk)
    ));
    assert_eq!(status_names(t.status()), "ACKNOWLEDGE|DRIVER|FEATURES_OK");
}

#[test]
fn test_features_not_offered_are_rejected() {
    let t = transport(None);
    assert!(matches!(
        t.set_driver_features(0b0100),
        Err(TransportError::FeaturesNotOffered { .. })
    ));
}

#[test]
fn test_device_may_refuse_features_ok() {
    let check = FeatureCheck::new(|f| {
        if f & 1 == 0 {
            Err("bit 0 is required".into())
        } else {
            Ok(())
        }
    });
    let t = transport(Some(check));
    let s = init(&t, 0b0010);
    assert_eq!(s & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    assert_eq!(t.negotiated_features(), None);
    assert!(matches!(
        t.set_status(s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK),
        Err(TransportError::DriverOkWithoutFeatures { .. })
    ));
    t.set_status(0).unwrap();
    assert!(init(&t, 0b0011) & VIRTIO_CONFIG_S_FEATURES_OK != 0);
}

#[test]
fn test_status_bits_only_grow_until_reset() {
    let t = transport(None);
    init(&t, 0);
    assert!(matches!(
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE),
        Err(TransportError::StatusCleared { .. })
    ));
    t.set_needs_reset().unwrap();
    assert!(t.has_status(VIRTIO_CONFIG_S_NEEDS_RESET));
    assert_eq!(t.config_notifier().take().unwrap(), 1);
    t.reset();
    assert_eq!(t.status(), 0);
    assert_eq!(t.driver_features(), 0);
}

#[test]
fn test_config_space_access_rules() {
    let t = transport(None);
    let g0 = t.config().generation();
    t.device_write_config_u32(0, 77).unwrap();
    assert_ne!(t.config().generation(), g0);
    assert_eq!(t.config_notifier().take().unwrap(), 1);
    assert_eq!(t.read_config_u32(0).unwrap(), 77);
    assert!(matches!(
        t.driver_write_config_u32(0, 1),
        Err(TransportError::ConfigReadOnly { offset: 0 })
    ));
    t.driver_write_config_u32(4, 9).unwrap();
    assert_eq!(t.read_config_u32(4).unwrap(), 9);
    assert!(t.driver_write_config_u32(2, 9).is_err());
    assert!(t.driver_write_config_u32(16, 9).is_err());
    let mut b = [0u8; 5];
    t.config().read(0, &mut b).unwrap();
    assert_eq!(b, [77, 0, 0, 0, 9]);
    assert!(t.config().read(12, &mut b).is_err());
    let both = t
        .config()
        .read_consistent(|c| (c.read_u32(0).unwrap(), c.read_u32(4).unwrap()));
    assert_eq!(both, (77, 9));
}

#[test]
fn test_queue_setup_rules() {
    let t = transport(None);
    let l = QueueLayout::place(GuestAddress(0), 64).unwrap();
    assert!(matches!(
        t.set_queue_ready(0, true),
        Err(TransportError::QueueNotSetUp { index: 0 })
    ));
    t.set_queue(0, l).unwrap();
    t.set_queue_ready(0, true).unwrap();
    assert!(matches!(
        t.set_queue(0, l),
        Err(TransportError::QueueAlreadyReady { index: 0 })
    ));
    let big = QueueLayout::place(GuestAddress(0), 128).unwrap();
    assert!(matches!(
        t.set_queue(1, big),
        Err(TransportError::QueueSize { .. })
    ));
    assert!(matches!(
        t.set_queue(3, l),
        Err(TransportError::NoSuchQueue { index: 3, count: 3 })
    ));
    assert_eq!(
        t.queue(0).unwrap(),
        QueueSetup {
            layout: Some(l),
            ready: true
        }
    );
    t.kick_notifier(0).unwrap().notify().unwrap();
    t.reset();
    assert_eq!(t.queue(0).unwrap(), QueueSetup::default());
    assert_eq!(t.kick_notifier(0).unwrap().take().unwrap(), 0);
}
