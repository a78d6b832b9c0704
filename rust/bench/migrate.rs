//! The migration benchmark: the published scenarios (M1-M3) × hint modes at 10 Gbit/s, each
//! result next to its floor, as rows the CLI and `benches/migrate.rs` print.
//!
//! Each scenario is built once; its variants then run interleaved, repetition by repetition,
//! on the same guest (the machine is shared and noisy: compare within one run). Between runs
//! the guest is restored with [`GuestRunner::restore_untouched`], so a run that read
//! never-touched memory does not change what the next one sees.
//!
//! Floors: a scenario's floor is the time the bytes that must cross the link take at the link's
//! bandwidth: every used page as a data record (4104 bytes), nothing for free pages. A
//! variant's own link time is the bytes it actually sent at that bandwidth; a variant far above
//! its own link time is bound by CPU, not by the link.
//!
//! Hint modes other than [`HintMode::Off`] run only with a [`HintProvider`]; rows of the
//! free-list stand-in are labelled as such and are an upper bound, not a balloon result.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::median;
use super::progress::BenchProgress;
use crate::error::Result;
use crate::machine::{
    migrate_local, BalloonHints, FreeListStandIn, GuestRunner, HintMode, HintProvider,
    MigrateOptions, Scenario, ScenarioInfo,
};
use crate::memory::PAGE_SIZE;
use crate::memory::{is_zero_raw, process_peak_rss_bytes, Backing, GuestAddress, GuestMemory};
use crate::migration::{stream::DATA_RECORD_LEN, DirtyTracking, GuestControl};

/// One column of the table: a hint mode and whether unpopulated pages are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateVariant {
    /// The hint mode.
    pub hints: HintMode,
    /// Unpopulated skipping (always on with [`HintMode::Reporting`]).
    pub skip_unpopulated: bool,
}

impl MigrateVariant {
    /// The default set: no hints, unpopulated skipping, then the three balloon modes.
    pub fn defaults() -> Vec<MigrateVariant> {
        let v = |hints, skip_unpopulated| MigrateVariant {
            hints,
            skip_unpopulated,
        };
        vec![
            v(HintMode::Off, false),
            v(HintMode::Off, true),
            v(HintMode::Bitmap, false),
            v(HintMode::Upstream, false),
            v(HintMode::Reporting, true),
        ]
    }

    /// Parses `"off"`, `"skip"`, a hint mode name, or `"<mode>+skip"`.
    pub fn parse(s: &str) -> Option<MigrateVariant> {
        let (mode, skip) = match s.strip_suffix("+skip") {
            Some(m) => (m, true),
            None => (s, false),
        };
        if mode == "skip" || mode == "unpopulated" {
            return Some(MigrateVariant {
                hints: HintMode::Off,
                skip_unpopulated: true,
            });
        }
        Some(MigrateVariant {
            hints: HintMode::parse(mode)?,
            skip_unpopulated: skip,
        })
    }

    /// A label: `"no hints"`, `"unpopulated skip"`, `"bitmap"`, `"bitmap + skip"`, ...
    pub fn label(&self) -> String {
        match (self.hints, self.skip_unpopulated) {
            (HintMode::Off, false) => "no hints".into(),
            (HintMode::Off, true) => "unpopulated skip".into(),
            (HintMode::Reporting, _) => "reporting".into(),
            (m, false) => m.name().into(),
            (m, true) => format!("{m} + skip"),
        }
    }
}

/// What [`bench_migrate`] runs.
#[derive(Clone, Debug)]
pub struct BenchMigrateConfig {
    /// Scenarios, each built once (default: M1, M2, M3).
    pub scenarios: Vec<Scenario>,
    /// Variants, run interleaved on each scenario.
    pub variants: Vec<MigrateVariant>,
    /// The balloon session's hint provider (default: [`BalloonHints`], a
    /// balloon on each scenario's guest); without one, hint-mode variants are reported as
    /// skipped (unless the stand-in is on).
    pub hint_provider: Option<Arc<dyn HintProvider>>,
    /// Run the hint-mode variants with the [`FreeListStandIn`] (labelled, an upper bound) when
    /// there is no provider or it lacks the mode.
    pub stand_in: bool,
    /// Runs per variant (the row holds the median).
    pub repetitions: usize,
    /// Runs per variant for guests larger than 32 GiB (M3 without hints takes half a minute).
    pub repetitions_large: usize,
    /// Link bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Downtime target.
    pub downtime_target: Duration,
    /// The guest's dirty rate during each migration, bytes per second.
    pub dirty_rate_bytes_per_s: u64,
    /// Dirty tracking.
    pub dirty_tracking: DirtyTracking,
    /// Verify every run (compares all used pages; not timed).
    pub verify: bool,
    /// Run the first variant once, unmeasured, before the measured runs of guests up to
    /// 32 GiB: the first run to populate gigabytes of destination RAM also pays for the host
    /// reclaiming its page cache, which has nothing to do with the variant.
    pub warmup: bool,
    /// Progress counters for a display on another thread (none: nothing is counted).
    pub progress: Option<Arc<BenchProgress>>,
}

