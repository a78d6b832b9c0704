//! What the host configures a balloon device with: the features it offers and how it frees
//! memory.

use std::str::FromStr;

use super::{HintOffer, HugePartial};
use crate::abi::{
    bit, AbiMode, VBALLOON_F_PAGE_AUTO, VBALLOON_F_PAGE_EXTENTS, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::pages::Encoding;
use crate::util::named_enum;
use crate::virtq::defs::{feature, VIRTIO_F_VERSION_1};
use crate::virtq::NotifyMode;

/// How the device gives inflated pages back to the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DiscardPolicy {
    /// One discard per maximal run of pages, runs coalesced across the buffers the device
    /// serves in one go (Firecracker merges up to 2048 PFNs; here a whole batch).
    #[default]
    Coalesced,
    /// One discard per 4 KiB page, as QEMU and Cloud Hypervisor do: the seed's baseline.
    PerPage,
    /// Never discard (bookkeeping only), as QEMU does while discards are inhibited (VFIO).
    Never,
    /// Coalesced runs, and up to 1024 of them per `process_madvise(MADV_DONTNEED)` call on
    /// anonymous RAM (one TLB flush per call instead of per run): for fragmented balloons.
    /// Falls back to [`DiscardPolicy::Coalesced`] where the kernel refuses or RAM is a memfd.
    Vectored,
    /// Coalesced runs, split by page count across up to [`PARALLEL_DISCARD_THREADS`] threads
    /// when a batch frees at least [`PARALLEL_DISCARD_MIN_PAGES`] in runs averaging at least
    /// [`PARALLEL_DISCARD_MIN_RUN_PAGES`]: `MADV_DONTNEED` takes the mmap lock shared, so the
    /// kernel's page freeing runs on several cores at once. A batch of short runs (a fragmented
    /// balloon) is discarded as [`DiscardPolicy::Vectored`] instead.
    Parallel,
}

// The memory layer's parallel-discard thresholds, which this policy follows.
pub use crate::memory::{
    PARALLEL_DISCARD_MIN_PAGES, PARALLEL_DISCARD_MIN_RUN_PAGES, PARALLEL_DISCARD_THREADS,
};

impl DiscardPolicy {
    /// Every policy.
    pub const ALL: [DiscardPolicy; 5] = [
        DiscardPolicy::Coalesced,
        DiscardPolicy::PerPage,
        DiscardPolicy::Never,
        DiscardPolicy::Vectored,
        DiscardPolicy::Parallel,
    ];
}

named_enum!(DiscardPolicy {
    Coalesced => "coalesced" | "coalesce" | "runs",
    PerPage => "per-page" | "per_page" | "per page" | "perpage" | "page",
    Never => "never" | "off" | "none",
    Vectored => "vectored" | "vector" | "batched",
    Parallel => "parallel" | "threads",
});

impl FromStr for DiscardPolicy {
    type Err = String;

    /// Parses a name (`per_page` and `perpage` too), ignoring ASCII case.
    fn from_str(s: &str) -> Result<DiscardPolicy, String> {
        DiscardPolicy::parse(s).ok_or_else(|| {
            format!(
                "unknown discard policy {s:?} (expected coalesced, per-page, never, vectored or \
                 parallel)"
            )
        })
    }
}

