//! The event-index notification test (§2.7.7.2, §2.7.10).

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use crate::memory::{GuestAddress, GuestMemory, MemoryError};

/// Whether moving a ring index from `old_idx` to `new_idx` passed `event_idx`, so the other side
/// asked to be notified.
///
/// True when `event_idx` lies in `[old_idx, new_idx)` in the 16-bit circular index space: the
/// spec's `(u16)(new_idx - event_idx - 1) < (u16)(new_idx - old_idx)`.
#[inline]
pub fn need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    let (e, n, o) = (Wrapping(event_idx), Wrapping(new_idx), Wrapping(old_idx));
    (n - e - Wrapping(1)).0 < (n - o).0
}

/// Where the other side of a queue says whether it wants a notification: its event index
/// (§2.7.10, with VIRTIO_F_EVENT_IDX) or else its flags word and the bit that declines (§2.7.7:
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`; §2.7.9: `VIRTQ_USED_F_NO_NOTIFY`).
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerRequest {
    pub(super) event_idx: Option<GuestAddress>,
    pub(super) flags: GuestAddress,
    pub(super) decline: u16,
}

impl PeerRequest {
    /// Whether the other side asked to be notified of our index moving from `old` to `new`.
    pub(super) fn wants(self, mem: &GuestMemory, new: u16, old: u16) -> Result<bool, MemoryError> {
        match self.event_idx {
            Some(at) => Ok(need_event(mem.load_u16(at, Ordering::Relaxed)?, new, old)),
            None => Ok(mem.load_u16(self.flags, Ordering::Relaxed)? & self.decline == 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `need_event(event, new, old) == want` for each `(event, new, old, want)`.
    fn check(cases: &[(u16, u16, u16, bool)]) {
        for &(event, new, old, want) in cases {
            assert_eq!(need_event(event, new, old), want, "{event} {new} {old}");
        }
    }

    #[test]
    fn test_spec_example_used_event_zero() {
        check(&[
            // §2.7.10: used_event 0 means "notify after the first buffer" (index 0 -> 1).
            (0, 1, 0, true),
            (0, 0, 0, false),
            // ... and again after the 65536th, when the index wraps back past 0.
            (0, 1, 65535, true),
        ]);
    }

    #[test]
    fn test_window_is_half_open() {
        check(&[
            (5, 6, 5, true),
            (5, 10, 3, true),
            (5, 5, 3, false),
            (10, 10, 11, false),
            (2, 10, 3, false),
        ]);
    }

    #[test]
    fn test_wrap_around() {
        check(&[
            (65535, 2, 65530, true),
            (0, 2, 65530, true),
            (3, 2, 65530, false),
            (1, 5, 5, false),
        ]);
    }

    #[test]
    fn test_matches_interval_definition() {
        // Exhaustive over a small window of every distance around a few bases.
        for base in [0u16, 1, 32767, 32768, 65535] {
            for d_new in 0u16..70 {
                for d_ev in 0u16..70 {
                    let old = base;
                    let new = base.wrapping_add(d_new);
                    let ev = base.wrapping_add(d_ev);
                    assert_eq!(need_event(ev, new, old), d_ev < d_new, "{ev} {new} {old}");
                }
            }
        }
    }
}
