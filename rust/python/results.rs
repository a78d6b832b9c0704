//! The result classes of the benchmarks and of live-state queries (ring pump, inflate and
//! huge-page tables, migration rows, a destination's report, progress snapshots, guest info,
//! huge-page stats, device counters): typed attributes, dicts only from `to_dict()`.

use std::sync::atomic::Ordering::Relaxed;

use pyo3::prelude::*;

use super::records::record;
use crate::bench::{BenchMigrateRow, BenchProgress, PumpResult};
use crate::bench::{HugeBenchRow, HugeBenchTable, InflateBenchRow, InflateBenchTable};
use crate::device::DeviceCounters;
use crate::machine::ScenarioInfo;
use crate::memory::{HugePageStats, HugetlbPool};
use crate::migration::{DestReport, Progress};

record! {
    /// What `pump_queue` measured: chains through a queue pair and what they cost.
    pub struct PyPumpResult as "PumpResult" {
        /// Chains sent and returned.
        buffers: u64,
        /// Device-readable bytes the device read.
        bytes_read: u64,
        /// Kicks the driver sent.
        kicks: u64,
        /// Interrupts the device sent.
        interrupts: u64,
        /// Wall time, seconds.
        seconds: f64,
        /// Chains per second.
        buffers_per_second: f64,
    }
}

impl From<&PumpResult> for PyPumpResult {
    fn from(r: &PumpResult) -> Self {
        PyPumpResult {
            buffers: r.buffers,
            bytes_read: r.bytes_read,
            kicks: r.kicks,
            interrupts: r.interrupts,
            seconds: r.seconds,
            buffers_per_second: r.buffers_per_second(),
        }
    }
}

record! {
    /// One variant of the inflate benchmark (medians over the rounds).
    pub struct PyInflateRow as "InflateRow" {
        /// Variant: an encoding and discard policy, or a floor.
        name: String,
        /// Wire encoding (None for a floor).
        encoding: Option<String>,
        /// Discard policy.
        discard: String,
        /// Rounds measured.
        samples: usize,
        /// Inflate time, seconds (median).
        inflate_secs: f64,
        /// Fastest round, seconds.
        min_secs: f64,
        /// Slowest round, seconds.
        max_secs: f64,
        /// Deflate time, seconds.
        deflate_secs: f64,
        /// Guest: taking pages from its allocator, seconds.
        alloc_secs: f64,
        /// Guest: encoding and sending, seconds.
        encode_send_secs: f64,
        /// Host: reading and decoding, seconds.
        decode_secs: f64,
        /// Host: discard calls, seconds.
        discard_secs: f64,
        /// Buffers sent.
        buffers: u64,
        /// Kicks sent.
        kicks: u64,
        /// Discard calls made.
        discard_calls: u64,
        /// Pages inflated.
        pages: u64,
        /// Resident bytes given back to the host.
        rss_drop_bytes: i64,
        /// Inflate time over the pfn encoding's.
        ratio_to_pfn: f64,
        /// Inflate time over the floor measured in the same run.
        ratio_to_floor: f64,
    }
}

impl From<&InflateBenchRow> for PyInflateRow {
    fn from(r: &InflateBenchRow) -> Self {
        PyInflateRow {
            name: r.name.clone(),
            encoding: r.encoding.map(|e| e.name().to_string()),
            discard: r.discard.name().to_string(),
            samples: r.samples,
            inflate_secs: r.inflate_secs,
            min_secs: r.min_secs,
            max_secs: r.max_secs,
            deflate_secs: r.deflate_secs,
            alloc_secs: r.alloc_secs,
            encode_send_secs: r.encode_send_secs,
            decode_secs: r.decode_secs,
            discard_secs: r.discard_secs,
            buffers: r.buffers,
            kicks: r.kicks,
            discard_calls: r.discard_calls,
            pages: r.pages,
            rss_drop_bytes: r.rss_drop_bytes,
            ratio_to_pfn: r.ratio_to_pfn,
            ratio_to_floor: r.ratio_to_floor,
        }
    }
}

