//! The balloon's encoding rules, now owned by [`crate::abi`] (a transport knows nothing
//! balloon-specific); these are their names at their old path, until the device imports them
//! from `abi`.

pub use crate::abi::{encoding_for, max_message_len};