impl Default for BenchMigrateConfig {
    fn default() -> BenchMigrateConfig {
        // The published setup's link, downtime and tracking are a migration's defaults.
        let published = MigrateOptions::default();
        BenchMigrateConfig {
            scenarios: vec![Scenario::m1(), Scenario::m2(), Scenario::m3()],
            variants: MigrateVariant::defaults(),
            hint_provider: Some(Arc::new(BalloonHints::default())),
            stand_in: false,
            repetitions: 3,
            repetitions_large: 1,
            bandwidth_bytes_per_s: published.bandwidth_bytes_per_s,
            downtime_target: published.downtime_target,
            dirty_rate_bytes_per_s: published.dirty_rate_bytes_per_s,
            dirty_tracking: published.dirty_tracking,
            verify: published.verify,
            warmup: true,
            progress: None,
        }
    }
}

/// One row: a scenario × variant, medians over the repetitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchMigrateRow {
    /// Scenario name.
    pub scenario: String,
    /// Variant label (with `" (stand-in)"` when the free-list stand-in supplied the hints).
    pub variant: String,
    /// Hint mode.
    pub hints: HintMode,
    /// Who supplied the hints, if anyone.
    pub hint_provider: Option<String>,
    /// Unpopulated skipping on.
    pub skip_unpopulated: bool,
    /// Why the variant did not run (no provider for its mode), or `None`.
    pub skipped: Option<String>,
    /// Guest RAM, bytes.
    pub guest_bytes: u64,
    /// Bytes the guest uses.
    pub used_bytes: u64,
    /// Free bytes holding stale data.
    pub stale_free_bytes: u64,
    /// Bytes never touched.
    pub untouched_bytes: u64,
    /// Runs measured.
    pub runs: usize,
    /// Median total migration time, ms.
    pub total_ms: f64,
    /// Fastest and slowest run, ms.
    pub total_ms_range: (f64, f64),
    /// Median downtime, ms.
    pub downtime_ms: f64,
    /// Bytes sent (median run).
    pub bytes_sent: u64,
    /// Pages read by the engine (median run).
    pub pages_read: u64,
    /// Pages sent with data (median run).
    pub data_pages: u64,
    /// Pages skipped by hints (median run).
    pub hinted_pages: u64,
    /// Pages sent as zero unread (median run).
    pub unpopulated_pages: u64,
    /// Rounds (median run).
    pub rounds: u32,
    /// Peak RSS of the process during the run (source and destination RAM both count).
    pub peak_rss_bytes: u64,
    /// The scenario's floor: used pages as data records at the link's bandwidth, ms.
    pub floor_ms: f64,
    /// `total_ms / floor_ms`.
    pub ratio_to_floor: f64,
    /// This variant's own bytes at the link's bandwidth, ms.
    pub link_ms: f64,
    /// `total_ms / link_ms` (above 1.0: CPU- or latency-bound).
    pub ratio_to_link: f64,
    /// Speed-up over the scenario's no-hints variant (`no_hints_ms / total_ms`), if it ran.
    pub speedup_vs_no_hints: Option<f64>,
    /// Every run verified clean (None: verification off).
    pub verified: Option<bool>,
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux 4.0+); without it peaks accumulate.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs the benchmark; returns one row per scenario × variant, in order.
pub fn bench_migrate(cfg: &BenchMigrateConfig) -> Result<Vec<BenchMigrateRow>> {
    let stand_in: Arc<dyn HintProvider> = Arc::new(FreeListStandIn::default());
    let mut rows = Vec::new();
    let progress = cfg.progress.as_deref();
    if let Some(p) = progress {
        p.plan(cfg.scenarios.len() as u64);
    }
    for scenario in &cfg.scenarios {
        if let Some(p) = progress {
            p.set_label(format!("{}: build the guest", scenario.name));
        }
        let (guest, info) = scenario.build()?;
        let reps = if scenario.guest_bytes > 32 << 30 {
            cfg.repetitions_large
        } else {
            cfg.repetitions
        }
        .max(1);
        let mut plans: Vec<_> = cfg
            .variants
            .iter()
            .map(|v| plan(cfg, *v, &stand_in))
            .collect();
        if let Some(p) = progress {
            p.step();
            p.plan((reps * plans.iter().filter(|p| p.opts.is_ok()).count()) as u64);
            for o in plans.iter_mut().filter_map(|p| p.opts.as_mut().ok()) {
                o.progress = Some(Arc::clone(&p.migration));
            }
        }
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); plans.len()];
        if cfg.warmup && scenario.guest_bytes <= 32 << 30 {
            if let Some(Ok(opts)) = plans.iter().map(|p| &p.opts).find(|o| o.is_ok()) {
                if let Some(p) = progress {
                    p.set_label(format!("{}: warm-up run", scenario.name));
                }
                run_once(&guest, opts)?;
            }
        }
        for rep in 1..=reps {
            for (i, p) in plans.iter().enumerate() {
                if let Ok(opts) = &p.opts {
                    if let Some(bp) = progress {
                        bp.set_label(format!("{} {rep}/{reps}: {}", scenario.name, p.label));
                    }
                    runs[i].push(run_once(&guest, opts)?);
                    if let Some(bp) = progress {
                        bp.step();
                    }
                }
            }
        }
        let scenario_rows: Vec<_> = plans
            .iter()
            .zip(&mut runs)
            .map(|(p, r)| row(cfg, &info, p, r))
            .collect();
        let base = scenario_rows
            .iter()
            .find(|r| r.hints == HintMode::Off && !r.skip_unpopulated && r.runs > 0)
            .map(|r| r.total_ms);
        rows.extend(scenario_rows.into_iter().map(|mut r| {
            if r.runs > 0 {
                r.speedup_vs_no_hints = base.map(|b| b / r.total_ms);
            }
            r
        }));
        drop(guest);
    }
    Ok(rows)
}