record! {
    /// The inflate benchmark: every variant, and the run-wide figures.
    pub struct PyInflateTable as "InflateTable" {
        /// Guest RAM, bytes.
        guest_bytes: u64,
        /// Bytes inflated.
        inflate_bytes: u64,
        /// Interleaved rounds (medians over them).
        rounds: usize,
        /// The floor: one discard of the whole range, seconds.
        floor_secs: f64,
        /// Touching every page before the rounds, seconds.
        populate_secs: f64,
        /// The fragmentation knob (None: an unfragmented guest).
        fragmentation: Option<f64>,
        /// One row per variant.
        rows: Vec<PyInflateRow>,
    }
}

impl PyInflateTable {
    /// The table, with the fragmentation knob the caller gave.
    pub(super) fn new(t: &InflateBenchTable, fragmentation: Option<f64>) -> Self {
        PyInflateTable {
            guest_bytes: t.guest_bytes,
            inflate_bytes: t.inflate_bytes,
            rounds: t.rounds,
            floor_secs: t.floor_secs,
            populate_secs: t.populate_secs,
            fragmentation,
            rows: t.rows.iter().map(PyInflateRow::from).collect(),
        }
    }
}

record! {
    /// One backing and variant of the huge-page benchmark (I4).
    pub struct PyHugeRow as "HugeRow" {
        /// Backing: "thp" or "hugetlb".
        backing: String,
        /// Variant (2 MiB blocks, 4 KiB pages, floor, fragmented).
        variant: String,
        /// Rounds measured.
        samples: usize,
        /// Inflate time, seconds (median).
        secs: f64,
        /// Bytes put in the balloon.
        ballooned_bytes: u64,
        /// Bytes the host got back.
        returned_bytes: i64,
        /// Inflate speed, GiB/s.
        gib_per_s: f64,
        /// Discard calls made.
        discard_calls: u64,
        /// Share of guest RAM on huge pages before inflating (0 to 1).
        huge_share_before: f64,
        /// MemFree gained on the host, bytes.
        memfree_gain_bytes: i64,
        /// Transparent huge pages left partly mapped.
        thp_partially_mapped: u64,
        /// Time over the floor measured in the same run.
        ratio_to_floor: f64,
        /// Whether the memory given back was verified.
        verified: bool,
        /// Why the row was not measured (empty when it was).
        note: String,
    }
}

impl From<&HugeBenchRow> for PyHugeRow {
    fn from(r: &HugeBenchRow) -> Self {
        PyHugeRow {
            backing: r.backing.clone(),
            variant: r.variant.clone(),
            samples: r.samples,
            secs: r.secs,
            ballooned_bytes: r.ballooned_bytes,
            returned_bytes: r.returned_bytes,
            gib_per_s: r.gib_per_s,
            discard_calls: r.discard_calls,
            huge_share_before: r.huge_share_before,
            memfree_gain_bytes: r.memfree_gain_bytes,
            thp_partially_mapped: r.thp_partially_mapped,
            ratio_to_floor: r.ratio_to_floor,
            verified: r.verified,
            note: r.note.clone(),
        }
    }
}

record! {
    /// The huge-page benchmark (I4): every backing and variant.
    pub struct PyHugeTable as "HugeTable" {
        /// Guest RAM, bytes.
        guest_bytes: u64,
        /// Bytes inflated.
        inflate_bytes: u64,
        /// Rounds (medians over them).
        rounds: usize,
        /// One row per backing and variant.
        rows: Vec<PyHugeRow>,
    }
}

impl From<&HugeBenchTable> for PyHugeTable {
    fn from(t: &HugeBenchTable) -> Self {
        PyHugeTable {
            guest_bytes: t.guest_bytes,
            inflate_bytes: t.inflate_bytes,
            rounds: t.rounds,
            rows: t.rows.iter().map(PyHugeRow::from).collect(),
        }
    }
}

