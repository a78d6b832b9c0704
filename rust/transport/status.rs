//! Device status bits (virtio 1.2 §2.1).

/// The guest OS has found the device and recognised it as a valid virtio device.
pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
/// The guest OS knows how to drive the device.
pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// The driver has acknowledged the features it understands; negotiation is complete.
pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
/// The device hit an error it cannot recover from and needs a reset.
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;
/// Something went wrong in the guest and it gave up on the device.
pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;

/// The status bits by name, for messages: `"ACKNOWLEDGE|DRIVER"`.
pub fn status_names(status: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (VIRTIO_CONFIG_S_ACKNOWLEDGE, "ACKNOWLEDGE"),
        (VIRTIO_CONFIG_S_DRIVER, "DRIVER"),
        (VIRTIO_CONFIG_S_FEATURES_OK, "FEATURES_OK"),
        (VIRTIO_CONFIG_S_DRIVER_OK, "DRIVER_OK"),
        (VIRTIO_CONFIG_S_NEEDS_RESET, "NEEDS_RESET"),
        (VIRTIO_CONFIG_S_FAILED, "FAILED"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| status & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "RESET".to_string()
    } else {
        v.join("|")
    }
}
