//! Config space layout and fixed sizes (virtio spec §5.5.4).

/// Offset of `num_pages` (le32, device-written): the balloon size the host wants, in 4 KiB pages.
pub const CONFIG_NUM_PAGES: usize = 0;
/// Offset of `actual` (le32, driver-written): the balloon size the guest has reached.
pub const CONFIG_ACTUAL: usize = 4;
/// Offset of `free_page_hint_cmd_id` (le32, device-written), with FREE_PAGE_HINT.
pub const CONFIG_FREE_PAGE_HINT_CMD_ID: usize = 8;
/// Offset of `poison_val` (le32, driver-written), with PAGE_POISON.
pub const CONFIG_POISON_VAL: usize = 12;
/// Size of the config space with every field present.
pub const CONFIG_SIZE: usize = 16;

/// §5.5.6: legacy PFNs are in 4096-byte units whatever the guest page size.
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// Linux sends at most this many PFNs per inflate or deflate buffer.
pub const VIRTIO_BALLOON_ARRAY_PFNS_MAX: usize = 256;

/// §5.5.6.3: free page hint cmd id meaning "stop hinting".
pub const VIRTIO_BALLOON_CMD_ID_STOP: u32 = 0;
/// §5.5.6.3: free page hint cmd id meaning "done: the guest may reuse hinted pages".
pub const VIRTIO_BALLOON_CMD_ID_DONE: u32 = 1;
/// First cmd id the device hands out for a hinting round (ids 0 and 1 are reserved).
pub const VIRTIO_BALLOON_CMD_ID_MIN: u32 = 2;
/// Order of the blocks the guest hints: 4 MiB (Linux's MAX_ORDER - 1 on x86).
pub const VIRTIO_BALLOON_HINT_BLOCK_ORDER: u32 = 10;
/// Lowest order free page reporting reports: 2 MiB (pageblock_order on x86).
pub const PAGE_REPORTING_MIN_ORDER: u32 = 9;
/// Linux reports at most this many blocks per reporting request.
pub const PAGE_REPORTING_CAPACITY: usize = 32;

/// Queue size the device takes and the driver asks for by default (QEMU's inflate, deflate and
/// stats queues).
pub const DEFAULT_QUEUE_SIZE: u16 = 128;
