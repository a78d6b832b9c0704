//! Statistics tags (virtio spec §5.5.6.4); each entry on the wire is {le16 tag; le64 val}.

/// Bytes swapped in.
pub const VIRTIO_BALLOON_S_SWAP_IN: u16 = 0;
/// Bytes swapped out.
pub const VIRTIO_BALLOON_S_SWAP_OUT: u16 = 1;
/// Major page faults.
pub const VIRTIO_BALLOON_S_MAJFLT: u16 = 2;
/// Minor page faults.
pub const VIRTIO_BALLOON_S_MINFLT: u16 = 3;
/// Free memory in bytes.
pub const VIRTIO_BALLOON_S_MEMFREE: u16 = 4;
/// Total memory in bytes.
pub const VIRTIO_BALLOON_S_MEMTOT: u16 = 5;
/// Available memory in bytes (free plus reclaimable).
pub const VIRTIO_BALLOON_S_AVAIL: u16 = 6;
/// Disk caches in bytes.
pub const VIRTIO_BALLOON_S_CACHES: u16 = 7;
/// Hugetlb page allocations.
pub const VIRTIO_BALLOON_S_HTLB_PGALLOC: u16 = 8;
/// Hugetlb page allocation failures.
pub const VIRTIO_BALLOON_S_HTLB_PGFAIL: u16 = 9;
/// Number of tags defined by the spec text (0-9); newer kernels define up to 16.
pub const VIRTIO_BALLOON_S_NR: u16 = 10;
/// Size of one stats entry on the wire.
pub const STATS_ENTRY_SIZE: usize = 10;

/// Name of a stats tag, as QEMU's `guest-stats` names them.
pub fn stat_name(tag: u16) -> Option<&'static str> {
    Some(match tag {
        VIRTIO_BALLOON_S_SWAP_IN => "swap-in",
        VIRTIO_BALLOON_S_SWAP_OUT => "swap-out",
        VIRTIO_BALLOON_S_MAJFLT => "major-faults",
        VIRTIO_BALLOON_S_MINFLT => "minor-faults",
        VIRTIO_BALLOON_S_MEMFREE => "free-memory",
        VIRTIO_BALLOON_S_MEMTOT => "total-memory",
        VIRTIO_BALLOON_S_AVAIL => "available-memory",
        VIRTIO_BALLOON_S_CACHES => "disk-caches",
        VIRTIO_BALLOON_S_HTLB_PGALLOC => "htlb-pgalloc",
        VIRTIO_BALLOON_S_HTLB_PGFAIL => "htlb-pgfail",
        _ => return None,
    })
}
