//! General helpers no layer owns: a content hash, a seedable PRNG, a median and a lock.
//!
//! - [`hash64`], a fast non-cryptographic 64-bit hash of a page's bytes (the guest's
//!   page checks, migration's verification).
//! - [`Rng`], SplitMix64, so workloads and hostile tests reproduce from a seed.
//! - [`median`] of benchmark samples.
//! - [`lock()`], the one way to lock a `Mutex` (recovering from poisoning).
//! - `named_enum!`: `name()`, `parse()` and `Display` of an enum from one table of names.

mod hash;
mod lock;
mod named;
mod rng;
mod stats;

pub use hash::hash64;
pub use lock::lock;
pub(crate) use named::named_enum;
pub use rng::Rng;
pub use stats::median;
