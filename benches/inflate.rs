//! The seed's headline: inflate 7 GiB of an 8 GiB guest, PFN arrays vs bitmap vs extents vs
//! auto, with the floors measured in the same run (see `vballoon::bench::bench_inflate`).
//!
//! A plain `harness = false` binary that prints markdown tables: each sample is a multi-second
//! one-shot run, which criterion's sampling model does not fit.
//!
//! ```text
//! cargo bench --no-default-features --bench inflate              # 8 GiB guest, 3 rounds + fragmented
//! cargo bench --no-default-features --bench inflate -- --quick   # 1 GiB guest, 1 round
//! VBALLOON_BENCH_GUEST_GIB=4 VBALLOON_BENCH_INFLATE_GIB=3 VBALLOON_BENCH_ROUNDS=5 cargo bench ...
//! ```
//!
//! Needs about guest-size of free RAM; most of the wall time is faulting the guest back in
//! between runs (about 1.5 µs per page).

#![allow(clippy::print_stdout)]

mod common;

use common::env_or;

use vballoon::bench::{bench_inflate, Fragmentation, InflateBenchConfig};
use vballoon::machine::RunMode;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str| args.iter().any(|a| a == name);
    let (g, i, r) = if quick {
        (1.0, 0.875, 1.0)
    } else {
        (8.0, 7.0, 3.0)
    };
    let guest_gib = env_or::<f64>("VBALLOON_BENCH_GUEST_GIB", g);
    let inflate_gib = env_or::<f64>("VBALLOON_BENCH_INFLATE_GIB", i);
    let rounds = env_or::<f64>("VBALLOON_BENCH_ROUNDS", r) as usize;
    let gib = |x: f64| ((x * (1u64 << 30) as f64) as u64) & !4095;
    let base = InflateBenchConfig {
        guest_bytes: gib(guest_gib),
        inflate_bytes: gib(inflate_gib),
        rounds,
        mode: if flag("--threaded") {
            RunMode::Threaded
        } else {
            RunMode::Synchronous
        },
        ..InflateBenchConfig::default()
    };
    println!("# vballoon inflate bench ({} mode)\n", base.mode.name());
    if !flag("--fragmented-only") {
        match bench_inflate(&base) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("bench failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if flag("--no-fragmented") {
        return;
    }
    // Every other page free (knob 1.0, half freed): the worst case for extents and runs.
    let frag = InflateBenchConfig {
        inflate_bytes: gib(env_or::<f64>(
            "VBALLOON_BENCH_FRAG_INFLATE_GIB",
            guest_gib * 0.375,
        )),
        rounds: rounds.clamp(1, 2),
        fragmentation: Some(Fragmentation {
            knob: env_or::<f64>("VBALLOON_BENCH_FRAG_KNOB", 1.0),
            free_share: 0.5,
            seed: 1,
        }),
        ..base
    };
    match bench_inflate(&frag) {
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("fragmented bench failed: {e}");
            std::process::exit(1);
        }
    }
}
