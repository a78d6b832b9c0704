//! Our ring layout, event-index rule and constants against the Linux UAPI headers
//! (`<linux/virtio_ring.h>`, `<linux/virtio_balloon.h>`), compiled with `cc` at test time.

#[path = "c/uapi.rs"]
mod uapi;

use std::mem::{offset_of, size_of};

use uapi::uapi;
use vballoon::memory::GuestAddress;
use vballoon::virtq::defs::*;
use vballoon::virtq::{need_event, vring_size, Descriptor, QueueLayout};

/// Asserts each `(uapi name, our value)` pair, naming the one that differs.
fn assert_all_match(u: &uapi::Uapi, expected: &[(&str, u64)]) {
    for &(name, ours) in expected {
        assert_eq!(u.get(name), ours, "{name}");
    }
}

#[test]
fn test_ring_constants_match_uapi() {
    assert_all_match(
        uapi(),
        &[
            ("VRING_DESC_F_NEXT", u64::from(VIRTQ_DESC_F_NEXT)),
            ("VRING_DESC_F_WRITE", u64::from(VIRTQ_DESC_F_WRITE)),
            ("VRING_DESC_F_INDIRECT", u64::from(VIRTQ_DESC_F_INDIRECT)),
            ("VRING_USED_F_NO_NOTIFY", u64::from(VIRTQ_USED_F_NO_NOTIFY)),
            (
                "VRING_AVAIL_F_NO_INTERRUPT",
                u64::from(VIRTQ_AVAIL_F_NO_INTERRUPT),
            ),
            (
                "VIRTIO_RING_F_INDIRECT_DESC",
                u64::from(VIRTIO_F_INDIRECT_DESC),
            ),
            ("VIRTIO_RING_F_EVENT_IDX", u64::from(VIRTIO_F_EVENT_IDX)),
            ("VIRTIO_F_VERSION_1", u64::from(VIRTIO_F_VERSION_1)),
            ("VRING_DESC_ALIGN_SIZE", DESC_TABLE_ALIGN),
            ("VRING_AVAIL_ALIGN_SIZE", AVAIL_RING_ALIGN),
            ("VRING_USED_ALIGN_SIZE", USED_RING_ALIGN),
        ],
    );
}

#[test]
fn test_struct_layouts_match_uapi() {
    let u = uapi();
    assert_eq!(u.get("sizeof.vring_desc"), DESC_SIZE);
    assert_all_match(
        u,
        &[
            ("sizeof.vring_desc", size_of::<Descriptor>() as u64),
            (
                "offsetof.vring_desc.addr",
                offset_of!(Descriptor, addr) as u64,
            ),
            (
                "offsetof.vring_desc.len",
                offset_of!(Descriptor, len) as u64,
            ),
            (
                "offsetof.vring_desc.flags",
                offset_of!(Descriptor, flags) as u64,
            ),
            (
                "offsetof.vring_desc.next",
                offset_of!(Descriptor, next) as u64,
            ),
        ],
    );
    for ring in ["vring_avail", "vring_used"] {
        assert_eq!(u.get(&format!("offsetof.{ring}.flags")), 0);
        assert_eq!(u.get(&format!("offsetof.{ring}.idx")), 2);
        assert_eq!(u.get(&format!("offsetof.{ring}.ring")), RING_HEADER_SIZE);
        assert_eq!(u.get(&format!("sizeof.{ring}")), RING_HEADER_SIZE);
    }
    assert_eq!(u.get("sizeof.vring_used_elem"), USED_ELEM_SIZE);
    assert_eq!(u.get("offsetof.vring_used_elem.id"), 0);
    assert_eq!(u.get("offsetof.vring_used_elem.len"), 4);
}

#[test]
fn test_vring_size_and_legacy_layout_match_vring_init() {
    let u = uapi();
    let mut checked = 0;
    for (name, size) in u.with_prefix("vring_size.") {
        let mut parts = name.split('.').skip(1);
        let n: u16 = parts.next().unwrap().parse().unwrap();
        let align: u64 = parts.next().unwrap().parse().unwrap();
        assert_eq!(vring_size(u32::from(n), align), size, "{name}");
        let l = QueueLayout::legacy(GuestAddress(0), n, align).unwrap();
        assert_eq!(
            l.avail_ring().raw(),
            u.get(&format!("vring_avail_off.{n}.{align}")),
            "{name}"
        );
        assert_eq!(
            l.used_ring().raw(),
            u.get(&format!("vring_used_off.{n}.{align}")),
            "{name}"
        );
        assert_eq!(l.end().raw(), size, "{name}");
        assert_eq!(
            l.used_event().raw() - l.avail_ring().raw(),
            u.get(&format!("used_event_off.{n}")),
            "{name}"
        );
        assert_eq!(
            l.avail_event().raw() - l.used_ring().raw(),
            u.get(&format!("avail_event_off.{n}")),
            "{name}"
        );
        checked += 1;
    }
    // Sizes 1..=32768 times six alignments.
    assert_eq!(checked, 16 * 6);
}

