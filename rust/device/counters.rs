//! What the device has done, counted with atomics so another thread can read them live.

use std::sync::atomic::{AtomicU64, Ordering};

/// A set of named counters: a snapshot struct `$snap` of `u64`s and a live struct `$shared`
/// of atomics, with `snapshot`, `reset`, `since` and `fields` (the device's counters and the
/// hint queues' share it).
macro_rules! counter_set {
    ($snap_doc:literal $snap:ident, $shared_doc:literal $shared:ident {
        $($(#[$doc:meta])* $name:ident),* $(,)?
    }) => {
        #[doc = $snap_doc]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snap {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[doc = $shared_doc]
        #[derive(Debug, Default)]
        pub struct $shared {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl $shared {
            /// Reads every counter.
            pub fn snapshot(&self) -> $snap {
                $snap { $($name: self.$name.load(Ordering::Relaxed),)* }
            }

            /// Sets every counter to zero.
            // The hint counters' owner never resets them (their set is crate-private).
            #[allow(dead_code)]
            pub fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }

        impl $snap {
            /// The counts accumulated since `earlier` (a snapshot taken before).
            pub fn since(&self, earlier: &$snap) -> $snap {
                $snap { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }

            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}
pub(crate) use counter_set;

counter_set! {
    "A snapshot of the device's counters." DeviceCounters,
    "The live counters (one atomic each), shared by the device and its readers." SharedCounters {
    /// Inflate and deflate buffers popped (good and bad).
    buffers,
    /// Buffers refused with an error (returned used, length 0).
    bad_buffers,
    /// Readable bytes read from inflate and deflate buffers.
    bytes,
    /// Inflate buffers popped.
    inflate_buffers,
    /// Deflate buffers popped.
    deflate_buffers,
    /// Pages newly inflated (not already in the balloon).
    pages_inflated,
    /// Pages inflated again while already in the balloon (discarded again, counted once).
    pages_reinflated,
    /// Pages deflated (taken out of the balloon).
    pages_deflated,
    /// Pages the guest deflated that were not in the balloon (ignored).
    pages_stray_deflated,
    /// Runs the inflated pages formed after coalescing across the buffers of a batch.
    runs,
    /// Discard calls made on the backend (madvise or fallocate).
    discard_calls,
    /// Discard calls that failed.
    discard_errors,
    /// Host pages (2 MiB on THP/hugetlbfs RAM) that became fully ballooned, so given back.
    host_pages_filled,
    /// Nanoseconds spent reading and decoding inflate/deflate messages.
    decode_ns,
    /// Nanoseconds spent in discard (and populate-on-deflate) calls.
    discard_ns,
    /// Times the device looked at a queue after a kick.
    queue_runs,
    /// Interrupts the device sent for used buffers.
    interrupts,
    /// Stats buffers received.
    stats_buffers,
    /// Stats samples the device asked for.
    stats_requests,
    /// Stats entries with an unknown tag (ignored).
    stats_unknown_tags,
    /// Times a queue broke and the device set DEVICE_NEEDS_RESET.
    queue_errors,
}}

impl DeviceCounters {
    /// Seconds spent decoding.
    pub fn decode_secs(&self) -> f64 {
        self.decode_ns as f64 * 1e-9
    }

    /// Seconds spent discarding.
    pub fn discard_secs(&self) -> f64 {
        self.discard_ns as f64 * 1e-9
    }
}

/// Adds `n` to counter `c` (relaxed: counters order nothing).
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Nanoseconds in `d` for a counter, saturating (a u64 of nanoseconds is 584 years).
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
