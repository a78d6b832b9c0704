//! General helpers no layer owns: a content hash and a seedable PRNG.
//!
//! - [`hash`]: [`hash64`], a fast non-cryptographic 64-bit hash of a page's bytes (the guest's
//!   page checks, migration's verification).
//! - [`rng`]: [`Rng`], SplitMix64, so workloads and hostile tests reproduce from a seed.
//! - [`stats`]: [`median`] of benchmark samples.

pub mod hash;
pub mod rng;
pub mod stats;

pub use hash::hash64;
pub use rng::Rng;
pub use stats::median;
