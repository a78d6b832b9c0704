//! The seed's headline measurement: inflate 7 GiB of an 8 GiB guest whose pages were all
//! touched, with PFN arrays (per-page discard, as QEMU: the baseline), PFN arrays with
//! coalesced discards (Firecracker-style), the v3 bitmap, extents and auto, every variant
//! interleaved in one run with the floors measured on the same pages.
//!
//! One guest RAM mapping is populated once and reused: each variant builds a fresh
//! [`Session`] over it (fresh allocator, so the same pages are inflated every time), inflates,
//! deflates, and the deflated pages are faulted back in before the next variant.
//!
//! Floors, each round, on the pages the last variant inflated:
//! - **one discard**: the pages' maximal runs discarded with one call each (a handful);
//! - **per-page discard**: one call per 4 KiB page (what the baseline's host pays);
//! - **guest allocation**: taking that many order-0 pages from a fresh allocator.
//!
//! The floor a variant is compared with is one discard plus the guest allocation: what any
//! balloon must pay to take those pages from the guest and give them back to the host.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::median;
use super::progress::BenchProgress;
use crate::device::DiscardPolicy;
use crate::error::Result;
use crate::guest::{Fill, Guest, Workload};
use crate::machine::{MachineConfig, RunMode, Session};
use crate::memory::{Backing, GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use crate::pages::{Encoding, PageSet};

/// One way to inflate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchVariant {
    /// Row name.
    pub name: String,
    /// Wire encoding.
    pub encoding: Encoding,
    /// Host discard policy.
    pub discard: DiscardPolicy,
}

impl BenchVariant {
    /// A variant named `name`.
    pub fn new(name: &str, encoding: Encoding, discard: DiscardPolicy) -> BenchVariant {
        BenchVariant {
            name: name.to_string(),
            encoding,
            discard,
        }
    }

    /// The seed's comparison: `pfn` (per-page discard, the baseline), `pfn+coalesce`,
    /// `bitmap`, `extents`, `auto` (these four coalesce discards), and `bitmap+vectored`
    /// (coalesced runs, 1024 per `process_madvise` call).
    pub fn defaults() -> Vec<BenchVariant> {
        vec![
            BenchVariant::new("pfn", Encoding::Pfn, DiscardPolicy::PerPage),
            BenchVariant::new("pfn+coalesce", Encoding::Pfn, DiscardPolicy::Coalesced),
            BenchVariant::new("bitmap", Encoding::Bitmap, DiscardPolicy::Coalesced),
            BenchVariant::new("extents", Encoding::Extents, DiscardPolicy::Coalesced),
            BenchVariant::new("auto", Encoding::Auto, DiscardPolicy::Coalesced),
            BenchVariant::new("bitmap+vectored", Encoding::Bitmap, DiscardPolicy::Vectored),
            BenchVariant::new("bitmap+parallel", Encoding::Bitmap, DiscardPolicy::Parallel),
        ]
    }
}

/// A fragmented guest: before inflating, a workload takes every free page one by one and frees
/// a share of them in blocks of at most [`crate::guest::fragment_max_order`]`(knob)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fragmentation {
    /// 0.0 keeps 4 MiB blocks, 1.0 leaves single pages.
    pub knob: f64,
    /// Share of the pages freed again (at most 0.5 for knob > 0.05).
    pub free_share: f64,
    /// Workload seed.
    pub seed: u64,
}

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct InflateBenchConfig {
    /// Guest RAM (8 GiB in the seed).
    pub guest_bytes: u64,
    /// Balloon target (7 GiB in the seed).
    pub inflate_bytes: u64,
    /// Guest RAM backing.
    pub backing: Backing,
    /// Rounds; each runs every variant and the floors once, interleaved.
    pub rounds: usize,
    /// The variants.
    pub variants: Vec<BenchVariant>,
    /// Fragment the guest first.
    pub fragmentation: Option<Fragmentation>,
    /// Measure the floors.
    pub floors: bool,
    /// Synchronous or threaded device.
    pub mode: RunMode,
    /// Queue size.
    pub queue_size: u16,
    /// Order of the blocks the driver takes.
    pub alloc_order: u8,
    /// Progress counters for a display on another thread (none: nothing is counted).
    pub progress: Option<Arc<BenchProgress>>,
}

impl Default for InflateBenchConfig {
    fn default() -> Self {
        InflateBenchConfig {
            guest_bytes: 8 << 30,
            inflate_bytes: 7 << 30,
            backing: Backing::Anonymous,
            rounds: 3,
            variants: BenchVariant::defaults(),
            fragmentation: None,
            floors: true,
            mode: RunMode::Synchronous,
            queue_size: crate::abi::DEFAULT_QUEUE_SIZE,
            alloc_order: 0,
            progress: None,
        }
    }
}

