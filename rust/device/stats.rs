//! The stats queue's wire format (virtio 1.2 §5.5.6.3), now owned by [`crate::abi`]; these are
//! its names at their old device path.

pub use crate::abi::{
    encode_stats as encode, parse_stats_into as parse_into, StatsSample,
    STATS_KNOWN_TAGS as KNOWN_TAGS, STATS_MAX_LEN,
};