/// The same splitmix64 stream as the C program.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// FNV-1a over one byte per decision, as in the C program.
struct Digest {
    hash: u64,
    count: u64,
    yes: u64,
}

impl Digest {
    fn new() -> Digest {
        Digest {
            hash: 0xcbf2_9ce4_8422_2325,
            count: 0,
            yes: 0,
        }
    }

    fn add(&mut self, bit: bool) {
        self.hash = (self.hash ^ u64::from(bit)).wrapping_mul(0x0100_0000_01b3);
        self.count += 1;
        self.yes += u64::from(bit);
    }

    fn check(&self, family: &str) {
        let u = uapi();
        for (what, ours) in [
            ("count", self.count),
            ("yes", self.yes),
            ("hash", self.hash),
        ] {
            assert_eq!(
                ours,
                u.get(&format!("need_event.{family}.{what}")),
                "{family} {what}"
            );
        }
    }
}

fn edge_distances() -> impl Iterator<Item = u16> {
    (0..=300).chain(0x7f00..=0x8100).chain(0xfe00..=0xffff)
}

/// Feeds `n` draws of the `seed` stream, each turned into need_event's (event_idx, new, old)
/// by `args`, and compares the digest with the C program's `family`.
fn check_random(family: &str, seed: u64, n: u32, args: impl Fn(u64) -> (u16, u16, u16)) {
    let mut rng = SplitMix(seed);
    let mut d = Digest::new();
    for _ in 0..n {
        let (ev, new, old) = args(rng.next());
        d.add(need_event(ev, new, old));
    }
    d.check(family);
}

#[test]
fn test_need_event_matches_vring_need_event_uniform() {
    check_random("uniform", 0x5eed, 4_000_000, |z| {
        (z as u16, (z >> 16) as u16, (z >> 32) as u16)
    });
}

#[test]
fn test_need_event_matches_vring_need_event_near_misses() {
    check_random("near", 0xbeef, 1_000_000, |z| {
        let old = z as u16;
        let new = old.wrapping_add(((z >> 16) & 0x3f) as u16);
        let ev = old
            .wrapping_add(((z >> 32) & 0x7f) as u16)
            .wrapping_sub(0x20);
        (ev, new, old)
    });
}

#[test]
fn test_need_event_matches_vring_need_event_wrap_edges() {
    let mut d = Digest::new();
    for n in [0u16, 1, 0x7fff, 0x8000, 0xffff] {
        for a in edge_distances() {
            for b in edge_distances() {
                d.add(need_event(n.wrapping_sub(b), n, n.wrapping_sub(a)));
            }
        }
    }
    d.check("edges");
}

#[test]
fn test_balloon_uapi_values_are_available() {
    // The balloon module compares its own constants later; here, the spec facts of
    // reference/protocol.md §2.7 that every header version agrees on.
    let u = uapi();
    assert_eq!(u.get("VIRTIO_ID_BALLOON"), 5);
    for (i, f) in [
        "MUST_TELL_HOST",
        "STATS_VQ",
        "DEFLATE_ON_OOM",
        "FREE_PAGE_HINT",
        "PAGE_POISON",
        "REPORTING",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(u.get(&format!("VIRTIO_BALLOON_F_{f}")), i as u64);
    }
    assert_eq!(u.get("VIRTIO_BALLOON_PFN_SHIFT"), 12);
    assert_eq!(u.get("VIRTIO_BALLOON_CMD_ID_STOP"), 0);
    assert_eq!(u.get("VIRTIO_BALLOON_CMD_ID_DONE"), 1);
    let tags: Vec<(&str, u64)> = u.with_prefix("VIRTIO_BALLOON_S_").collect();
    assert!(u.get("VIRTIO_BALLOON_S_NR") >= 10, "{tags:?}");
    assert_eq!(u.get("VIRTIO_BALLOON_S_SWAP_IN"), 0);
    assert_eq!(u.get("VIRTIO_BALLOON_S_HTLB_PGFAIL"), 9);
    assert_eq!(u.get("sizeof.virtio_balloon_config"), 16);
    for (field, off) in [
        ("num_pages", 0),
        ("actual", 4),
        ("free_page_hint_cmd_id", 8),
        ("free_page_report_cmd_id", 8),
        ("poison_val", 12),
    ] {
        assert_eq!(
            u.get(&format!("offsetof.virtio_balloon_config.{field}")),
            off
        );
    }
    assert_eq!(u.get("sizeof.virtio_balloon_stat"), 10);
    assert_eq!(u.get("offsetof.virtio_balloon_stat.val"), 2);
}
