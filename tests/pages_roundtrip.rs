//! Property tests: every encoding round-trips any page set, up to 128 GiB of PFN space,
//! whatever the split of its messages into segments.

use std::collections::BTreeSet;

use proptest::prelude::*;
use vballoon::pages::bitmap::{
    self, BmapHeader, BALLOON_BMAP_COUNT, BALLOON_BMAP_SIZE, BALLOON_FLAG_CONT, BALLOON_FLAG_DONE,
    BMAP_HEADER_LEN, PFNS_PER_BMAP, WINDOW_PFNS,
};
use vballoon::pages::extents::EXTENTS_MAX_MESSAGE_LEN;
use vballoon::pages::hint::{self, HINT_BLOCK_BYTES, HINT_BLOCK_ORDER};
use vballoon::pages::pfn::PFN_ARRAY_MAX_LEN;
use vballoon::pages::{
    decode, decode_into, encode, AtomicPageBitmap, Coalescer, Encoding, Message, PageRange,
    PageSet, Pages,
};

/// 128 GiB of 4 KiB pages.
const MAX_NPAGES: u64 = 128 << 18;

/// Guest sizes that put the last page on the boundaries that matter, plus small ones.
fn npages() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=300u64,
        1 => Just(64),
        2 => prop::sample::select(vec![
            PFNS_PER_BMAP + 1,
            2 * PFNS_PER_BMAP,
            WINDOW_PFNS,
            WINDOW_PFNS + 64,
            3 * WINDOW_PFNS + 5,
            MAX_NPAGES,
        ]),
        1 => 1..=MAX_NPAGES,
    ]
}

/// A start near a piece, window or word boundary, near the end of RAM, or anywhere.
fn start(n: u64) -> impl Strategy<Value = u64> {
    let marks = vec![
        0,
        63,
        64,
        PFNS_PER_BMAP,
        2 * PFNS_PER_BMAP,
        WINDOW_PFNS,
        2 * WINDOW_PFNS,
        n.saturating_sub(1),
        n / 2,
    ];
    prop_oneof![
        (prop::sample::select(marks), -70i64..70)
            .prop_map(move |(m, d)| m.saturating_add_signed(d)),
        0..n,
    ]
    .prop_map(move |s| s.min(n - 1))
}

/// A run length: single pages, record-size edges, or long runs across pieces.
fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=70u64,
        1 => 4094..=4097u64,
        1 => 1..=(PFNS_PER_BMAP + 300),
    ]
}

/// A sparse page set: its size and the runs (clipped to it) it was built from.
fn page_set() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
    npages().prop_flat_map(|n| {
        let run = (start(n), len()).prop_map(move |(s, l)| (s, l.min(n - s)));
        (Just(n), prop::collection::vec(run, 0..12))
    })
}

fn decode_all(enc: Encoding, msgs: &[Message], npages: u64) -> PageSet {
    let mut back = PageSet::new(npages);
    for m in msgs {
        decode_into(enc, &m.segments, &mut back).unwrap();
    }
    back
}