/// One row of the result: medians over the rounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InflateBenchRow {
    /// Variant or floor name.
    pub name: String,
    /// Encoding (`None` for floors).
    pub encoding: Option<Encoding>,
    /// Discard policy (for floors: how the floor discards).
    pub discard: DiscardPolicy,
    /// Samples taken.
    pub samples: usize,
    /// Median inflate time.
    pub inflate_secs: f64,
    /// Fastest sample.
    pub min_secs: f64,
    /// Slowest sample.
    pub max_secs: f64,
    /// Median deflate time (0 for floors).
    pub deflate_secs: f64,
    /// Median guest allocation time.
    pub alloc_secs: f64,
    /// Median encode-and-send time.
    pub encode_send_secs: f64,
    /// Median host decode time.
    pub decode_secs: f64,
    /// Median host discard time.
    pub discard_secs: f64,
    /// Buffers sent (last sample).
    pub buffers: u64,
    /// Kicks (last sample).
    pub kicks: u64,
    /// Discard calls (last sample).
    pub discard_calls: u64,
    /// Pages inflated (last sample).
    pub pages: u64,
    /// Median drop of resident guest RAM, bytes.
    pub rss_drop_bytes: i64,
    /// Median time over the baseline's (`pfn`) median.
    pub ratio_to_pfn: f64,
    /// Median time over the floor (one discard + guest allocation).
    pub ratio_to_floor: f64,
}

/// The rows, and the floor they are compared with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InflateBenchTable {
    /// Variants, then floors.
    pub rows: Vec<InflateBenchRow>,
    /// One discard over the pages plus the guest allocation, median seconds.
    pub floor_secs: f64,
    /// Guest RAM.
    pub guest_bytes: u64,
    /// Target.
    pub inflate_bytes: u64,
    /// Rounds run.
    pub rounds: usize,
    /// Fragmentation, if any.
    pub fragmentation: Option<Fragmentation>,
    /// Seconds spent faulting guest RAM in, in total (setup, not measured).
    pub populate_secs: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    inflate: f64,
    deflate: f64,
    alloc: f64,
    encode: f64,
    decode: f64,
    discard: f64,
    buffers: u64,
    kicks: u64,
    calls: u64,
    pages: u64,
    drop: i64,
}

fn populate(mem: &GuestMemory, progress: Option<&BenchProgress>) -> Result<f64> {
    let t = Instant::now();
    let Some(p) = progress else {
        mem.populate(GuestAddress(0), mem.size())?;
        return Ok(t.elapsed().as_secs_f64());
    };
    // In chunks, so a display can show how far a multi-second pass has got.
    const CHUNK: u64 = 64 << 20;
    p.populate_start(mem.size());
    let mut addr = 0;
    while addr < mem.size() {
        let len = CHUNK.min(mem.size() - addr);
        mem.populate(GuestAddress(addr), len)?;
        p.populate_add(len);
        addr += len;
    }
    p.populate_end();
    Ok(t.elapsed().as_secs_f64())
}

fn fragment(guest: &mut Guest, f: &Fragmentation) -> Result<()> {
    let free = guest.allocator().free_pages() * PAGE_SIZE;
    // The pages keep a fixed byte; they were all resident already.
    let mut w = Workload::new(f.seed).with_fill(Fill::Byte(0x5a));
    w.fragment(guest, free, f.free_share, f.knob)?;
    // The workload's pages stay allocated for the guest's lifetime.
    std::mem::forget(w);
    Ok(())
}

const RUN_TIMEOUT: Duration = Duration::from_secs(3600);

fn run_variant(
    mem: &Arc<GuestMemory>,
    cfg: &InflateBenchConfig,
    v: &BenchVariant,
    last_set: &mut Option<PageSet>,
) -> Result<Sample> {
    let mcfg = MachineConfig {
        encoding: v.encoding,
        discard: v.discard,
        mode: cfg.mode,
        queue_size: cfg.queue_size,
        alloc_order: cfg.alloc_order,
        ..MachineConfig::default()
    };
    let mut s = Session::with_memory(Arc::clone(mem), mcfg)?;
    if let Some(f) = &cfg.fragmentation {
        fragment(s.guest_mut(), f)?;
    }
    s.set_target_bytes(cfg.inflate_bytes)?;
    let up = s.run_until_settled(RUN_TIMEOUT)?;
    *last_set = Some(s.balloon_set());
    s.set_target_pages(0)?;
    let down = s.run_until_settled(RUN_TIMEOUT)?;
    s.stop()?;
    Ok(Sample {
        inflate: up.total_secs,
        deflate: down.total_secs,
        alloc: up.alloc_secs,
        encode: up.encode_send_secs,
        decode: up.decode_secs,
        discard: up.discard_secs,
        buffers: up.buffers,
        kicks: up.kicks,
        calls: up.discard_calls,
        pages: up.pages_inflated,
        drop: up.resident_drop_bytes(),
    })
}