/// A balloon device's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceConfig {
    /// Feature numbering on the wire.
    pub abi: AbiMode,
    /// The inflate/deflate encoding to offer: its feature bit (none for [`Encoding::Pfn`]).
    pub encoding: Encoding,
    /// Offer VIRTIO_BALLOON_F_MUST_TELL_HOST.
    pub must_tell_host: bool,
    /// Refuse FEATURES_OK if the driver does not accept MUST_TELL_HOST (the spec allows it).
    pub require_must_tell_host: bool,
    /// Offer VIRTIO_BALLOON_F_STATS_VQ.
    pub stats: bool,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// How inflated pages are given back.
    pub discard: DiscardPolicy,
    /// Fault deflated pages back in right away (`MADV_POPULATE_WRITE`). Off by default: for
    /// anonymous and memfd RAM a discarded page simply faults in, zeroed, on the guest's next
    /// touch, so there is nothing to do (QEMU's MADV_WILLNEED only matters for swapped pages).
    pub populate_on_deflate: bool,
    /// Largest queue size the driver may use.
    pub queue_max_size: u16,
    /// Eventfds (device on its own thread) or polling counters (one thread).
    pub notify: NotifyMode,
    /// The free page hint queues to offer (none by default).
    pub hints: HintOffer,
    /// On THP RAM: discard partly ballooned huge pages now (split) or once full (wait).
    pub huge_partial: HugePartial,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            abi: AbiMode::Vballoon,
            encoding: Encoding::Bitmap,
            must_tell_host: true,
            require_must_tell_host: false,
            stats: true,
            deflate_on_oom: false,
            discard: DiscardPolicy::Coalesced,
            populate_on_deflate: false,
            queue_max_size: crate::abi::DEFAULT_QUEUE_SIZE,
            notify: NotifyMode::EventFd,
            hints: HintOffer::default(),
            huge_partial: HugePartial::default(),
        }
    }
}

impl DeviceConfig {
    /// The feature bits this configuration offers.
    ///
    /// VERSION_1 always (the device is modern and little-endian only). In v3 mode the bitmap
    /// is bit 3 and extents/auto do not exist: asking for them offers PFN arrays only.
    pub fn device_features(&self) -> u64 {
        let mut f = feature(VIRTIO_F_VERSION_1);
        if self.must_tell_host {
            f |= bit(VIRTIO_BALLOON_F_MUST_TELL_HOST);
        }
        if self.stats {
            f |= bit(VIRTIO_BALLOON_F_STATS_VQ);
        }
        if self.deflate_on_oom {
            f |= bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
        }
        match (self.encoding, self.abi) {
            (Encoding::Pfn, _) => {}
            (Encoding::Bitmap, mode) => f |= bit(mode.page_bitmap_bit()),
            (Encoding::Extents, AbiMode::Vballoon) => f |= bit(VBALLOON_F_PAGE_EXTENTS),
            (Encoding::Auto, AbiMode::Vballoon) => f |= bit(VBALLOON_F_PAGE_AUTO),
            (_, AbiMode::V3) => {}
        }
        // Hint queues: the misc queue in the mode's numbering; FREE_PAGE_HINT has no bit in v3
        // mode (bit 3 is the page bitmap there).
        if self.hints.misc {
            f |= bit(self.abi.misc_vq_bit());
        }
        if self.hints.free_page_hint && self.abi.has_upstream_hinting() {
            f |= bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
        }
        if self.hints.reporting {
            f |= bit(VIRTIO_BALLOON_F_REPORTING);
        }
        if self.hints.page_poison && self.abi.has_upstream_hinting() {
            f |= bit(VIRTIO_BALLOON_F_PAGE_POISON);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::encoding_for;
    use crate::abi::BalloonFeatures;

    #[test]
    fn test_offered_bits_select_the_encoding() {
        for abi in [AbiMode::Vballoon, AbiMode::V3] {
            for enc in Encoding::ALL {
                let cfg = DeviceConfig {
                    abi,
                    encoding: enc,
                    ..Default::default()
                };
                let got = encoding_for(BalloonFeatures::new(cfg.device_features(), abi));
                let want = match (abi, enc) {
                    (AbiMode::V3, Encoding::Extents | Encoding::Auto) => Encoding::Pfn,
                    _ => enc,
                };
                assert_eq!(got, want, "{abi:?} {enc}");
            }
        }
        let v3 = DeviceConfig {
            abi: AbiMode::V3,
            ..Default::default()
        };
        assert!(v3.device_features() & bit(3) != 0);
    }

    #[test]
    fn test_policy_names() {
        for p in DiscardPolicy::ALL {
            assert_eq!(p.name().parse::<DiscardPolicy>(), Ok(p));
        }
        assert_eq!("Per_Page".parse(), Ok(DiscardPolicy::PerPage));
        assert_eq!(" per page ".parse(), Ok(DiscardPolicy::PerPage));
        assert_eq!("RUNS".parse(), Ok(DiscardPolicy::Coalesced));
        assert!("sometimes".parse::<DiscardPolicy>().is_err());
    }
}
