//! General helpers no layer owns: a content hash and a seedable PRNG.
//!
//! - [`hash64`], a fast non-cryptographic 64-bit hash of a page's bytes (the guest's
//!   page checks, migration's verification).
//! - [`Rng`], SplitMix64, so workloads and hostile tests reproduce from a seed.
//! - [`median`] of benchmark samples.
//! - `named_enum!`: `name()`, `parse()` and `Display` of an enum from one table of names.

mod hash;
mod named;
mod rng;
mod stats;

pub use hash::hash64;
pub(crate) use named::named_enum;
pub use rng::Rng;
pub use stats::median;