/// Discards the runs of `set` (one call per run, or per page) and returns (seconds, calls,
/// resident drop in bytes).
fn floor_discard(mem: &GuestMemory, set: &PageSet, per_page: bool) -> Result<(f64, u64, i64)> {
    let before = mem.resident_pages(GuestAddress(0), mem.size())?;
    let runs: Vec<(u64, u64)> = set.runs().map(|r| (r.start, r.len)).collect();
    let mut calls = 0u64;
    let t = Instant::now();
    for (s, l) in runs {
        if per_page {
            for p in s..s + l {
                mem.discard(Pfn(p).addr(), PAGE_SIZE)?;
                calls += 1;
            }
        } else {
            mem.discard(Pfn(s).addr(), l * PAGE_SIZE)?;
            calls += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let after = mem.resident_pages(GuestAddress(0), mem.size())?;
    Ok((
        secs,
        calls,
        (before as i64 - after as i64) * PAGE_SIZE as i64,
    ))
}

/// Taking `pages` order-0 pages from a fresh allocator (fragmented as the variants' guests).
fn floor_alloc(mem: &Arc<GuestMemory>, cfg: &InflateBenchConfig, pages: u64) -> Result<f64> {
    let mut g = Guest::new(Arc::clone(mem))?;
    if let Some(f) = &cfg.fragmentation {
        fragment(&mut g, f)?;
    }
    let mut out = Vec::with_capacity(pages as usize);
    let t = Instant::now();
    g.allocator_mut().alloc_many(0, pages as usize, &mut out)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the benchmark: see the module docs. Takes about `rounds × (variants + 2) × 3` seconds
/// for an 8 GiB guest, most of it faulting guest RAM back in between runs.
pub fn bench_inflate(cfg: &InflateBenchConfig) -> Result<InflateBenchTable> {
    let mem = Arc::new(GuestMemory::new(cfg.guest_bytes, cfg.backing)?);
    let progress = cfg.progress.as_deref();
    let rounds = cfg.rounds.max(1);
    if let Some(p) = progress {
        p.plan((rounds * (cfg.variants.len() + if cfg.floors { 3 } else { 0 })) as u64);
        p.set_label("populate guest RAM");
    }
    let mut populate_secs = populate(&mem, progress)?;
    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let floor_names = [
        "floor: one discard",
        "floor: per-page discard",
        "floor: guest alloc",
    ];
    let nv = cfg.variants.len();
    let mut last_set = None;
    let label = |text: String| {
        if let Some(p) = progress {
            p.set_label(text);
        }
    };
    let step = || {
        if let Some(p) = progress {
            p.step();
        }
    };
    for round in 1..=rounds {
        for (i, v) in cfg.variants.iter().enumerate() {
            label(format!("round {round}/{rounds}: {}", v.name));
            let s = run_variant(&mem, cfg, v, &mut last_set)?;
            samples.entry(i).or_default().push(s);
            label(format!("round {round}/{rounds}: populate after {}", v.name));
            populate_secs += populate(&mem, progress)?;
            step();
        }
        if let (true, Some(set)) = (cfg.floors, &last_set) {
            for (k, per_page) in [(0, false), (1, true)] {
                label(format!("round {round}/{rounds}: {}", floor_names[k]));
                let (secs, calls, drop) = floor_discard(&mem, set, per_page)?;
                samples.entry(nv + k).or_default().push(Sample {
                    inflate: secs,
                    discard: secs,
                    calls,
                    pages: set.count(),
                    drop,
                    ..Sample::default()
                });
                populate_secs += populate(&mem, progress)?;
                step();
            }
            label(format!("round {round}/{rounds}: {}", floor_names[2]));
            let secs = floor_alloc(&mem, cfg, set.count())?;
            step();
            samples.entry(nv + 2).or_default().push(Sample {
                inflate: secs,
                alloc: secs,
                pages: set.count(),
                ..Sample::default()
            });
        }
    }
    let mut rows = Vec::new();
    for (&i, ss) in &samples {
        let pick = |f: fn(&Sample) -> f64| median(ss.iter().map(f));
        let last = ss.last().copied().unwrap_or_default();
        let (name, encoding, discard) = if i < nv {
            let v = &cfg.variants[i];
            (v.name.clone(), Some(v.encoding), v.discard)
        } else {
            let d = if i == nv + 1 {
                DiscardPolicy::PerPage
            } else {
                DiscardPolicy::Coalesced
            };
            (floor_names[i - nv].to_string(), None, d)
        };
        let drops: Vec<f64> = ss.iter().map(|s| s.drop as f64).collect();
        rows.push(InflateBenchRow {
            name,
            encoding,
            discard,
            samples: ss.len(),
            inflate_secs: pick(|s| s.inflate),
            min_secs: ss.iter().map(|s| s.inflate).fold(f64::INFINITY, f64::min),
            max_secs: ss.iter().map(|s| s.inflate).fold(0.0, f64::max),
            deflate_secs: pick(|s| s.deflate),
            alloc_secs: pick(|s| s.alloc),
            encode_send_secs: pick(|s| s.encode),
            decode_secs: pick(|s| s.decode),
            discard_secs: pick(|s| s.discard),
            buffers: last.buffers,
            kicks: last.kicks,
            discard_calls: last.calls,
            pages: last.pages,
            rss_drop_bytes: median(drops) as i64,
            ratio_to_pfn: 0.0,
            ratio_to_floor: 0.0,
        });
    }
    let floor_secs = if cfg.floors && rows.len() >= nv + 3 {
        rows[nv].inflate_secs + rows[nv + 2].inflate_secs
    } else {
        0.0
    };
    let pfn = rows
        .iter()
        .find(|r| r.name == "pfn")
        .map(|r| r.inflate_secs)
        .unwrap_or(0.0);
    for r in &mut rows {
        if pfn > 0.0 {
            r.ratio_to_pfn = r.inflate_secs / pfn;
        }
        if floor_secs > 0.0 {
            r.ratio_to_floor = r.inflate_secs / floor_secs;
        }
    }
    Ok(InflateBenchTable {
        rows,
        floor_secs,
        guest_bytes: cfg.guest_bytes,
        inflate_bytes: cfg.inflate_bytes,
        rounds: cfg.rounds.max(1),
        fragmentation: cfg.fragmentation,
        populate_secs,
    })
}

impl fmt::Display for InflateBenchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "inflate {:.2} GiB of a {:.2} GiB guest, all pages touched{}; medians of {} rounds; \
             floor = one discard + guest alloc = {:.3} s",
            self.inflate_bytes as f64 / (1u64 << 30) as f64,
            self.guest_bytes as f64 / (1u64 << 30) as f64,
            match &self.fragmentation {
                Some(fr) => format!(
                    ", fragmented (knob {}, free share {})",
                    fr.knob, fr.free_share
                ),
                None => String::new(),
            },
            self.rounds,
            self.floor_secs,
        )?;
        writeln!(
            f,
            "| variant | inflate s (median) | min s | vs pfn | vs floor | deflate s | alloc s | encode+send s | decode s | discard s | buffers | discard calls | RSS drop GiB |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} |",
                r.name,
                r.inflate_secs,
                r.min_secs,
                r.ratio_to_pfn,
                r.ratio_to_floor,
                r.deflate_secs,
                r.alloc_secs,
                r.encode_send_secs,
                r.decode_secs,
                r.discard_secs,
                r.buffers,
                r.discard_calls,
                r.rss_drop_bytes as f64 / (1u64 << 30) as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_small_bench_runs_every_variant_and_floor() {
        let cfg = InflateBenchConfig {
            guest_bytes: 16 << 20,
            inflate_bytes: 12 << 20,
            rounds: 1,
            ..InflateBenchConfig::default()
        };
        let t = bench_inflate(&cfg).unwrap();
        let variants = BenchVariant::defaults().len();
        assert_eq!(t.rows.len(), variants + 3);
        for r in &t.rows[..variants] {
            assert_eq!(r.pages, 3072, "{}", r.name);
            assert!(r.inflate_secs > 0.0);
        }
        assert_eq!(t.rows[0].discard_calls, 3072);
        assert!(t.rows[2].discard_calls < 10, "{:?}", t.rows[2]);
        assert!((t.rows[0].ratio_to_pfn - 1.0).abs() < 1e-9);
        assert!(t.floor_secs > 0.0);
        assert!(t.to_string().contains("| bitmap |"));
    }
}
