//! Live migration of an idle 8 GiB guest over a 10 Gbit/s link (in-process, rate-limited):
//! no hints vs free page hints vs unpopulated skipping, plus the floors they are measured
//! against (memory read bandwidth, zero-detection bandwidth, the cost of reading never-touched
//! memory, mincore). Run with `cargo bench --no-default-features --bench migrate`.
//!
//! Scenario M1 (BENCHMARKS.md): 8 GiB guest, MAP_NORESERVE anonymous, ~400 MB of random data
//! in extents of 64 KiB to 2 MiB at random places, the rest never touched; idle (no writes);
//! 10 Gbit/s = 1.25 GB/s. Scenario M2 (smaller, to fit RAM twice): a 2 GiB guest whose free
//! pages all hold stale data, 100 MB used. Each migration gets a fresh guest (a read maps the
//! zero page and would change the next run), variants interleaved, median of `REPS`.
//!
//! ## Results (2026-11-26, this 2-core x86-64 VM, shared with other builds: noisy; two runs)
//! `cargo bench --no-default-features --bench migrate`, medians of 3, 10 Gbit/s, explicit log.
//! Floors: read 29.7 / 15.6 GB/s (load), zero detection 93% / 104% of it; first read of a
//! never-touched page 0.72 / 1.20 us (1.5 / 2.5 s per 8 GiB); mincore over 8 GiB 1.3 ms.
//!
//! | M1 idle 8 GiB, 420 MB sent (floor 336 ms) | run 1 | run 2 | pages read | downtime |
//! |---|---|---|---|---|
//! | no hints | 1829 ms | 2634 ms | 2,097,152 | < 4 ms |
//! | static hints | 563 ms | 564 ms | 102,400 | 9-25 ms |
//! | unpopulated skip | 384 ms | 425 ms | 102,400 | 5-9 ms |
//! | hints + unpopulated skip | 392 ms | 494 ms | 102,400 | 5-15 ms |
//! | hints + skip, kernel tracking | 438 ms | 565 ms | 102,400 | 9-12 ms |
//!
//! Peak RSS ~855 MB for source + destination in one process (2 × 420 MB of data).
//! M2 (2 GiB, all free pages stale, 100 MB used): no hints 4.7 s for 2.15 GB (floor 1.72 s;
//! CPU-bound: engine, link writer and destination share 2 cores), hints 84-119 ms for 105 MB
//! (floor 84 ms), unpopulated skip no help (every page is populated).
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use vballoon::memory::{
    is_zero_raw, process_peak_rss_bytes, Backing, GuestAddress, GuestMemory, Pfn, PAGE_SIZE,
};
use vballoon::migration::*;
use vballoon::pages::PageSet;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const REPS: usize = 3;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
    }
}

