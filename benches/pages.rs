//! Encode and decode cost of each page encoding for the seed's workload: inflating 7 GiB of an
//! 8 GiB guest (1,835,008 pages), once as one contiguous stretch and once scattered (each page
//! of the guest in the balloon with probability 7/8, so ~230 k runs).
//!
//! `cargo bench --no-default-features --bench pages`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vballoon::pages::{decode_into, encode, Encoding, PageSet};

/// An 8 GiB guest.
const GUEST_PAGES: u64 = 8 << 18;
/// 7 GiB of balloon.
const BALLOON_PAGES: u64 = 7 << 18;

fn contiguous() -> PageSet {
    PageSet::from_runs(GUEST_PAGES, [(GUEST_PAGES - BALLOON_PAGES, BALLOON_PAGES)]).unwrap()
}

/// Every page with probability 7/8, from a fixed xorshift stream.
fn scattered() -> PageSet {
    let mut set = PageSet::new(GUEST_PAGES);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for w in set.words_mut() {
        // A bit is clear only if it is clear in all three draws: p = 1/8.
        *w = next() | next() | next();
    }
    set
}

fn bench_encodings(c: &mut Criterion) {
    for (name, set) in [("contiguous", contiguous()), ("scattered", scattered())] {
        let mut g = c.benchmark_group(format!("pages_7GiB_{name}"));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        g.throughput(Throughput::Elements(set.count()));
        for enc in Encoding::ALL {
            let msgs = encode(enc, &set).unwrap();
            let bytes: usize = msgs.iter().map(|m| m.len()).sum();
            eprintln!(
                "{name} {enc}: {} pages, {} messages, {bytes} bytes",
                set.count(),
                msgs.len()
            );
            g.bench_with_input(BenchmarkId::new("encode", enc), &set, |b, set| {
                b.iter(|| encode(enc, black_box(set)).unwrap())
            });
            let mut back = PageSet::new(GUEST_PAGES);
            g.bench_with_input(BenchmarkId::new("decode", enc), &msgs, |b, msgs| {
                b.iter(|| {
                    back.clear();
                    for m in msgs {
                        decode_into(enc, &m.segments, &mut back).unwrap();
                    }
                })
            });
            assert_eq!(back, set);
        }
        g.finish();
    }
}

criterion_group!(benches, bench_encodings);
criterion_main!(benches);
