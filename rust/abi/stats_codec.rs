//! The stats queue's wire codec (virtio 1.2 §5.5.6.3): packed `{le16 tag; le64 val}` entries.
//!
//! The driver encodes, the device parses; both reach it through `abi`, not through each other.

use std::collections::BTreeMap;

use super::{stat_name, STATS_ENTRY_SIZE};

/// Tags the device keeps: 0-15, the kernel's `VIRTIO_BALLOON_S_*` up to 6.12 (the spec text
/// lists 0-9). Others are ignored, as the spec asks.
pub const STATS_KNOWN_TAGS: u16 = 16;
/// Longest stats buffer the device reads: 409 entries, far more than any driver sends.
pub const STATS_MAX_LEN: usize = 4096;

/// The guest's statistics as the device last received them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSample {
    /// Value per known tag, for the tags the guest sent (a tag sent twice keeps the last).
    pub values: BTreeMap<u16, u64>,
    /// Entries with unknown tags, ignored.
    pub unknown: u64,
    /// Number of buffers received so far (0: none yet).
    pub generation: u64,
}

impl StatsSample {
    /// The value of `tag`, if the guest sent it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(&tag).copied()
    }

    /// `(name, value)` for each tag that has a QEMU name, in tag order.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        self.values
            .iter()
            .filter_map(|(t, v)| stat_name(*t).map(|n| (n, *v)))
            .collect()
    }
}

/// Parses a stats buffer (length already checked to be a multiple of 10) into `sample`,
/// replacing its values; returns the number of unknown tags.
pub fn parse_stats_into(bytes: &[u8], sample: &mut StatsSample) -> u64 {
    sample.values.clear();
    let mut unknown = 0;
    for e in bytes.chunks_exact(STATS_ENTRY_SIZE) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..10]);
        if tag < STATS_KNOWN_TAGS {
            sample.values.insert(tag, u64::from_le_bytes(v));
        } else {
            unknown += 1;
        }
    }
    sample.unknown = unknown;
    sample.generation += 1;
    unknown
}

/// Encodes `(tag, value)` entries as the wire bytes (what a driver writes).
pub fn encode_stats(entries: &[(u16, u64)], out: &mut Vec<u8>) {
    for (t, v) in entries {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_keeps_known_tags_ignores_others() {
        let mut b = Vec::new();
        encode_stats(&[(4, 100), (5, 200), (999, 1), (4, 150)], &mut b);
        assert_eq!(b.len(), 40);
        let mut s = StatsSample::default();
        assert_eq!(parse_stats_into(&b, &mut s), 1);
        assert_eq!(s.get(4), Some(150));
        assert_eq!(s.get(5), Some(200));
        assert_eq!(s.generation, 1);
        assert_eq!(s.named(), vec![("free-memory", 150), ("total-memory", 200)]);
    }
}
