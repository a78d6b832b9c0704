//! Bench I4: inflate 7 of 8 GiB on THP and hugetlbfs 2 MiB RAM, 2 MiB blocks vs 4 KiB pages vs
//! the floor, host memory returned verified, and the fragmented guest (see
//! `vballoon::bench::bench_huge`). Plain `harness = false` binary printing a markdown table.
//!
//! ```text
//! cargo bench --no-default-features --bench huge              # 8 GiB guest, 3 rounds
//! cargo bench --no-default-features --bench huge -- --quick   # 1 GiB guest, 1 round
//! VBALLOON_BENCH_GUEST_GIB=4 VBALLOON_BENCH_INFLATE_GIB=3 VBALLOON_BENCH_ROUNDS=5 cargo bench ...
//! ```
//!
//! Needs guest-size of free RAM, and for hugetlbfs root (it raises /proc/sys/vm/nr_hugepages
//! to guest-size for the run and puts the old value back).

#![allow(clippy::print_stdout)]

mod common;

use common::env_or;

use vballoon::bench::{bench_huge, HugeBenchConfig};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (g, i, r) = if quick {
        (1.0, 0.875, 1.0)
    } else {
        (8.0, 7.0, 3.0)
    };
    let huge = |x: f64| ((x * (1u64 << 30) as f64) as u64) & !((2 << 20) - 1);
    let cfg = HugeBenchConfig {
        guest_bytes: huge(env_or::<f64>("VBALLOON_BENCH_GUEST_GIB", g)),
        inflate_bytes: huge(env_or::<f64>("VBALLOON_BENCH_INFLATE_GIB", i)),
        rounds: env_or::<f64>("VBALLOON_BENCH_ROUNDS", r) as usize,
        ..HugeBenchConfig::default()
    };
    match bench_huge(&cfg) {
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
