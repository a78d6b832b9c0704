//! The lifecycle harness (the `device_lifecycle` fuzz target's) in the default run: its seed
//! inputs (ring features, queue sizes up to 256 with wrapping indices, every discard policy,
//! resets and renegotiation, config-space writes) and random guests all keep the invariants:
//! nothing outside guest RAM touched, every changed guest page logged, no write while reset,
//! the balloon's size matching the counters.

use vballoon::rig::hostile_lifecycle::{lifecycle_seeds, LifecycleHarness, LIFECYCLE_HEADER};
use vballoon::util::Rng;

#[test]
fn test_lifecycle_seeds_are_served_and_keep_every_invariant() {
    let h = LifecycleHarness::new().expect("canaries placed");
    let seeds = lifecycle_seeds();
    assert!(seeds.len() >= 8, "{} seeds", seeds.len());
    let (mut resets, mut inflated) = (0, 0);
    for seed in &seeds {
        let out = h
            .run(seed)
            .unwrap_or_else(|e| panic!("header {:02x?}: {e}", &seed[..LIFECYCLE_HEADER]));
        assert!(out.negotiated, "header {:02x?}", &seed[..LIFECYCLE_HEADER]);
        assert!(out.buffers >= 1, "header {:02x?}: {out:?}", &seed[..8]);
        resets += out.resets;
        inflated += u64::from(out.balloon_pages > 0);
    }
    assert!(resets >= 3, "the seeds reset the device");
    assert!(inflated >= 3, "the seeds inflate");
    assert!(h.guarded().canaries_intact());
}

#[test]
fn test_lifecycle_random_guests_keep_every_invariant() {
    let h = LifecycleHarness::new().expect("canaries placed");
    let seeds = lifecycle_seeds();
    let mut rng = Rng::new(11);
    for i in 0..200u64 {
        // Half mutate a seed (deep paths), half are noise with a random header.
        let mut input = if i % 2 == 0 {
            seeds[(i / 2) as usize % seeds.len()].clone()
        } else {
            let mut b = vec![0u8; 1 + rng.below(0x4000) as usize];
            rng.fill(&mut b);
            b
        };
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(input.len() as u64) as usize;
            input[at] = rng.below(256) as u8;
        }
        if let Err(e) = h.run(&input) {
            panic!(
                "input {i} (header {:02x?}): {e}",
                &input[..input.len().min(8)]
            );
        }
    }
    assert!(h.guarded().canaries_intact());
}

/// Writes the seeds into the fuzz corpus: `cargo test --no-default-features --test
/// device_lifecycle write_lifecycle_seeds -- --ignored`.
#[test]
#[ignore]
fn write_lifecycle_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/device_lifecycle");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in lifecycle_seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
    }
}