/// Writes `used` bytes of random data in random extents; returns the used-page bitmap.
fn populate(mem: &GuestMemory, used: u64, seed: u64) -> PageSet {
    let pages = mem.pages();
    let mut rng = Rng(seed);
    let mut map = PageSet::new(pages);
    let mut buf = vec![0u8; 2 * MIB as usize];
    let mut left = used / PAGE_SIZE;
    while left > 0 {
        let len = (16 + rng.next() % 497).min(left); // 64 KiB .. ~2 MiB
        let first = rng.next() % (pages - len);
        if map.count_range(first, len) > 0 {
            continue;
        }
        rng.fill(&mut buf[..(len * PAGE_SIZE) as usize]);
        mem.write(Pfn(first).addr(), &buf[..(len * PAGE_SIZE) as usize])
            .unwrap();
        map.insert_range(first, len);
        left -= len;
    }
    map
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux 4.0+); without it peaks accumulate.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn floors(size: u64) -> (f64, f64) {
    let mem = GuestMemory::new(size, Backing::Anonymous).unwrap();
    mem.fill(GuestAddress(0), size, 0).unwrap(); // populated zeros: real pages, not the zero page
    let p = mem.host_ptr(GuestAddress(0), size).unwrap();
    let (mut read, mut zero) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut acc = [0u64; 8];
        let words = (size / 8) as usize;
        let mut i = 0;
        while i < words {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `i + k < words`, inside the mapping; plain reads.
                *a = a.wrapping_add(unsafe { p.cast::<u64>().add(i + k).read() });
            }
            i += 8;
        }
        black_box(acc);
        read.push(gbps(size, t.elapsed()));
        let t = Instant::now();
        let mut all = true;
        for page in 0..(size / PAGE_SIZE) {
            // SAFETY: each page lies inside the mapping.
            all &= unsafe { is_zero_raw(p.add((page * PAGE_SIZE) as usize), PAGE_SIZE as usize) };
        }
        assert!(black_box(all));
        zero.push(gbps(size, t.elapsed()));
    }
    let (r, z) = (median(read), median(zero));
    println!(
        "memory read bandwidth ({} MiB, populated): {r:.1} GB/s; zero detection (per 4 KiB page): \
         {z:.1} GB/s = {:.0}% of read",
        size / MIB,
        100.0 * z / r
    );
    drop(mem);
    // Reading never-touched memory maps the zero page, page by page.
    let mem = GuestMemory::new(size, Backing::Anonymous).unwrap();
    let t = Instant::now();
    for page in 0..(size / PAGE_SIZE) {
        black_box(mem.read_u8(GuestAddress(page * PAGE_SIZE)).unwrap());
    }
    let per_page = t.elapsed().as_secs_f64() / (size / PAGE_SIZE) as f64;
    let big = GuestMemory::new(8 * GIB, Backing::Anonymous).unwrap();
    let t = Instant::now();
    black_box(big.resident_pages(GuestAddress(0), 8 * GIB).unwrap());
    println!(
        "first read of a never-touched page: {:.2} us/page ({:.2} s per 8 GiB); mincore over 8 GiB: {:.1} ms",
        per_page * 1e6,
        per_page * (8 * GIB / PAGE_SIZE) as f64,
        t.elapsed().as_secs_f64() * 1e3
    );
    (r, z)
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    hints: bool,
    skip_unpopulated: bool,
    tracking: DirtyTracking,
}

struct Row {
    time: f64,
    bytes: u64,
    read: u64,
    hinted: u64,
    unpop: u64,
    downtime: f64,
    rss: u64,
    rounds: Vec<RoundStats>,
}

fn migrate_once(size: u64, used_bytes: u64, stale_all: bool, v: Variant, seed: u64) -> Row {
    let src = GuestMemory::new(size, Backing::Anonymous).unwrap();
    if stale_all {
        // A memory-heavy workload ran and ended: every page was written, most are free now.
        let mut rng = Rng(seed ^ 0xabc);
        let mut buf = vec![0u8; 4 * MIB as usize];
        for at in (0..size).step_by(buf.len()) {
            rng.fill(&mut buf);
            src.write(GuestAddress(at), &buf).unwrap();
        }
    }
    let used = populate(&src, used_bytes, seed);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(size, Backing::Anonymous).unwrap();
    let mut free = PageSet::full(src.pages());
    for (s, n) in used.runs() {
        free.remove_range(s, n);
    }
    let mut hints = StaticHints::new(free);
    let cfg = MigrationConfig {
        bandwidth_bytes_per_s: TEN_GBIT,
        skip_unpopulated: v.skip_unpopulated,
        dirty_tracking: v.tracking,
        ..MigrationConfig::default()
    };
    reset_peak_rss();
    let (a, b) = in_process_pair(Duration::from_secs(30)).unwrap();
    let r = thread::scope(|s| {
        let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
        let src_side = Source::new(&src, &log, &NoGuest, cfg);
        let src_side = if v.hints {
            src_side.with_hints(&mut hints)
        } else {
            src_side
        };
        let r = src_side.run(a).unwrap();
        d.join().unwrap().unwrap();
        r
    });
    let ok = verify(&src, &dst, &used).unwrap();
    assert!(ok.ok(), "{ok:?}");
    Row {
        time: r.total_time.as_secs_f64(),
        bytes: r.bytes_sent,
        read: r.pages_read,
        hinted: r.hinted_pages,
        unpop: r.unpopulated_pages,
        downtime: r.downtime.as_secs_f64(),
        rss: r.peak_rss_bytes.max(process_peak_rss_bytes().unwrap_or(0)),
        rounds: r.per_round,
    }
}