record! {
    /// One scenario and variant of the migration benchmark (medians over the repetitions).
    pub struct PyMigrateRow as "MigrateRow" {
        /// Scenario: "M1", "M2", "M3".
        scenario: String,
        /// Variant: a hint mode, optionally "+skip".
        variant: String,
        /// Hint mode.
        hints: String,
        /// Where hints came from (None without hints).
        hint_provider: Option<String>,
        /// Whether unpopulated pages were skipped.
        skip_unpopulated: bool,
        /// Why the variant did not run (None when it ran).
        skipped: Option<String>,
        /// Guest RAM, bytes.
        guest_bytes: u64,
        /// Bytes the guest uses.
        used_bytes: u64,
        /// Free bytes holding stale data.
        stale_free_bytes: u64,
        /// Bytes never touched.
        untouched_bytes: u64,
        /// Migrations measured.
        runs: usize,
        /// Migration time, ms (median).
        total_ms: f64,
        /// Fastest and slowest run, ms.
        total_ms_range: (f64, f64),
        /// Downtime, ms.
        downtime_ms: f64,
        /// Bytes sent.
        bytes_sent: u64,
        /// Pages the source read.
        pages_read: u64,
        /// Pages sent with their contents.
        data_pages: u64,
        /// Pages skipped because hinted free.
        hinted_pages: u64,
        /// Pages skipped because never populated.
        unpopulated_pages: u64,
        /// Rounds, stop-and-copy included.
        rounds: u32,
        /// Peak RSS of the process, bytes.
        peak_rss_bytes: u64,
        /// The floor: sending the used bytes at the link's rate, ms.
        floor_ms: f64,
        /// Time over the floor.
        ratio_to_floor: f64,
        /// Time over the link time of the bytes sent.
        ratio_to_link: f64,
        /// Speed-up over the same scenario without hints (None for that row).
        speedup_vs_no_hints: Option<f64>,
        /// Whether every used page arrived intact (None: not verified).
        verified: Option<bool>,
    }
}

impl From<&BenchMigrateRow> for PyMigrateRow {
    fn from(r: &BenchMigrateRow) -> Self {
        PyMigrateRow {
            scenario: r.scenario.clone(),
            variant: r.variant.clone(),
            hints: r.hints.name().to_string(),
            hint_provider: r.hint_provider.clone(),
            skip_unpopulated: r.skip_unpopulated,
            skipped: r.skipped.clone(),
            guest_bytes: r.guest_bytes,
            used_bytes: r.used_bytes,
            stale_free_bytes: r.stale_free_bytes,
            untouched_bytes: r.untouched_bytes,
            runs: r.runs,
            total_ms: r.total_ms,
            total_ms_range: r.total_ms_range,
            downtime_ms: r.downtime_ms,
            bytes_sent: r.bytes_sent,
            pages_read: r.pages_read,
            data_pages: r.data_pages,
            hinted_pages: r.hinted_pages,
            unpopulated_pages: r.unpopulated_pages,
            rounds: r.rounds,
            peak_rss_bytes: r.peak_rss_bytes,
            floor_ms: r.floor_ms,
            ratio_to_floor: r.ratio_to_floor,
            ratio_to_link: r.ratio_to_link,
            speedup_vs_no_hints: r.speedup_vs_no_hints,
            verified: r.verified,
        }
    }
}

record! {
    /// What a migration destination received (`listen_migration`).
    pub struct PyDestReport as "DestReport" {
        /// Guest RAM announced by the source, bytes.
        guest_bytes: u64,
        /// Rounds received.
        rounds: u32,
        /// Data records applied.
        data_pages: u64,
        /// Pages covered by zero runs.
        zero_pages: u64,
        /// Stream bytes received.
        bytes_received: u64,
        /// From the header to the end frame, seconds.
        total_secs: f64,
        /// Used pages the source had checked here (None: the source did not verify).
        verified_pages: Option<u64>,
        /// Of those, pages that differ (must be 0).
        mismatched_pages: Option<u64>,
    }
}