/// The same bytes cut at other places.
fn resplit(m: &Message, cuts: &[usize]) -> Vec<Vec<u8>> {
    let all = m.concat();
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (all.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in at.into_iter().chain([all.len()]) {
        out.push(all[prev..c].to_vec());
        prev = c;
    }
    out
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn prop_every_encoding_round_trips_a_set((n, runs) in page_set()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        for enc in Encoding::ALL {
            let msgs = encode(enc, &set).unwrap();
            prop_assert_eq!(&decode_all(enc, &msgs, n), &set, "{}", enc);
            // The pages reach a callback too, each once, for encodings of a set.
            let mut pages = 0;
            for m in &msgs {
                let mut count = |_s: u64, l: u64| pages += l;
                decode(enc, &m.segments, n, &mut count).unwrap();
            }
            prop_assert_eq!(pages, set.count(), "{}", enc);
        }
    }

    #[test]
    fn prop_every_encoding_round_trips_runs((n, runs) in page_set()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        let runs: Vec<PageRange> = runs.iter().map(|&r| r.into()).collect();
        for enc in Encoding::ALL {
            let msgs = encode(enc, &runs).unwrap();
            prop_assert_eq!(&decode_all(enc, &msgs, n), &set, "{}", enc);
        }
        // Sorting and merging runs makes the bitmap of runs byte-identical to that of the set.
        prop_assert_eq!(encode(Encoding::Bitmap, &runs).unwrap(), encode(Encoding::Bitmap, &set).unwrap());
        prop_assert_eq!(encode(Encoding::Auto, &runs).unwrap(), encode(Encoding::Auto, &set).unwrap());
    }

    #[test]
    fn prop_any_split_of_a_message_decodes_the_same(
        (n, runs) in page_set(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        for enc in Encoding::ALL {
            let mut back = PageSet::new(n);
            for m in encode(enc, &set).unwrap() {
                decode_into(enc, &resplit(&m, &cuts), &mut back).unwrap();
            }
            prop_assert_eq!(&back, &set, "{}", enc);
        }
    }

    #[test]
    fn prop_messages_respect_their_size_limits((n, runs) in page_set()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        for m in encode(Encoding::Pfn, &set).unwrap() {
            prop_assert_eq!(m.segments.len(), 1);
            prop_assert!(m.len() <= PFN_ARRAY_MAX_LEN && m.len() % 4 == 0 && !m.is_empty());
        }
        for m in encode(Encoding::Extents, &set).unwrap() {
            prop_assert_eq!(m.segments.len(), 1);
            prop_assert!(m.len() <= EXTENTS_MAX_MESSAGE_LEN && m.len() % 8 == 0 && !m.is_empty());
        }
        for m in encode(Encoding::Bitmap, &set).unwrap() {
            let h = BmapHeader::from_bytes(m.segments[0].as_slice().try_into().unwrap());
            let pieces = &m.segments[1..];
            prop_assert_eq!(h.start_pfn % 64, 0);
            prop_assert_eq!(h.bmap_len % 8, 0);
            prop_assert_eq!(pieces.len(), (h.bmap_len as usize).div_ceil(BALLOON_BMAP_SIZE));
            prop_assert!(pieces.len() <= BALLOON_BMAP_COUNT && !pieces.is_empty());
            let (last, full) = pieces.split_last().unwrap();
            prop_assert!(full.iter().all(|p| p.len() == BALLOON_BMAP_SIZE));
            prop_assert!(!last.is_empty() && last.len() <= BALLOON_BMAP_SIZE);
            // The first and last words hold a page: windows are trimmed to their pages.
            prop_assert!(pieces[0][..8].iter().any(|&b| b != 0));
            prop_assert!(last[last.len() - 8..].iter().any(|&b| b != 0));
        }
        // Auto is never worse than the bitmap by more than its 8-byte tags.
        let total = |msgs: &[Message]| msgs.iter().map(Message::len).sum::<usize>();
        let auto = encode(Encoding::Auto, &set).unwrap();
        let bitmap = encode(Encoding::Bitmap, &set).unwrap();
        prop_assert!(total(&auto) <= total(&bitmap) + 8 * auto.len());
    }

    #[test]
    fn prop_unused_page_replies_end_with_done((n, runs) in page_set(), req_id in any::<u64>()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        let msgs = bitmap::encode_unused_reply(&set, req_id).unwrap();
        prop_assert!(!msgs.is_empty());
        let mut back = PageSet::new(n);
        for (i, m) in msgs.iter().enumerate() {
            let h = bitmap::decode(&m.segments, n, &mut back).unwrap();
            let last = i + 1 == msgs.len();
            prop_assert_eq!(h.flag, if last { BALLOON_FLAG_DONE } else { BALLOON_FLAG_CONT });
            prop_assert_eq!((h.cmd, h.req_id), (bitmap::BALLOON_GET_UNUSED_PAGES, req_id));
            prop_assert_eq!(m.segments[0].len(), BMAP_HEADER_LEN);
        }
        prop_assert_eq!(back, set);
    }

    #[test]
    fn prop_hint_blocks_tile_the_set((n, runs) in page_set()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        // Buddy blocks of every order cover the set exactly, aligned and disjoint.
        let all: Vec<_> = hint::blocks(&set, 0, HINT_BLOCK_ORDER).unwrap().collect();
        for b in &all {
            prop_assert!(b.len.is_power_of_two() && b.addr % b.len == 0 && b.len <= HINT_BLOCK_BYTES);
        }
        let mut back = PageSet::new(n);
        let pages = hint::decode_blocks(&all, n, &mut back).unwrap();
        prop_assert_eq!((&back, pages), (&set, set.count()));
        // 4 MiB hint blocks are exactly the fully set aligned 1024-page groups.
        let hints: Vec<_> = hint::blocks(&set, HINT_BLOCK_ORDER, HINT_BLOCK_ORDER).unwrap().collect();
        let want: Vec<u64> = set.runs().flat_map(|r| r.start.div_ceil(1024)..r.end() / 1024).collect();
        let got: Vec<u64> = hints.iter().map(|b| b.addr / HINT_BLOCK_BYTES).collect();
        prop_assert!(hints.iter().all(|b| b.len == HINT_BLOCK_BYTES));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn prop_atomic_take_is_one_round((n, runs) in page_set()) {
        let set = PageSet::from_runs(n, runs.iter().copied()).unwrap();
        let log = AtomicPageBitmap::new(n);
        for &(s, l) in &runs {
            log.set_range(s, l);
        }
        prop_assert_eq!(log.count(), set.count());
        prop_assert_eq!(log.take(), set);
        prop_assert_eq!(log.count(), 0);
    }
}

/// One of PageSet's in-place set operations.
type SetOp = fn(&mut PageSet, &PageSet);

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn prop_page_set_matches_a_model(
        n in 1u64..400,
        ops in prop::collection::vec((0u8..4, 0u64..420, 0u64..140), 0..40),
    ) {
        let mut set = PageSet::new(n);
        let mut model = BTreeSet::new();
        for (op, s, l) in ops {
            let (s, l) = (s.min(n - 1), l.min(n - s.min(n - 1)));
            match op {
                0 => { set.insert_range(s, l); model.extend(s..s + l); }
                1 => { set.remove_range(s, l); (s..s + l).for_each(|p| { model.remove(&p); }); }
                2 => { prop_assert_eq!(set.insert(s), model.insert(s)); }
                _ => { prop_assert_eq!(set.remove(s), model.remove(&s)); }
            }
        }
        prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(set.count(), model.len() as u64);
        prop_assert_eq!(set.first(), model.first().copied());
        prop_assert_eq!(set.last(), model.last().copied());
        // Runs are maximal, sorted, and cover exactly the set.
        let runs: Vec<_> = set.runs().collect();
        for w in runs.windows(2) {
            prop_assert!(w[0].end() < w[1].start);
        }
        let covered: Vec<u64> = runs.iter().flat_map(|r| r.start..r.end()).collect();
        prop_assert_eq!(covered, model.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(PageSet::from_runs(n, runs).unwrap(), set);
    }

    #[test]
    fn prop_set_algebra_matches_a_model(
        n in 1u64..300,
        a in prop::collection::vec(0u64..300, 0..60),
        b in prop::collection::vec(0u64..300, 0..60),
    ) {
        let to_set = |v: &[u64]| PageSet::from_runs(n, v.iter().filter(|&&p| p < n).map(|&p| (p, 1))).unwrap();
        let (sa, sb) = (to_set(&a), to_set(&b));
        let (ma, mb): (BTreeSet<u64>, BTreeSet<u64>) =
            (a.iter().filter(|&&p| p < n).copied().collect(), b.iter().filter(|&&p| p < n).copied().collect());
        let ops: [(&str, SetOp, BTreeSet<u64>); 3] = [
            ("union", PageSet::union_with, &ma | &mb),
            ("difference", PageSet::difference_with, &ma - &mb),
            ("intersection", PageSet::intersect_with, &ma & &mb),
        ];
        for (name, op, want) in ops {
            let mut got = sa.clone();
            op(&mut got, &sb);
            prop_assert_eq!(got.iter().collect::<BTreeSet<_>>(), want, "{}", name);
        }
    }

    #[test]
    fn prop_coalescer_loses_and_duplicates_nothing(
        runs in prop::collection::vec((0u64..200, 1u64..20), 0..40),
    ) {
        let mut out: Vec<PageRange> = Vec::new();
        let mut c = Coalescer::new(&mut out);
        for &(s, l) in &runs {
            vballoon::pages::PageSink::run(&mut c, s, l);
        }
        drop(c);
        let expand = |v: &[(u64, u64)]| v.iter().flat_map(|&(s, l)| s..s + l).collect::<Vec<_>>();
        let got: Vec<(u64, u64)> = out.iter().map(|r| (r.start, r.len)).collect();
        prop_assert_eq!(expand(&got), expand(&runs));
        prop_assert!(out.len() <= runs.len());
    }
}

#[test]
fn test_empty_set_sends_nothing_but_a_done_reply() {
    let set = PageSet::new(1000);
    for enc in Encoding::ALL {
        assert!(encode(enc, &set).unwrap().is_empty(), "{enc}");
        assert!(
            encode(enc, Pages::Runs(&[PageRange::new(5, 0)]))
                .unwrap()
                .is_empty(),
            "{enc}"
        );
    }
    let reply = bitmap::encode_unused_reply(&set, 9).unwrap();
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].segments.len(), 1);
    let mut back = PageSet::new(1000);
    let h = bitmap::decode(&reply[0].segments, 1000, &mut back).unwrap();
    assert!(h.is_done() && back.is_empty() && h.req_id == 9);
}

#[test]
fn test_last_page_of_128_gib_round_trips() {
    let set = PageSet::from_runs(MAX_NPAGES, [(MAX_NPAGES - 1, 1)]).unwrap();
    for enc in Encoding::ALL {
        let msgs = encode(enc, &set).unwrap();
        assert_eq!(msgs.len(), 1, "{enc}");
        assert_eq!(decode_all(enc, &msgs, MAX_NPAGES), set, "{enc}");
    }
}

#[test]
fn test_run_across_window_boundary_splits_into_two_messages() {
    let set = PageSet::from_runs(2 * WINDOW_PFNS, [(WINDOW_PFNS - 3, 6)]).unwrap();
    let msgs = encode(Encoding::Bitmap, &set).unwrap();
    assert_eq!(msgs.len(), 1, "greedy window starts at the run");
    let set = PageSet::from_runs(2 * WINDOW_PFNS, [(0, 1), (WINDOW_PFNS - 3, 6)]).unwrap();
    let msgs = encode(Encoding::Bitmap, &set).unwrap();
    assert_eq!(msgs.len(), 2);
    let starts: Vec<u64> = msgs
        .iter()
        .map(|m| BmapHeader::from_bytes(m.segments[0].as_slice().try_into().unwrap()).start_pfn)
        .collect();
    assert_eq!(starts, vec![0, WINDOW_PFNS]);
    assert_eq!(msgs[0].len(), BMAP_HEADER_LEN + (WINDOW_PFNS / 8) as usize);
    assert_eq!(decode_all(Encoding::Bitmap, &msgs, 2 * WINDOW_PFNS), set);
}

#[test]
fn test_pfn_decoder_joins_shuffled_pages_into_one_run() {
    let pfns: Vec<u8> = (0..256u32)
        .rev()
        .flat_map(|p| (p + 1000).to_le_bytes())
        .collect();
    let mut runs = Vec::new();
    let d = decode(Encoding::Pfn, &[pfns], 2000, &mut runs).unwrap();
    assert_eq!(runs, vec![PageRange::new(1000, 256)]);
    assert_eq!((d.pages, d.runs, d.header), (256, 1, None));
}