fn scenario(title: &str, size: u64, used: u64, stale_all: bool, variants: &[Variant]) {
    println!("\n{title}");
    let mut rows: Vec<Vec<Row>> = variants.iter().map(|_| Vec::new()).collect();
    for rep in 0..REPS {
        for (i, v) in variants.iter().enumerate() {
            rows[i].push(migrate_once(size, used, stale_all, *v, 1000 + rep as u64));
        }
    }
    println!(
        "{:<28} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "variant",
        "time ms",
        "sent MB",
        "floor ms",
        "x floor",
        "pages rd",
        "hinted",
        "unpop",
        "down ms",
        "peak MB"
    );
    let base = median(rows[0].iter().map(|r| r.time).collect());
    for (v, rs) in variants.iter().zip(&rows) {
        let t = median(rs.iter().map(|r| r.time).collect());
        let r = &rs[0];
        let floor = r.bytes as f64 / TEN_GBIT as f64;
        println!(
            "{:<28} {:>9.0} {:>10.1} {:>9.0} {:>9.2} {:>10} {:>10} {:>9} {:>9.1} {:>9.0}   ({:+.0}% vs first)",
            v.name,
            t * 1e3,
            r.bytes as f64 / 1e6,
            floor * 1e3,
            t / floor,
            r.read,
            r.hinted,
            r.unpop,
            median(rs.iter().map(|r| r.downtime).collect()) * 1e3,
            median(rs.iter().map(|r| r.rss as f64).collect()) / 1e6,
            100.0 * (t - base) / base,
        );
        if std::env::var_os("VB_BENCH_DETAIL").is_some() {
            for r in rs {
                let rounds: Vec<String> = r
                    .rounds
                    .iter()
                    .map(|x| {
                        format!(
                            "r{} {:.0}ms {:.0}MB",
                            x.round,
                            x.duration.as_secs_f64() * 1e3,
                            x.bytes as f64 / 1e6
                        )
                    })
                    .collect();
                println!("    {:.0} ms: {}", r.time * 1e3, rounds.join(", "));
            }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let (r, z) = floors(if full { GIB } else { 16 * MIB });
    if full {
        assert!(z >= 0.5 * r, "zero detection far below read bandwidth");
    }
    let v = |name, hints, skip_unpopulated| Variant {
        name,
        hints,
        skip_unpopulated,
        tracking: DirtyTracking::Explicit,
    };
    let m1 = [
        v("no hints", false, false),
        v("static hints", true, false),
        v("unpopulated skip", false, true),
        v("hints + unpopulated skip", true, true),
        Variant {
            name: "hints+skip, kernel tracking",
            hints: true,
            skip_unpopulated: true,
            tracking: DirtyTracking::Kernel,
        },
    ];
    if !full {
        scenario(
            "smoke: 256 MiB guest, 16 MB used",
            256 * MIB,
            16 * MIB,
            false,
            &m1[..2],
        );
        return;
    }
    scenario(
        "M1: idle 8 GiB guest, ~400 MB used, rest never touched, 10 Gbit/s",
        8 * GIB,
        400 * MIB,
        false,
        &m1,
    );
    if std::env::var("VB_BENCH_SCENARIO").is_ok_and(|s| s == "m1") {
        return;
    }
    scenario(
        "M2 (scaled to 2 GiB): free pages hold stale data, 100 MB used, 10 Gbit/s",
        2 * GIB,
        100 * MIB,
        true,
        &m1[..3],
    );
}
