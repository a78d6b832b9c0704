//! General helpers no layer owns: a content hash and a seedable PRNG.
//!
//! - [`hash64`], a fast non-cryptographic 64-bit hash of a page's bytes (the guest's
//!   page checks, migration's verification).
//! - [`Rng`], SplitMix64, so workloads and hostile tests reproduce from a seed.
//! - [`median`] of benchmark samples.

mod hash;
mod rng;
mod stats;

pub use hash::hash64;
pub use rng::Rng;
pub use stats::median;