impl From<&DestReport> for PyDestReport {
    fn from(r: &DestReport) -> Self {
        PyDestReport {
            guest_bytes: r.header.guest_size,
            rounds: r.rounds,
            data_pages: r.data_pages,
            zero_pages: r.zero_pages,
            bytes_received: r.bytes_received,
            total_secs: r.duration.as_secs_f64(),
            verified_pages: r.verify.as_ref().map(|v| v.pages_checked),
            mismatched_pages: r.verify.as_ref().map(|v| v.mismatched),
        }
    }
}

record! {
    /// Where a migration is (`Guest.progress()`): read live from another thread.
    pub struct PyMigrationProgress as "MigrationProgress" {
        /// Current round (1-based; 0 before the first).
        round: u64,
        /// Pages the round has walked past.
        pages_done: u64,
        /// Pages of guest RAM.
        pages_total: u64,
        /// Bytes handed to the link.
        bytes_sent: u64,
        /// Whether stop-and-copy has begun.
        stop_and_copy: bool,
    }
}

impl From<&Progress> for PyMigrationProgress {
    fn from(p: &Progress) -> Self {
        PyMigrationProgress {
            round: p.round.load(Relaxed),
            pages_done: p.pages_done.load(Relaxed),
            pages_total: p.pages_total.load(Relaxed),
            bytes_sent: p.bytes_sent.load(Relaxed),
            stop_and_copy: p.stop_and_copy.load(Relaxed),
        }
    }
}

record! {
    /// Where a benchmark is (`BenchProgress.snapshot()`).
    pub struct PyBenchSnapshot as "BenchSnapshot" {
        /// What runs now.
        label: String,
        /// Steps finished.
        steps_done: u64,
        /// Steps the run will take.
        steps_total: u64,
        /// Bytes the populate pass running now has faulted in.
        populate_done: u64,
        /// Bytes it will fault in (0: none runs).
        populate_total: u64,
        /// The running migration's round.
        round: u64,
        /// Pages its round has walked past.
        pages_done: u64,
        /// Pages of its guest RAM.
        pages_total: u64,
        /// Bytes it sent.
        bytes_sent: u64,
    }
}

impl From<&BenchProgress> for PyBenchSnapshot {
    fn from(p: &BenchProgress) -> Self {
        let m = PyMigrationProgress::from(&*p.migration);
        PyBenchSnapshot {
            label: p.label(),
            steps_done: p.steps_done.load(Relaxed),
            steps_total: p.steps_total.load(Relaxed),
            populate_done: p.populate_done.load(Relaxed),
            populate_total: p.populate_total.load(Relaxed),
            round: m.round,
            pages_done: m.pages_done,
            pages_total: m.pages_total,
            bytes_sent: m.bytes_sent,
        }
    }
}

record! {
    /// What a `Guest` was built as (`Guest.info()`).
    pub struct PyGuestInfo as "GuestInfo" {
        /// Scenario name ("custom" without one).
        name: String,
        /// Guest RAM, bytes.
        guest_bytes: u64,
        /// Bytes the workload uses.
        used_bytes: u64,
        /// Free bytes that hold stale data.
        stale_free_bytes: u64,
        /// Bytes never touched.
        untouched_bytes: u64,
        /// Free blocks of the allocator, by order.
        free_blocks_by_order: Vec<u64>,
        /// Time to build the guest, seconds.
        build_secs: f64,
    }
}

impl From<&ScenarioInfo> for PyGuestInfo {
    fn from(i: &ScenarioInfo) -> Self {
        PyGuestInfo {
            name: i.name.clone(),
            guest_bytes: i.guest_bytes,
            used_bytes: i.used_bytes,
            stale_free_bytes: i.stale_free_bytes,
            untouched_bytes: i.untouched_bytes,
            free_blocks_by_order: i.free_blocks_by_order.clone(),
            build_secs: i.build_time.as_secs_f64(),
        }
    }
}

