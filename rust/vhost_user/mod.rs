//! A vhost-user backend for the balloon (virtio device 5): a VMM or User-Mode Linux's
//! `virtio_uml` (the frontend) shares its guest RAM and rings over a Unix socket, and a real
//! Linux `virtio_balloon` driver drives our [`BalloonDevice`](crate::device::BalloonDevice).
//!
//! The rust-vmm `vhost` crate parses the protocol's messages and passes fds (`req`);
//! `handler` checks every field and drives the device through
//! [`VirtioDevice`](crate::transport::VirtioDevice), as any transport does;
//! `conn` runs one frontend's poll loop; `server` accepts frontends one at a time.

#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod conn;
mod error;
mod handler;
mod memory;
mod req;
mod server;
mod shared;
mod wire;

pub use error::VhostUserError;
pub use handler::{Offer, MAX_QUEUES};
pub use memory::{FrontendMemory, Region, MAX_REGIONS};
pub use server::{StatusView, VhostUserBackend};
pub use shared::{Totals, VhostStatus};

use crate::abi::{
    bit, VBALLOON_F_MISC_VQ, VBALLOON_F_PAGE_AUTO, VBALLOON_F_PAGE_BITMAP, VBALLOON_F_PAGE_EXTENTS,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::device::{DeviceConfig, DiscardPolicy, HintOffer};
use crate::pages::Encoding;
use crate::virtq::defs::{feature, VIRTIO_F_VERSION_1};

/// Balloon features offered when none are named (every upstream one a Linux driver uses).
pub const DEFAULT_FEATURES: [&str; 6] = [
    "must_tell_host",
    "stats_vq",
    "deflate_on_oom",
    "free_page_hint",
    "page_poison",
    "reporting",
];

/// Feature names and bits (upstream bits 0-5; the seed's encodings at 16-19).
pub const FEATURE_NAMES: [(&str, u32); 10] = [
    ("must_tell_host", VIRTIO_BALLOON_F_MUST_TELL_HOST),
    ("stats_vq", VIRTIO_BALLOON_F_STATS_VQ),
    ("deflate_on_oom", VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
    ("free_page_hint", VIRTIO_BALLOON_F_FREE_PAGE_HINT),
    ("page_poison", VIRTIO_BALLOON_F_PAGE_POISON),
    ("reporting", VIRTIO_BALLOON_F_REPORTING),
    ("bitmap", VBALLOON_F_PAGE_BITMAP),
    ("misc_vq", VBALLOON_F_MISC_VQ),
    ("extents", VBALLOON_F_PAGE_EXTENTS),
    ("auto", VBALLOON_F_PAGE_AUTO),
];

/// Stats tags by the names Linux's uapi and Firecracker's API use (virtio spec §5.5.6.3, and
/// the tags Linux added after it).
pub const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];

/// The device's last stats sample by [`STAT_NAMES`].
pub fn named_stats(d: &crate::device::BalloonDevice) -> Vec<(&'static str, u64)> {
    let s = d.stats();
    (0u16..)
        .zip(STAT_NAMES)
        .filter_map(|(tag, n)| s.get(tag).map(|v| (n, v)))
        .collect()
}

/// Names of the balloon features in `bits` (and "version_1").
pub fn feature_names(bits: u64) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = FEATURE_NAMES
        .iter()
        .filter(|(_, b)| bits & bit(*b) != 0)
        .map(|(n, _)| *n)
        .collect();
    if bits & feature(VIRTIO_F_VERSION_1) != 0 {
        v.push("version_1");
    }
    v
}

/// The offer for a list of feature names and a queue size; typed error on an unknown name, two
/// encodings at once, or a queue size that is not a power of two in 1..=256 (virtio_uml's max).
pub fn offer_for(names: &[&str], queue_size: u16) -> Result<Offer, VhostUserError> {
    if queue_size == 0 || !queue_size.is_power_of_two() || queue_size > 256 {
        return Err(VhostUserError::Argument(format!(
            "queue_size {queue_size} must be a power of two in 1..=256"
        )));
    }
    let mut cfg = DeviceConfig {
        encoding: Encoding::Pfn,
        must_tell_host: false,
        stats: false,
        deflate_on_oom: false,
        discard: DiscardPolicy::Coalesced,
        queue_max_size: queue_size,
        hints: HintOffer::default(),
        ..DeviceConfig::default()
    };
    let mut encodings = 0;
    for &n in names {
        let key = n.trim().to_ascii_lowercase().replace('-', "_");
        match key.as_str() {
            "must_tell_host" => cfg.must_tell_host = true,
            "stats_vq" | "stats" => cfg.stats = true,
            "deflate_on_oom" => cfg.deflate_on_oom = true,
            "free_page_hint" => cfg.hints.free_page_hint = true,
            "page_poison" => cfg.hints.page_poison = true,
            "reporting" => cfg.hints.reporting = true,
            "misc_vq" => cfg.hints.misc = true,
            "bitmap" | "extents" | "auto" => {
                encodings += 1;
                cfg.encoding = match key.as_str() {
                    "bitmap" => Encoding::Bitmap,
                    "extents" => Encoding::Extents,
                    _ => Encoding::Auto,
                };
            }
            _ => {
                return Err(VhostUserError::Argument(format!(
                    "unknown balloon feature {n:?} (known: {})",
                    FEATURE_NAMES.map(|(n, _)| n).join(", ")
                )))
            }
        }
    }
    if encodings > 1 {
        return Err(VhostUserError::Argument(
            "at most one of bitmap, extents, auto may be offered".into(),
        ));
    }
    if cfg.hints.misc && !cfg.stats {
        return Err(VhostUserError::Argument(
            "misc_vq needs stats_vq (its queue numbering)".into(),
        ));
    }
    Ok(Offer { cfg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_offer_names_round_trip() {
        let o = offer_for(&DEFAULT_FEATURES, 256).unwrap();
        let names = feature_names(o.virtio_features());
        for n in DEFAULT_FEATURES {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(names.contains(&"version_1"));
        assert_eq!(o.num_queues(), 5);
        assert!(o.virtio_features() & (1 << 30) != 0);
        assert!(offer_for(&["nonsense"], 256).is_err());
        assert!(offer_for(&["bitmap", "extents"], 256).is_err());
        assert!(offer_for(&[], 100).is_err());
        assert!(offer_for(&[], 512).is_err());
        let b = offer_for(&["bitmap"], 128).unwrap();
        assert_eq!(
            feature_names(b.virtio_features()),
            vec!["bitmap", "version_1"]
        );
    }
}
