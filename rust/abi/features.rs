//! Feature bits and the queue numbering they imply.

/// Device ID of the traditional memory balloon (virtio spec §5).
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// §5.5.3: the host must be told before ballooned pages are used again.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// §5.5.3: a statistics virtqueue is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// §5.5.3: the guest deflates the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// §5.5.3: the device can ask for free page hints over a free-page virtqueue.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// §5.5.3: the guest writes `poison_val` into pages it frees.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// §5.5.3: the guest reports free pages over a reporting virtqueue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// vballoon: inflate/deflate carry the seed's scatter-gather page bitmap (seed v3 bit 3).
///
/// Device-specific bits 16 and up are unused by the upstream balloon (bits 0-5; 6-8 are taken
/// by out-of-tree proposals), so the seed's features can live beside upstream's.
pub const VBALLOON_F_PAGE_BITMAP: u32 = 16;
/// vballoon: the seed's misc virtqueue for host requests (unused-page queries); seed v3 bit 4.
pub const VBALLOON_F_MISC_VQ: u32 = 17;
/// vballoon: inflate/deflate carry {pfn, length} extents (the v6 range format).
pub const VBALLOON_F_PAGE_EXTENTS: u32 = 18;
/// vballoon: inflate/deflate carry per-window bitmap-or-extents, whichever is smaller.
pub const VBALLOON_F_PAGE_AUTO: u32 = 19;

/// Seed v3 ABI mode: PAGE_BITMAP as the patch numbered it (collides with FREE_PAGE_HINT).
pub const V3_VIRTIO_BALLOON_F_PAGE_BITMAP: u32 = 3;
/// Seed v3 ABI mode: MISC_VQ as the patch numbered it (collides with PAGE_POISON).
pub const V3_VIRTIO_BALLOON_F_MISC_VQ: u32 = 4;

pub use crate::virtq::defs::feature as bit;

/// Which numbering of the seed's features is on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AbiMode {
    /// Upstream bits 0-5 with their upstream meaning, seed features at bits 16-19.
    #[default]
    Vballoon,
    /// Byte-for-byte the v3 patch: PAGE_BITMAP = 3, MISC_VQ = 4; upstream hinting and poison
    /// cannot be offered in this mode.
    V3,
}

impl AbiMode {
    /// The feature bit that means "page bitmap" in this mode.
    pub const fn page_bitmap_bit(self) -> u32 {
        match self {
            AbiMode::Vballoon => VBALLOON_F_PAGE_BITMAP,
            AbiMode::V3 => V3_VIRTIO_BALLOON_F_PAGE_BITMAP,
        }
    }

    /// The feature bit that means "misc virtqueue" in this mode.
    pub const fn misc_vq_bit(self) -> u32 {
        match self {
            AbiMode::Vballoon => VBALLOON_F_MISC_VQ,
            AbiMode::V3 => V3_VIRTIO_BALLOON_F_MISC_VQ,
        }
    }

    /// Whether upstream FREE_PAGE_HINT and PAGE_POISON may be offered (not in v3 mode).
    pub const fn has_upstream_hinting(self) -> bool {
        matches!(self, AbiMode::Vballoon)
    }
}

/// What the negotiated features mean, decoded once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonFeatures {
    /// Raw negotiated bits.
    pub bits: u64,
    /// The numbering in use.
    pub mode: AbiMode,
}

impl BalloonFeatures {
    /// Decodes `bits` under `mode`.
    pub const fn new(bits: u64, mode: AbiMode) -> Self {
        BalloonFeatures { bits, mode }
    }

    /// Whether feature number `b` is set.
    pub const fn has(self, b: u32) -> bool {
        self.bits & bit(b) != 0
    }

