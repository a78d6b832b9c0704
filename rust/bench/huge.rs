//! Bench I4: inflate 7 of 8 GiB on huge-page-backed guest RAM (THP and hugetlbfs 2 MiB), in
//! one run, with the host memory returned verified, beside 4 KiB pages on the same backing and
//! the floor (one discard per run of the same pages) measured on the same mapping.
//!
//! Per backing, each round: the guest giving 2 MiB blocks ([`HUGE_PAGE_ORDER`]) with one
//! discard per run and with discards split across threads; the guest giving 4 KiB pages; the
//! floor. Then, once, the fragmented guest (it holds every other 4 KiB page): the balloon takes
//! the free half (what comes back now), then the guest frees the rest of one region and the
//! balloon takes that too (what comes back then). THP runs both partial-page policies there.
//!
//! Host memory returned is read from the kernel, not from our counters: smaps `Rss` and
//! `AnonHugePages` of the mapping for THP (plus `MemFree`, since a split huge page leaves RSS
//! before its memory is freed), the hugetlb pool's free pages for hugetlbfs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::median;
use crate::device::{DiscardPolicy, HugePartial};
use crate::error::Result;
use crate::guest::HUGE_PAGE_ORDER;
use crate::machine::{InflateReport, MachineConfig, Session};
use crate::memory::{
    Backing, GuestAddress, GuestMemory, HugePageStats, HugetlbPool, HugetlbReservation, Pfn,
    HUGE_PAGE_SIZE, PAGE_SIZE,
};
use crate::pages::Encoding;

const RUN_TIMEOUT: Duration = Duration::from_secs(3600);
const GIB: f64 = (1u64 << 30) as f64;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct HugeBenchConfig {
    /// Guest RAM (8 GiB for I4), a multiple of 2 MiB.
    pub guest_bytes: u64,
    /// Balloon target (7 GiB for I4).
    pub inflate_bytes: u64,
    /// Backings to run, one after the other (one mapping at a time).
    pub backings: Vec<Backing>,
    /// Rounds of the unfragmented variants (medians are reported).
    pub rounds: usize,
    /// Run the fragmented guest too.
    pub fragmented: bool,
    /// For hugetlbfs: raise `nr_hugepages` for the run and give the pages back after.
    pub reserve: bool,
}

impl Default for HugeBenchConfig {
    fn default() -> Self {
        HugeBenchConfig {
            guest_bytes: 8 << 30,
            inflate_bytes: 7 << 30,
            backings: vec![Backing::Thp, Backing::Hugetlb],
            rounds: 3,
            fragmented: true,
            reserve: true,
        }
    }
}

/// One row: a variant on a backing (medians over the rounds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HugeBenchRow {
    /// Backing name.
    pub backing: String,
    /// Variant name.
    pub variant: String,
    /// Samples.
    pub samples: usize,
    /// Median seconds from target set to settled (floor: the discards alone).
    pub secs: f64,
    /// Bytes ballooned.
    pub ballooned_bytes: u64,
    /// Host memory returned, measured (see the module docs), median.
    pub returned_bytes: i64,
    /// Returned bytes per second.
    pub gib_per_s: f64,
    /// Discard calls (last sample).
    pub discard_calls: u64,
    /// Share of guest RAM on huge pages before the run (last sample).
    pub huge_share_before: f64,
    /// For THP: the drop of system `MemFree` (memory really freed), median.
    pub memfree_gain_bytes: i64,
    /// THPs (system-wide) mapped only in part after the run: 2 MiB each still allocated.
    pub thp_partially_mapped: u64,
    /// Seconds over the floor's.
    pub ratio_to_floor: f64,
    /// Whether the measured drop covers what this variant should give back.
    pub verified: bool,
    /// Why a backing was skipped, or a remark.
    pub note: String,
}

/// The I4 table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HugeBenchTable {
    /// Rows, grouped by backing.
    pub rows: Vec<HugeBenchRow>,
    /// Guest RAM.
    pub guest_bytes: u64,
    /// Target.
    pub inflate_bytes: u64,
    /// Rounds.
    pub rounds: usize,
}