record! {
    /// The 2 MiB hugetlb pool (`/sys/kernel/mm/hugepages`), in pages.
    pub struct PyHugetlbPool as "HugetlbPool" {
        /// Pages in the pool.
        total: u64,
        /// Pages nobody faulted in.
        free: u64,
        /// Free pages promised to mappings.
        reserved: u64,
        /// Surplus pages (overcommit).
        surplus: u64,
    }
}

impl From<&HugetlbPool> for PyHugetlbPool {
    fn from(p: &HugetlbPool) -> Self {
        PyHugetlbPool {
            total: p.total,
            free: p.free,
            reserved: p.reserved,
            surplus: p.surplus,
        }
    }
}

record! {
    /// How much of guest RAM is resident and on huge pages (`GuestMemory.huge_page_stats()`).
    pub struct PyHugePageStats as "HugePageStats" {
        /// The backing (None if unknown).
        backing: Option<String>,
        /// Host page size the device gives memory back in, bytes.
        host_page_size: u64,
        /// Resident bytes (smaps Rss).
        rss_bytes: u64,
        /// Bytes on huge pages.
        huge_bytes: u64,
        /// Bytes a memfd has allocated (None for anonymous RAM).
        file_allocated_bytes: Option<u64>,
        /// The hugetlb pool (None except for hugetlb).
        pool: Option<PyHugetlbPool>,
    }
}

impl From<&HugePageStats> for PyHugePageStats {
    fn from(s: &HugePageStats) -> Self {
        PyHugePageStats {
            backing: s.backing.map(|b| b.name().to_string()),
            host_page_size: s.host_page_size,
            rss_bytes: s.rss_bytes,
            huge_bytes: s.huge_bytes,
            file_allocated_bytes: s.file_allocated_bytes,
            pool: s.pool.as_ref().map(PyHugetlbPool::from),
        }
    }
}

/// `DeviceCounters` as a pyclass: the core declares the counters; this names each once (with
/// its docstring), so a renamed counter is a compile error here, not a silent gap.
macro_rules! device_counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        record! {
            /// The balloon device's counters (`Session.device_counters()`): buffers, pages,
            /// discard calls, time, errors.
            pub struct PyDeviceCounters as "DeviceCounters" {
                $(#[doc = $doc] $name: u64,)*
            }
        }

        impl From<&DeviceCounters> for PyDeviceCounters {
            fn from(c: &DeviceCounters) -> Self {
                PyDeviceCounters { $($name: c.$name,)* }
            }
        }
    };
}

device_counters! {
    buffers: "Inflate and deflate buffers popped (good and bad).",
    bad_buffers: "Buffers refused with an error.",
    bytes: "Readable bytes of inflate and deflate buffers.",
    inflate_buffers: "Inflate buffers popped.",
    deflate_buffers: "Deflate buffers popped.",
    pages_inflated: "Pages newly put in the balloon.",
    pages_reinflated: "Pages inflated again while in the balloon.",
    pages_deflated: "Pages taken out of the balloon.",
    pages_stray_deflated: "Pages deflated that were not in the balloon.",
    runs: "Runs the inflated pages formed, coalesced over a batch.",
    discard_calls: "Discard calls made (madvise, fallocate).",
    discard_errors: "Discard calls that failed.",
    host_pages_filled: "Huge host pages that became wholly ballooned.",
    decode_ns: "Nanoseconds reading and decoding messages.",
    discard_ns: "Nanoseconds in discard calls.",
    queue_runs: "Queue passes after a kick.",
    interrupts: "Interrupts sent for used buffers.",
    stats_buffers: "Stats buffers received.",
    stats_requests: "Stats samples asked for.",
    stats_unknown_tags: "Stats entries with an unknown tag.",
    queue_errors: "Times a queue broke (DEVICE_NEEDS_RESET).",
}
