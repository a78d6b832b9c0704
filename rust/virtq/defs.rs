//! Numbers the virtio spec fixes for split virtqueues (virtio 1.2, §2.7 and §6).

/// The descriptor continues via its `next` field (§2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device write-only; otherwise it is device read-only (§2.7.5).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors (§2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Driver to device: "do not interrupt me when you use a buffer" (§2.7.6, §2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Device to driver: "do not kick me when you add a buffer" (§2.7.8, §2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Feature bit: descriptors may point at indirect tables (§6, §2.7.5.3).
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event` and `avail_event` suppress notifications (§6, §2.7.7, §2.7.10).
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
/// Feature bit: the device is virtio 1.x, so rings are little-endian (§6).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bit the device sets when it hit an error it cannot recover from (§2.1).
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;

/// Largest split queue size (§2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes per descriptor (§2.7.5: `struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;
/// Alignment of the descriptor table (§2.7, table "Virtqueue Part Alignment").
pub const DESC_TABLE_ALIGN: u64 = 16;
/// Alignment of the available ring (§2.7).
pub const AVAIL_RING_ALIGN: u64 = 2;
/// Alignment of the used ring (§2.7).
pub const USED_RING_ALIGN: u64 = 4;

/// Bytes of `flags` + `idx` in front of both rings (§2.7.6, §2.7.8).
pub const RING_HEADER_SIZE: u64 = 4;
/// Bytes per available ring entry (a `le16` head index, §2.7.6).
pub const AVAIL_ELEM_SIZE: u64 = 2;
/// Bytes per used ring entry (`le32 id`, `le32 len`, §2.7.8).
pub const USED_ELEM_SIZE: u64 = 8;
/// Bytes of the trailing event field (`used_event` / `avail_event`, §2.7.6, §2.7.8).
pub const EVENT_FIELD_SIZE: u64 = 2;

/// Largest total length of one chain: "longer than 2^32 bytes" is forbidden (§2.7.5.2).
pub const MAX_CHAIN_BYTES: u64 = 1 << 32;

/// Whether feature bit `bit` is set in `features`.
pub const fn has_feature(features: u64, bit: u32) -> bool {
    bit < 64 && features & (1u64 << bit) != 0
}

/// The feature mask with only `bit` set.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_feature_bits() {
        assert_eq!(feature(VIRTIO_F_INDIRECT_DESC), 0x1000_0000);
        assert_eq!(feature(VIRTIO_F_EVENT_IDX), 0x2000_0000);
        assert_eq!(feature(VIRTIO_F_VERSION_1), 0x1_0000_0000);
        assert!(has_feature(0x2000_0000, VIRTIO_F_EVENT_IDX));
        assert!(!has_feature(0x2000_0000, VIRTIO_F_INDIRECT_DESC));
        assert!(!has_feature(u64::MAX, 64));
    }
}