struct Plan {
    variant: MigrateVariant,
    label: String,
    opts: std::result::Result<MigrateOptions, String>,
}

fn plan(cfg: &BenchMigrateConfig, v: MigrateVariant, stand_in: &Arc<dyn HintProvider>) -> Plan {
    let base = MigrateOptions {
        hints: v.hints,
        skip_unpopulated: v.skip_unpopulated,
        bandwidth_bytes_per_s: cfg.bandwidth_bytes_per_s,
        downtime_target: cfg.downtime_target,
        dirty_rate_bytes_per_s: cfg.dirty_rate_bytes_per_s,
        dirty_tracking: cfg.dirty_tracking,
        verify: cfg.verify,
        io_timeout: Duration::from_secs(120),
        ..MigrateOptions::default()
    };
    if v.hints == HintMode::Off {
        return Plan {
            variant: v,
            label: v.label(),
            opts: Ok(base),
        };
    }
    // The balloon's provider if it has the mode, else the labelled stand-in if allowed.
    match cfg.hint_provider.clone() {
        Some(p) if p.supports(v.hints) => Plan {
            variant: v,
            label: v.label(),
            opts: Ok(MigrateOptions {
                hint_provider: Some(p),
                ..base
            }),
        },
        _ if cfg.stand_in && stand_in.supports(v.hints) => Plan {
            variant: v,
            label: format!("{} (stand-in)", v.label()),
            opts: Ok(MigrateOptions {
                hint_provider: Some(stand_in.clone()),
                ..base
            }),
        },
        _ => Plan {
            variant: v,
            label: v.label(),
            opts: Err(format!("no hint provider for mode {}", v.hints)),
        },
    }
}

#[derive(Clone)]
struct Run {
    total_ms: f64,
    downtime_ms: f64,
    bytes_sent: u64,
    pages_read: u64,
    data_pages: u64,
    hinted_pages: u64,
    unpopulated_pages: u64,
    rounds: u32,
    peak_rss: u64,
    verified: Option<bool>,
}

