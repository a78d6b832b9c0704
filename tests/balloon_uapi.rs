//! Our balloon ABI constants against the Linux UAPI header `<linux/virtio_balloon.h>`,
//! compiled with `cc` at test time: feature bits 0-5, PFN_SHIFT, stats tags, the free page hint
//! command ids and the config-space layout.

#[path = "c/uapi.rs"]
mod uapi;

use std::mem::size_of;

use uapi::uapi;
use vballoon::abi::*;
use vballoon::transport::CONFIG_SPACE_SIZE;

#[test]
fn test_feature_bits_match_uapi() {
    let u = uapi();
    for (name, ours) in [
        (
            "VIRTIO_BALLOON_F_MUST_TELL_HOST",
            VIRTIO_BALLOON_F_MUST_TELL_HOST,
        ),
        ("VIRTIO_BALLOON_F_STATS_VQ", VIRTIO_BALLOON_F_STATS_VQ),
        (
            "VIRTIO_BALLOON_F_DEFLATE_ON_OOM",
            VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        ),
        (
            "VIRTIO_BALLOON_F_FREE_PAGE_HINT",
            VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        ),
        ("VIRTIO_BALLOON_F_PAGE_POISON", VIRTIO_BALLOON_F_PAGE_POISON),
        ("VIRTIO_BALLOON_F_REPORTING", VIRTIO_BALLOON_F_REPORTING),
    ] {
        assert_eq!(u.get(name), u64::from(ours), "{name}");
    }
    assert_eq!(u.get("VIRTIO_ID_BALLOON"), u64::from(VIRTIO_ID_BALLOON));
    // The seed's own bits in vballoon mode sit above every upstream one.
    for b in [
        VBALLOON_F_PAGE_BITMAP,
        VBALLOON_F_MISC_VQ,
        VBALLOON_F_PAGE_EXTENTS,
        VBALLOON_F_PAGE_AUTO,
    ] {
        assert!((16..24).contains(&b), "{b}");
    }
}

#[test]
fn test_pfn_shift_and_cmd_ids_match_uapi() {
    let u = uapi();
    assert_eq!(
        u.get("VIRTIO_BALLOON_PFN_SHIFT"),
        u64::from(VIRTIO_BALLOON_PFN_SHIFT)
    );
    assert_eq!(
        u.get("VIRTIO_BALLOON_CMD_ID_STOP"),
        u64::from(VIRTIO_BALLOON_CMD_ID_STOP)
    );
    assert_eq!(
        u.get("VIRTIO_BALLOON_CMD_ID_DONE"),
        u64::from(VIRTIO_BALLOON_CMD_ID_DONE)
    );
}

#[test]
fn test_stats_tags_match_uapi() {
    let u = uapi();
    for (name, ours) in [
        ("VIRTIO_BALLOON_S_SWAP_IN", VIRTIO_BALLOON_S_SWAP_IN),
        ("VIRTIO_BALLOON_S_SWAP_OUT", VIRTIO_BALLOON_S_SWAP_OUT),
        ("VIRTIO_BALLOON_S_MAJFLT", VIRTIO_BALLOON_S_MAJFLT),
        ("VIRTIO_BALLOON_S_MINFLT", VIRTIO_BALLOON_S_MINFLT),
        ("VIRTIO_BALLOON_S_MEMFREE", VIRTIO_BALLOON_S_MEMFREE),
        ("VIRTIO_BALLOON_S_MEMTOT", VIRTIO_BALLOON_S_MEMTOT),
        ("VIRTIO_BALLOON_S_AVAIL", VIRTIO_BALLOON_S_AVAIL),
        ("VIRTIO_BALLOON_S_CACHES", VIRTIO_BALLOON_S_CACHES),
        (
            "VIRTIO_BALLOON_S_HTLB_PGALLOC",
            VIRTIO_BALLOON_S_HTLB_PGALLOC,
        ),
        ("VIRTIO_BALLOON_S_HTLB_PGFAIL", VIRTIO_BALLOON_S_HTLB_PGFAIL),
    ] {
        assert_eq!(u.get(name), u64::from(ours), "{name}");
    }
    // Newer headers define more tags; the device keeps every tag below 16 and the header's
    // count is within that.
    assert!(u.get("VIRTIO_BALLOON_S_NR") >= u64::from(VIRTIO_BALLOON_S_NR));
    assert!(u.get("VIRTIO_BALLOON_S_NR") <= u64::from(vballoon::abi::STATS_KNOWN_TAGS));
    assert_eq!(u.get("sizeof.virtio_balloon_stat"), STATS_ENTRY_SIZE as u64);
    assert_eq!(u.get("offsetof.virtio_balloon_stat.tag"), 0);
    assert_eq!(u.get("offsetof.virtio_balloon_stat.val"), 2);
}

#[test]
fn test_config_layout_matches_uapi() {
    let u = uapi();
    let off = |f: &str| u.get(&format!("offsetof.virtio_balloon_config.{f}")) as usize;
    assert_eq!(off("num_pages"), CONFIG_NUM_PAGES);
    assert_eq!(off("actual"), CONFIG_ACTUAL);
    assert_eq!(off("free_page_hint_cmd_id"), CONFIG_FREE_PAGE_HINT_CMD_ID);
    assert_eq!(off("free_page_report_cmd_id"), CONFIG_FREE_PAGE_HINT_CMD_ID);
    assert_eq!(off("poison_val"), CONFIG_POISON_VAL);
    assert_eq!(u.get("sizeof.virtio_balloon_config") as usize, CONFIG_SIZE);
    assert_eq!(CONFIG_SIZE, CONFIG_SPACE_SIZE);
    assert_eq!(size_of::<u32>() * 4, CONFIG_SPACE_SIZE);
}
