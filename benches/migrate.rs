//! Live migration at 10 Gbit/s of the published scenarios (BENCHMARKS.md M1-M3), every hint
//! variant interleaved on one built guest, with the floors of this machine measured in the same
//! run. Run with `cargo bench --no-default-features --bench migrate`.
//!
//! The hint modes get their hints from a balloon on the guest (`machine::BalloonHints`, over
//! real virtqueues). Environment: `VB_BENCH_SCENARIOS=m1,m2,m3` (which, default all),
//! `VB_BENCH_REPS=3`, `VB_BENCH_STANDIN=1` (run the hint modes with the free-list stand-in
//! instead, labelled: the host reads the guest's free lists, an upper bound and not a balloon
//! result),
//! `VB_BENCH_DIRTY_MBPS=0` (the guest's dirty rate during migration, MB/s),
//! `VB_BENCH_VARIANTS=off,skip,bitmap,upstream,reporting` (which variants; `bitmap+skip` too).
//! Without `--bench` (as `cargo test --benches` runs it) a small smoke pass runs instead.
//! Results and their commands go to `benches/RESULTS.md`.
#![allow(clippy::print_stdout)]

mod common;

use common::env_or;

use vballoon::bench::{
    bench_migrate, format_migrate_table, measure_floors, BenchMigrateConfig, MigrateVariant,
};
use vballoon::machine::Scenario;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let want_stand_in = std::env::var_os("VB_BENCH_STANDIN").is_some();
    let stand_in = want_stand_in || !full;
    let mut cfg = BenchMigrateConfig {
        stand_in,
        repetitions: env_or::<u64>("VB_BENCH_REPS", 3) as usize,
        dirty_rate_bytes_per_s: env_or::<u64>("VB_BENCH_DIRTY_MBPS", 0) * 1_000_000,
        ..BenchMigrateConfig::default()
    };
    if want_stand_in {
        // The hint modes from the stand-in instead of the balloon (the default provider).
        cfg.hint_provider = None;
    }
    if !full {
        cfg.scenarios = vec![
            Scenario::m1().with_guest_bytes(256 << 20),
            Scenario::m2().with_guest_bytes(128 << 20),
        ];
        cfg.repetitions = 1;
        let rows = bench_migrate(&cfg).expect("smoke run");
        assert!(rows
            .iter()
            .all(|r| r.skipped.is_some() || r.verified == Some(true)));
        println!("{}", format_migrate_table(&rows));
        return;
    }
    if let Ok(list) = std::env::var("VB_BENCH_SCENARIOS") {
        cfg.scenarios = list
            .split(',')
            .map(|n| Scenario::by_name(n.trim()).expect("scenario m1, m2 or m3"))
            .collect();
    }
    if let Ok(list) = std::env::var("VB_BENCH_VARIANTS") {
        cfg.variants = list
            .split(',')
            .map(|n| MigrateVariant::parse(n.trim()).expect("variant: off, skip, bitmap, ..."))
            .collect();
    }
    let f = measure_floors(1 << 30).expect("floors");
    println!(
        "floors: read {:.1} GB/s, zero detection {:.1} GB/s, memcpy {:.1} GB/s, first touch \
         {:.2} us/page, first read of a never-touched page {:.2} us/page ({:.2} s per 8 GiB), \
         mincore over 8 GiB {:.1} ms, populated (pagemap) {:.1} ms, populated (memfd) {:.1} ms; \
         link {:.2} GB/s",
        f.read_gbps,
        f.zero_detect_gbps,
        f.memcpy_gbps,
        f.first_touch_us,
        f.untouched_read_us,
        f.untouched_read_us * 2097152e-6,
        f.mincore_8gib_ms,
        f.populated_8gib_ms,
        f.populated_memfd_8gib_ms,
        cfg.bandwidth_bytes_per_s as f64 / 1e9,
    );
    println!("{cfg:?}");
    for s in cfg.scenarios.clone() {
        let one = BenchMigrateConfig {
            scenarios: vec![s],
            ..cfg.clone()
        };
        let rows = bench_migrate(&one).expect("bench run");
        if let Some(r) = rows.first() {
            println!(
                "\n{}: guest {:.1} GiB, used {:.0} MB, stale free {:.0} MB, never touched {:.0} MB",
                r.scenario,
                r.guest_bytes as f64 / (1u64 << 30) as f64,
                r.used_bytes as f64 / 1e6,
                r.stale_free_bytes as f64 / 1e6,
                r.untouched_bytes as f64 / 1e6
            );
        }
        println!("{}", format_migrate_table(&rows));
    }
}