fn run_once(guest: &GuestRunner, opts: &MigrateOptions) -> Result<Run> {
    let before = guest.resident_pages()?;
    reset_peak_rss();
    let res = migrate_local(guest, opts);
    let peak_rss = process_peak_rss_bytes().unwrap_or(0);
    // Back to the built state: idle, running, nothing read mapped.
    guest.set_dirty_rate(0);
    guest.pause();
    guest.restore_untouched(&before)?;
    if let Some(p) = &opts.hint_provider {
        p.reset_guest(opts.hints, guest, &before)?;
    }
    guest.resume();
    let r = res?;
    Ok(Run {
        total_ms: r.result.total_time.as_secs_f64() * 1e3,
        downtime_ms: r.result.downtime.as_secs_f64() * 1e3,
        bytes_sent: r.result.bytes_sent,
        pages_read: r.result.pages_read,
        data_pages: r.result.data_pages,
        hinted_pages: r.result.hinted_pages,
        unpopulated_pages: r.result.unpopulated_pages,
        rounds: r.result.rounds,
        peak_rss,
        verified: r.verify.map(|v| v.ok()),
    })
}

fn row(
    cfg: &BenchMigrateConfig,
    info: &ScenarioInfo,
    p: &Plan,
    runs: &mut [Run],
) -> BenchMigrateRow {
    let bw = cfg.bandwidth_bytes_per_s.max(1) as f64;
    let used_pages = info.used_bytes / PAGE_SIZE;
    let floor_ms = (used_pages * DATA_RECORD_LEN as u64) as f64 / bw * 1e3;
    let mut r = BenchMigrateRow {
        scenario: info.name.clone(),
        variant: p.label.clone(),
        hints: p.variant.hints,
        skip_unpopulated: p.variant.skip_unpopulated || p.variant.hints == HintMode::Reporting,
        guest_bytes: info.guest_bytes,
        used_bytes: info.used_bytes,
        stale_free_bytes: info.stale_free_bytes,
        untouched_bytes: info.untouched_bytes,
        floor_ms,
        runs: runs.len(),
        ..BenchMigrateRow::default()
    };
    match &p.opts {
        Err(why) => {
            r.skipped = Some(why.clone());
            return r;
        }
        Ok(o) => r.hint_provider = o.hint_provider.as_ref().map(|p| p.name().to_owned()),
    }
    if runs.is_empty() {
        return r;
    }
    let mut times: Vec<f64> = runs.iter().map(|x| x.total_ms).collect();
    r.total_ms = crate::util::median(&mut times);
    r.total_ms_range = (times[0], times[times.len() - 1]);
    r.downtime_ms = median(runs.iter().map(|x| x.downtime_ms));
    r.peak_rss_bytes = median(runs.iter().map(|x| x.peak_rss as f64)) as u64;
    runs.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    let m = &runs[runs.len() / 2];
    r.bytes_sent = m.bytes_sent;
    r.pages_read = m.pages_read;
    r.data_pages = m.data_pages;
    r.hinted_pages = m.hinted_pages;
    r.unpopulated_pages = m.unpopulated_pages;
    r.rounds = m.rounds;
    r.ratio_to_floor = r.total_ms / floor_ms.max(1e-9);
    r.link_ms = m.bytes_sent as f64 / bw * 1e3;
    r.ratio_to_link = r.total_ms / r.link_ms.max(1e-9);
    r.verified = if cfg.verify {
        Some(runs.iter().all(|x| x.verified == Some(true)))
    } else {
        None
    };
    r
}

/// Costs of this machine the migration is measured against (BENCHMARKS.md's floor table),
/// re-measured in the same run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrateFloors {
    /// Read bandwidth over populated memory, GB/s.
    pub read_gbps: f64,
    /// Zero detection (per 4 KiB page) over populated zero memory, GB/s.
    pub zero_detect_gbps: f64,
    /// memcpy bandwidth between populated buffers, GB/s.
    pub memcpy_gbps: f64,
    /// First read of a never-touched anonymous page (maps the zero page), µs per page.
    pub untouched_read_us: f64,
    /// First write of a never-touched anonymous page (a fault that allocates), µs per page.
    pub first_touch_us: f64,
    /// mincore over 8 GiB of address space, ms.
    pub mincore_8gib_ms: f64,
    /// [`GuestMemory::populated`] (pagemap) over 8 GiB of anonymous RAM, ms.
    pub populated_8gib_ms: f64,
    /// [`GuestMemory::populated`] (mincore + SEEK_DATA) over 8 GiB of memfd RAM, ms.
    pub populated_memfd_8gib_ms: f64,
}

