//! Random interleavings of guest activity (allocations, writes, frees, memory pressure) with the
//! engine's hint requests, hint polls and dirty-log syncs, all through the balloon's real
//! queues, in every hint mode: after the migration every used page must be byte-identical.
//!
//! The balloon runs only when told ([`HintRun::Manual`]), and a wrapping hint source plays a
//! script at the engine's calls (start, every poll between chunks, stop): guest steps, the
//! balloon driver's and the device's steps, each after a gap of engine calls. So proptest
//! chooses where guest writes fall relative to hint requests, answers, polls and syncs,
//! including answers that arrive rounds late, after the host moved on.

mod migration_support;

use std::sync::{Arc, Mutex};

use migration_support::{Call, Hooked, WrapHints, Wrapped};
use proptest::prelude::*;
use vballoon::machine::{
    migrate_local, BalloonHints, BalloonHintsConfig, GuestRunner, HintMode, HintProvider, HintRun,
    MigrateOptions, Scenario,
};
use vballoon::memory::PAGE_SIZE;
use vballoon::migration::{GuestControl, HintSource};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Allocate and fill a block of this order (through the guest: may shrink hinted blocks).
    Alloc(u8),
    /// Rewrite this many held pages.
    Write(u64),
    /// Free this share (in percent) of the held blocks; freed pages keep stale data.
    Free(u8),
    /// Memory pressure: the shrinker gives back this many pages of hinted blocks.
    Pressure(u64),
    /// This many steps of the guest's balloon driver.
    Driver(u8),
    /// This many device steps (every kicked queue served).
    Device(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..=10).prop_map(Op::Alloc),
        (1u64..64).prop_map(Op::Write),
        (1u8..60).prop_map(Op::Free),
        (1u64..2048).prop_map(Op::Pressure),
        (1u8..8).prop_map(Op::Driver),
        (1u8..8).prop_map(Op::Device),
    ]
}

struct Script {
    /// (engine calls to wait first, step), played from the back.
    ops: Vec<(u8, Op)>,
}

struct ScriptProvider {
    script: Mutex<Option<Script>>,
}

/// Plays a script at every engine call into the balloon's hint source (start, every poll
/// between chunks, stop, and between the stop and the sync: the guest keeps running).
struct Player<'a> {
    provider: &'a BalloonHints,
    guest: &'a GuestRunner,
    script: Script,
}

impl Player<'_> {
    /// One engine call passed: plays every step whose gap is over.
    fn play(&mut self) {
        loop {
            let Some((gap, op)) = self.script.ops.last_mut() else {
                return;
            };
            if *gap > 0 {
                *gap -= 1;
                return;
            }
            let op = *op;
            self.script.ops.pop();
            self.step(op);
        }
    }

    fn step(&mut self, op: Op) {
        let (p, guest) = (self.provider, self.guest);
        match op {
            Op::Driver(n) => {
                for _ in 0..n {
                    p.step_guest(guest).unwrap();
                }
            }
            Op::Device(n) => {
                for _ in 0..n {
                    p.step_device(guest).unwrap();
                }
            }
            op => {
                let mut st = guest.lock();
                let st = &mut *st;
                let (g, w) = (&mut st.guest, &mut st.workload);
                // Running out of memory is part of the game: the step just does less.
                match op {
                    Op::Alloc(order) => {
                        let _ = w.allocate(g, PAGE_SIZE << order, order);
                    }
                    Op::Write(n) => {
                        let _ = w.dirty_pages(g, n);
                    }
                    Op::Free(pct) => {
                        let _ = w.free_share(g, f64::from(pct) / 100.0);
                    }
                    Op::Pressure(n) => {
                        g.shrink(n);
                    }
                    Op::Driver(_) | Op::Device(_) => {}
                }
            }
        }
    }
}

impl WrapHints for ScriptProvider {
    fn name(&self) -> &str {
        "script"
    }
    fn wrap<'a>(
        &'a self,
        balloon: &'a BalloonHints,
        inner: Box<dyn HintSource + 'a>,
        guest: &'a GuestRunner,
    ) -> Box<dyn HintSource + 'a> {
        let script = self.script.lock().unwrap().take().expect("one migration");
        let mut player = Player {
            provider: balloon,
            guest,
            script,
        };
        let hook = move |_: Call| player.play();
        Box::new(Hooked { inner, hook })
    }
}

fn mode() -> impl Strategy<Value = HintMode> {
    prop_oneof![
        Just(HintMode::Bitmap),
        Just(HintMode::Upstream),
        Just(HintMode::Reporting)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn prop_random_interleavings_migrate_used_pages_intact(
        mode in mode(),
        alloc_order in prop_oneof![Just(0u8), Just(3u8), Just(10u8)],
        ops in proptest::collection::vec((0u8..40, op()), 0..64),
        seed in 0u64..1000,
    ) {
        // Half the guest allocated and filled, half of that freed again; the rest never
        // touched (the balloon's rings and buffers need a free 1 MiB block when it plugs in).
        let s = Scenario {
            alloc_order,
            seed,
            workload_bytes: 8 * MIB,
            free_share: 0.5,
            ..Scenario::m2().with_guest_bytes(16 * MIB)
        };
        let (guest, _) = s.build().unwrap();
        let provider = Arc::new(Wrapped {
            balloon: Arc::new(BalloonHints::new(BalloonHintsConfig {
                run: HintRun::Manual,
                queue_size: 64,
                ..BalloonHintsConfig::default()
            })),
            wrap: ScriptProvider {
                script: Mutex::new(Some(Script { ops })),
            },
        });
        let p: Arc<dyn HintProvider> = provider.clone();
        let o = MigrateOptions {
            hints: mode,
            hint_provider: Some(p),
            bandwidth_bytes_per_s: 0,
            chunk_pages: 64,
            // Another live round while anything is dirty, so writes, hints and syncs of
            // several rounds interleave.
            downtime_target: std::time::Duration::ZERO,
            max_rounds: 8,
            ..MigrateOptions::default()
        };
        let r = migrate_local(&guest, &o).unwrap();
        let v = r.verify.clone().unwrap();
        prop_assert!(v.ok(), "{mode}: {v:?} {:?}", r.result.per_round);
        let st = provider.balloon.stats();
        prop_assert!(st.errors.is_empty(), "{:?}", st.errors);
        prop_assert!(provider.balloon.device_errors().is_empty(), "{:?}", provider.balloon.device_errors());
        guest.resume();
        guest.lock().guest.allocator().check_invariants().unwrap();
    }
}