/// THPs mapped only in part (split PMDs): their memory stays allocated until the kernel
/// splits them under memory pressure (Linux 6.12+ counter; 0 where absent).
fn thp_partially_mapped() -> u64 {
    std::fs::read_to_string(
        "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/stats/nr_anon_partially_mapped",
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

fn meminfo_free() -> i64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Host bytes behind guest RAM as the kernel reports them.
#[derive(Clone, Copy, Debug)]
struct Host {
    stats: HugePageStats,
    memfree: i64,
    partial: u64,
}

impl Host {
    fn read(mem: &GuestMemory) -> Result<Host> {
        Ok(Host {
            stats: mem.huge_page_stats()?,
            memfree: meminfo_free(),
            partial: thp_partially_mapped(),
        })
    }

    /// Bytes given back between `self` and `after`: pool pages for hugetlb, smaps RSS for THP.
    fn returned(&self, after: &Host) -> i64 {
        match (self.stats.pool, after.stats.pool) {
            (Some(a), Some(b)) => (b.free as i64 - a.free as i64) * HUGE_PAGE_SIZE as i64,
            _ => self.stats.rss_bytes as i64 - after.stats.rss_bytes as i64,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    secs: f64,
    ballooned: u64,
    returned: i64,
    memfree: i64,
    calls: u64,
    huge_share: f64,
    expect: u64,
    partial_after: u64,
}

impl Sample {
    /// One balloon move `up` of the guest on `mem`, the host read `before` and `after` it.
    fn of(
        up: &InflateReport,
        mem: &GuestMemory,
        before: &Host,
        after: &Host,
        expect: u64,
    ) -> Sample {
        Sample {
            secs: up.total_secs,
            ballooned: up.pages_inflated * PAGE_SIZE,
            returned: before.returned(after),
            memfree: after.memfree - before.memfree,
            calls: up.discard_calls,
            huge_share: before.stats.huge_share(mem.size()),
            expect,
            partial_after: after.partial,
        }
    }
}

fn session(
    mem: &Arc<GuestMemory>,
    order: u8,
    discard: DiscardPolicy,
    p: HugePartial,
) -> Result<Session> {
    let cfg = MachineConfig {
        encoding: Encoding::Bitmap,
        discard,
        alloc_order: order,
        huge_partial: p,
        ..MachineConfig::default()
    };
    Session::with_memory(Arc::clone(mem), cfg)
}

/// Inflates `inflate_bytes` with a fresh guest, measures, deflates and faults RAM back in.
fn run_inflate(
    mem: &Arc<GuestMemory>,
    bytes: u64,
    order: u8,
    discard: DiscardPolicy,
) -> Result<(Sample, Vec<(u64, u64)>)> {
    let mut s = session(mem, order, discard, HugePartial::Wait)?;
    let before = Host::read(mem)?;
    s.set_target_bytes(bytes)?;
    let up = s.run_until_settled(RUN_TIMEOUT)?;
    let after = Host::read(mem)?;
    let set = s.balloon_set();
    let full = s.device().host_pages().map_or(0, |t| t.full_host_pages());
    s.set_target_pages(0)?;
    s.run_until_settled(RUN_TIMEOUT)?;
    s.stop()?;
    mem.populate(GuestAddress(0), mem.size())?;
    let sample = Sample::of(&up, mem, &before, &after, full * HUGE_PAGE_SIZE);
    Ok((sample, set.runs().map(|r| (r.start, r.len)).collect()))
}

/// The floor: the same runs discarded from the host alone, one call per run.
fn run_floor(mem: &GuestMemory, runs: &[(u64, u64)]) -> Result<Sample> {
    let before = Host::read(mem)?;
    let t = Instant::now();
    for &(s, l) in runs {
        mem.discard(Pfn(s).addr(), l * PAGE_SIZE)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = Host::read(mem)?;
    mem.populate(GuestAddress(0), mem.size())?;
    let pages: u64 = runs.iter().map(|r| r.1).sum();
    Ok(Sample {
        secs,
        ballooned: pages * PAGE_SIZE,
        returned: before.returned(&after),
        memfree: after.memfree - before.memfree,
        calls: runs.len() as u64,
        huge_share: before.stats.huge_share(mem.size()),
        expect: pages * PAGE_SIZE / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE,
        partial_after: after.partial,
    })
}

/// The fragmented guest: two rows (the free half now; one region's rest later).
fn run_fragmented(mem: &Arc<GuestMemory>, partial: HugePartial) -> Result<[Sample; 2]> {
    let mut s = session(mem, 0, DiscardPolicy::Coalesced, partial)?;
    let mut held = Vec::new();
    {
        let a = s.guest_mut().allocator_mut();
        a.alloc_many(0, a.free_pages() as usize, &mut held)?;
        for p in held.iter().filter(|p| p.0 % 2 == 1) {
            a.free(*p, 0)?;
        }
    }
    let odd = held.iter().filter(|p| p.0 % 2 == 1).count() as u64;
    let mut out = [Sample::default(); 2];
    let before = Host::read(mem)?;
    s.set_target_pages(odd)?;
    let up = s.run_until_settled(RUN_TIMEOUT)?;
    let mid = Host::read(mem)?;
    let expect = if partial == HugePartial::Split {
        odd * PAGE_SIZE
    } else {
        0
    };
    out[0] = Sample::of(&up, mem, &before, &mid, expect);
    // The guest frees the rest of the lower half of its RAM; the balloon takes it.
    let half = mem.pages() / 2;
    let rest: Vec<Pfn> = held
        .iter()
        .copied()
        .filter(|p| p.0 % 2 == 0 && p.0 < half)
        .collect();
    for p in &rest {
        s.guest_mut().allocator_mut().free(*p, 0)?;
    }
    s.set_target_pages(odd + rest.len() as u64)?;
    let up = s.run_until_settled(RUN_TIMEOUT)?;
    let end = Host::read(mem)?;
    let full = s.device().host_pages().map_or(0, |t| t.full_host_pages());
    let expect = if partial == HugePartial::Split {
        rest.len() as u64 * PAGE_SIZE
    } else {
        full * HUGE_PAGE_SIZE
    };
    out[1] = Sample::of(&up, mem, &mid, &end, expect);
    s.set_target_pages(0)?;
    s.run_until_settled(RUN_TIMEOUT)?;
    s.stop()?;
    mem.populate(GuestAddress(0), mem.size())?;
    Ok(out)
}

fn row(backing: Backing, variant: &str, ss: &[Sample]) -> HugeBenchRow {
    let last = ss.last().copied().unwrap_or_default();
    let secs = median(ss.iter().map(|s| s.secs));
    let returned = median(ss.iter().map(|s| s.returned as f64)) as i64;
    // Within one 2 MiB page per GiB of what should come back (smaps rounding, page tables).
    let slack = (last.expect >> 30).max(1) * HUGE_PAGE_SIZE;
    HugeBenchRow {
        backing: backing.name().into(),
        variant: variant.into(),
        samples: ss.len(),
        secs,
        ballooned_bytes: last.ballooned,
        returned_bytes: returned,
        gib_per_s: if secs > 0.0 {
            returned.max(0) as f64 / GIB / secs
        } else {
            0.0
        },
        discard_calls: last.calls,
        huge_share_before: last.huge_share,
        memfree_gain_bytes: median(ss.iter().map(|s| s.memfree as f64)) as i64,
        thp_partially_mapped: last.partial_after,
        ratio_to_floor: 0.0,
        verified: ss
            .iter()
            .all(|s| s.returned + slack as i64 >= s.expect as i64),
        note: String::new(),
    }
}

fn bench_backing(
    cfg: &HugeBenchConfig,
    backing: Backing,
    rows: &mut Vec<HugeBenchRow>,
) -> Result<()> {
    let skipped = |note: String| HugeBenchRow {
        backing: backing.name().into(),
        variant: "skipped".into(),
        note,
        ..HugeBenchRow::default()
    };
    let _res = if backing == Backing::Hugetlb && cfg.reserve {
        let need = cfg.guest_bytes / HUGE_PAGE_SIZE;
        let have = HugetlbPool::read().map(|p| p.available()).unwrap_or(0);
        match HugetlbReservation::new(need.saturating_sub(have)) {
            Ok(r) => Some(r),
            Err(e) => {
                rows.push(skipped(e.to_string()));
                return Ok(());
            }
        }
    } else {
        None
    };
    let mem = match GuestMemory::new(cfg.guest_bytes, backing) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            rows.push(skipped(e.to_string()));
            return Ok(());
        }
    };
    mem.populate(GuestAddress(0), mem.size())?;
    let variants: [(&str, u8, DiscardPolicy); 3] = [
        ("2 MiB blocks", HUGE_PAGE_ORDER, DiscardPolicy::Coalesced),
        (
            "2 MiB blocks, parallel",
            HUGE_PAGE_ORDER,
            DiscardPolicy::Parallel,
        ),
        ("4 KiB pages", 0, DiscardPolicy::Coalesced),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len() + 1];
    for _ in 0..cfg.rounds.max(1) {
        let mut runs = Vec::new();
        for (i, &(_, order, discard)) in variants.iter().enumerate() {
            let (s, r) = run_inflate(&mem, cfg.inflate_bytes, order, discard)?;
            samples[i].push(s);
            if i == 0 {
                runs = r;
            }
        }
        samples[variants.len()].push(run_floor(&mem, &runs)?);
    }
    let first = rows.len();
    for (i, (name, _, _)) in variants.iter().enumerate() {
        rows.push(row(backing, name, &samples[i]));
    }
    let floor = row(
        backing,
        "floor: one discard per run",
        &samples[variants.len()],
    );
    let floor_secs = floor.secs;
    rows.push(floor);
    if cfg.fragmented {
        let policies: &[HugePartial] = if backing == Backing::Thp {
            &[HugePartial::Wait, HugePartial::Split]
        } else {
            &[HugePartial::Wait]
        };
        for &p in policies {
            let [now, later] = run_fragmented(&mem, p)?;
            rows.push(row(
                backing,
                &format!("fragmented ({p}): every other page"),
                &[now],
            ));
            rows.push(row(
                backing,
                &format!("fragmented ({p}): rest of half freed"),
                &[later],
            ));
        }
    }
    for r in &mut rows[first..] {
        if floor_secs > 0.0 {
            r.ratio_to_floor = r.secs / floor_secs;
        }
    }
    Ok(())
}

/// Runs bench I4: see the module docs. Maps one backing at a time (about guest-size of RAM,
/// and for hugetlbfs guest-size of reserved 2 MiB pages, reserved for the run if `reserve`).
pub fn bench_huge(cfg: &HugeBenchConfig) -> Result<HugeBenchTable> {
    let mut rows = Vec::new();
    for &b in &cfg.backings {
        bench_backing(cfg, b, &mut rows)?;
    }
    Ok(HugeBenchTable {
        rows,
        guest_bytes: cfg.guest_bytes,
        inflate_bytes: cfg.inflate_bytes,
        rounds: cfg.rounds.max(1),
    })
}

impl fmt::Display for HugeBenchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "I4: inflate {:.2} of {:.2} GiB on huge-page RAM, all touched; medians of {} rounds",
            self.inflate_bytes as f64 / GIB,
            self.guest_bytes as f64 / GIB,
            self.rounds
        )?;
        writeln!(f, "| backing | variant | s | ballooned GiB | returned GiB | GiB/s | vs floor | discard calls | huge before | MemFree gain GiB | THPs partly mapped | verified |")?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in &self.rows {
            if !r.note.is_empty() {
                writeln!(f, "| {} | {} | {} ||||||||||", r.backing, r.variant, r.note)?;
                continue;
            }
            writeln!(
                f,
                "| {} | {} | {:.3} | {:.2} | {:.2} | {:.1} | {:.2} | {} | {:.0}% | {:.2} | {} | {} |",
                r.backing,
                r.variant,
                r.secs,
                r.ballooned_bytes as f64 / GIB,
                r.returned_bytes as f64 / GIB,
                r.gib_per_s,
                r.ratio_to_floor,
                r.discard_calls,
                r.huge_share_before * 100.0,
                r.memfree_gain_bytes as f64 / GIB,
                r.thp_partially_mapped,
                if r.verified { "yes" } else { "NO" },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_small_huge_bench_verifies_what_comes_back() {
        let cfg = HugeBenchConfig {
            guest_bytes: 64 << 20,
            inflate_bytes: 48 << 20,
            backings: vec![Backing::Thp],
            rounds: 1,
            ..HugeBenchConfig::default()
        };
        let t = bench_huge(&cfg).unwrap();
        if t.rows[0].variant == "skipped" {
            return eprintln!("skipping: {}", t.rows[0].note);
        }
        assert_eq!(t.rows.len(), 4 + 4, "{t}");
        for r in &t.rows[..3] {
            assert_eq!(r.ballooned_bytes, 48 << 20, "{}", r.variant);
            assert!(r.verified, "{t}");
            assert!(r.returned_bytes >= 46 << 20, "{t}");
        }
        // Waiting on a fragmented guest frees nothing until huge pages fill; then they do.
        assert!(t.rows[4].returned_bytes < 2 << 20, "{t}");
        assert!(t.rows[5].returned_bytes >= 14 << 20, "{t}");
        assert!(t.to_string().contains("| thp | 2 MiB blocks |"));
    }
}