/// Measures [`MigrateFloors`] over `bytes` of memory (1 GiB gives stable numbers).
pub fn measure_floors(bytes: u64) -> Result<MigrateFloors> {
    let bytes = bytes.max(16 * PAGE_SIZE) / PAGE_SIZE * PAGE_SIZE;
    let pages = bytes / PAGE_SIZE;
    let gbps = |d: Duration| bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9;
    let mut f = MigrateFloors::default();

    let a = GuestMemory::new(bytes, Backing::Anonymous)?;
    let t = Instant::now();
    a.fill(GuestAddress(0), bytes, 0)?;
    f.first_touch_us = t.elapsed().as_secs_f64() * 1e6 / pages as f64;
    let p = a.host_ptr(GuestAddress(0), bytes)?;
    let t = Instant::now();
    let mut acc = 0u64;
    for i in 0..(bytes / 8) as usize {
        // SAFETY: `i * 8 + 8 <= bytes`, inside the mapping; plain reads of populated memory.
        acc = acc.wrapping_add(unsafe { p.cast::<u64>().add(i).read() });
    }
    black_box(acc);
    f.read_gbps = gbps(t.elapsed());
    let t = Instant::now();
    let mut all = true;
    for page in 0..pages {
        // SAFETY: each page lies inside the mapping.
        all &= unsafe { is_zero_raw(p.add((page * PAGE_SIZE) as usize), PAGE_SIZE as usize) };
    }
    black_box(all);
    f.zero_detect_gbps = gbps(t.elapsed());
    let b = GuestMemory::new(bytes, Backing::Anonymous)?;
    b.fill(GuestAddress(0), bytes, 1)?;
    let q = b.host_ptr(GuestAddress(0), bytes)?;
    let t = Instant::now();
    // SAFETY: two distinct mappings of `bytes` each; a plain copy between them.
    unsafe { std::ptr::copy_nonoverlapping(q, p, bytes as usize) };
    f.memcpy_gbps = gbps(t.elapsed());
    drop((a, b));

    let c = GuestMemory::new(bytes, Backing::Anonymous)?;
    let t = Instant::now();
    for page in 0..pages {
        black_box(c.read_u8(GuestAddress(page * PAGE_SIZE))?);
    }
    f.untouched_read_us = t.elapsed().as_secs_f64() * 1e6 / pages as f64;
    drop(c);
    let big = GuestMemory::new(8 << 30, Backing::Anonymous)?;
    let t = Instant::now();
    black_box(big.resident_pages(GuestAddress(0), 8 << 30)?);
    f.mincore_8gib_ms = t.elapsed().as_secs_f64() * 1e3;
    f.populated_8gib_ms = populated_ms(&big)?;
    drop(big);
    f.populated_memfd_8gib_ms = populated_ms(&GuestMemory::new(8 << 30, Backing::Memfd)?)?;
    Ok(f)
}

/// Time of one [`GuestMemory::populated`] over all of `mem`, 1 GiB per call as the users do.
fn populated_ms(mem: &GuestMemory) -> Result<f64> {
    let t = Instant::now();
    let mut at = 0;
    while at < mem.size() {
        let len = (1 << 30).min(mem.size() - at);
        black_box(mem.populated(GuestAddress(at), len)?);
        at += len;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The rows as a Markdown table (what `benches/migrate.rs` prints).
pub fn format_migrate_table(rows: &[BenchMigrateRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "| scenario | variant | time ms | sent MB | pages read | hinted | unpop | downtime ms | \
         rounds | peak RSS MB | floor ms | x floor | x own link | speed-up | verified |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(s, "| {} | {} | skipped: {why} |", r.scenario, r.variant);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} ({:.0}-{:.0}) | {:.1} | {} | {} | {} | {:.1} | {} | {:.0} | {:.0} | \
             {:.2} | {:.2} | {} | {} |",
            r.scenario,
            r.variant,
            r.total_ms,
            r.total_ms_range.0,
            r.total_ms_range.1,
            r.bytes_sent as f64 / 1e6,
            r.pages_read,
            r.hinted_pages,
            r.unpopulated_pages,
            r.downtime_ms,
            r.rounds,
            r.peak_rss_bytes as f64 / 1e6,
            r.floor_ms,
            r.ratio_to_floor,
            r.ratio_to_link,
            r.speedup_vs_no_hints
                .map_or("-".to_owned(), |x| format!("{x:.2}x")),
            r.verified.map_or("-", |v| if v { "ok" } else { "MISMATCH" }),
        );
    }
    s
}
