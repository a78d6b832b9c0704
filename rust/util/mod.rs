//! General helpers no layer owns: a content hash, a seedable PRNG, a median and a lock.
//!
//! - [`hash`]: [`hash64`], a fast non-cryptographic 64-bit hash of a page's bytes (the guest's
//!   page checks, migration's verification).
//! - [`rng`]: [`Rng`], SplitMix64, so workloads and hostile tests reproduce from a seed.
//! - [`stats`]: [`median`] of benchmark samples.
//! - [`lock`](mod@lock): [`lock()`], the one way to lock a `Mutex` (recovering from poisoning).

pub mod hash;
pub mod lock;
pub mod rng;
pub mod stats;

pub use hash::hash64;
pub use lock::lock;
pub use rng::Rng;
pub use stats::median;