    /// MUST_TELL_HOST.
    pub const fn must_tell_host(self) -> bool {
        self.has(VIRTIO_BALLOON_F_MUST_TELL_HOST)
    }
    /// STATS_VQ.
    pub const fn stats_vq(self) -> bool {
        self.has(VIRTIO_BALLOON_F_STATS_VQ)
    }
    /// DEFLATE_ON_OOM.
    pub const fn deflate_on_oom(self) -> bool {
        self.has(VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
    }
    /// Seed PAGE_BITMAP (numbered by mode).
    pub const fn page_bitmap(self) -> bool {
        self.has(self.mode.page_bitmap_bit())
    }
    /// Seed MISC_VQ (numbered by mode). As in v3, it needs STATS_VQ to keep queue 3 numbering.
    pub const fn misc_vq(self) -> bool {
        self.has(self.mode.misc_vq_bit()) && self.stats_vq()
    }
    /// Extents encoding (vballoon mode only).
    pub const fn page_extents(self) -> bool {
        matches!(self.mode, AbiMode::Vballoon) && self.has(VBALLOON_F_PAGE_EXTENTS)
    }
    /// Auto encoding (vballoon mode only).
    pub const fn page_auto(self) -> bool {
        matches!(self.mode, AbiMode::Vballoon) && self.has(VBALLOON_F_PAGE_AUTO)
    }
    /// Upstream FREE_PAGE_HINT (not in v3 mode, where bit 3 is PAGE_BITMAP).
    pub const fn free_page_hint(self) -> bool {
        self.mode.has_upstream_hinting() && self.has(VIRTIO_BALLOON_F_FREE_PAGE_HINT)
    }
    /// Upstream PAGE_POISON (not in v3 mode).
    pub const fn page_poison(self) -> bool {
        self.mode.has_upstream_hinting() && self.has(VIRTIO_BALLOON_F_PAGE_POISON)
    }
    /// Upstream REPORTING.
    pub const fn reporting(self) -> bool {
        self.has(VIRTIO_BALLOON_F_REPORTING)
    }

    /// Queue indexes, assigned in order over the queues present (as Linux and QEMU do, not the
    /// spec's fixed numbers; see protocol.md §4.3).
    pub const fn queues(self) -> QueueIndexes {
        let mut next = 2;
        let stats = next_index(self.stats_vq(), &mut next);
        let misc = next_index(self.misc_vq(), &mut next);
        let free_page = next_index(self.free_page_hint(), &mut next);
        let reporting = next_index(self.reporting(), &mut next);
        QueueIndexes {
            inflate: 0,
            deflate: 1,
            stats,
            misc,
            free_page,
            reporting,
            count: next,
        }
    }
}

/// The index `next` if the queue is `present`, and `next` moves past it.
const fn next_index(present: bool, next: &mut u16) -> Option<u16> {
    if !present {
        return None;
    }
    *next += 1;
    Some(*next - 1)
}

/// Where each balloon queue sits, given the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndexes {
    /// inflateq.
    pub inflate: u16,
    /// deflateq.
    pub deflate: u16,
    /// statsq, with STATS_VQ.
    pub stats: Option<u16>,
    /// The seed's misc queue, with MISC_VQ (and STATS_VQ).
    pub misc: Option<u16>,
    /// free_page_vq, with FREE_PAGE_HINT.
    pub free_page: Option<u16>,
    /// reporting_vq, with REPORTING.
    pub reporting: Option<u16>,
    /// Number of queues.
    pub count: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queue_indexes_follow_present_queues() {
        let f = |bits| BalloonFeatures::new(bits, AbiMode::Vballoon).queues();
        let q = f(0);
        assert_eq!(
            (q.stats, q.free_page, q.reporting, q.count),
            (None, None, None, 2)
        );
        let q = f(bit(VIRTIO_BALLOON_F_REPORTING));
        assert_eq!((q.reporting, q.count), (Some(2), 3));
        let q = f(bit(VIRTIO_BALLOON_F_STATS_VQ)
            | bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT)
            | bit(VIRTIO_BALLOON_F_REPORTING));
        assert_eq!(
            (q.stats, q.free_page, q.reporting, q.count),
            (Some(2), Some(3), Some(4), 5)
        );
    }

    #[test]
    fn test_v3_mode_reads_bits_3_and_4_as_seed_features() {
        let bits = bit(VIRTIO_BALLOON_F_STATS_VQ) | bit(3) | bit(4);
        let v3 = BalloonFeatures::new(bits, AbiMode::V3);
        assert!(v3.page_bitmap() && v3.misc_vq());
        assert!(!v3.free_page_hint() && !v3.page_poison());
        assert_eq!(v3.queues().misc, Some(3));
        let up = BalloonFeatures::new(bits, AbiMode::Vballoon);
        assert!(up.free_page_hint() && up.page_poison() && !up.page_bitmap());
    }

    #[test]
    fn test_misc_vq_needs_stats_vq() {
        let f = BalloonFeatures::new(bit(VBALLOON_F_MISC_VQ), AbiMode::Vballoon);
        assert!(!f.misc_vq());
    }
}
