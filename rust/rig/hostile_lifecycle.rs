//! A hostile guest across the device's whole life: the harness behind the `device_lifecycle`
//! fuzz target and its tests.
//!
//! On top of what [`Harness`](super::hostile::Harness) covers, an input here also picks the
//! ring features the device offers and the driver takes (EVENT_IDX, INDIRECT_DESC), PAGE_POISON,
//! the queue size (1 to 256) and where the ring indices start (so they wrap past 65535), any of
//! the five discard policies, and a script of driver and host actions run between queue
//! services: resets and renegotiation with another feature subset, config-space writes
//! (`poison_val`, `actual`), status writes, stats and hint requests. After every input it
//! checks what must hold whatever the guest did:
//!
//! - nothing outside guest RAM was touched (canary pages on both sides);
//! - every byte of guest RAM the device changed lies in a page it logged (dirty logging on
//!   every queue and every error path);
//! - between a reset and the next DRIVER_OK the device writes nothing at all;
//! - the balloon's size equals pages inflated minus pages deflated (nothing lost or invented).

use std::sync::{Arc, Mutex};

use super::hostile::GuardedMemory;
use crate::abi::{
    bit, AbiMode, BalloonFeatures, CONFIG_ACTUAL, CONFIG_POISON_VAL, VBALLOON_F_PAGE_AUTO,
    VBALLOON_F_PAGE_EXTENTS, VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::device::{BalloonDevice, DeviceConfig, DiscardPolicy, HintOffer, WriteLog};
use crate::memory::{GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use crate::pages::{Encoding, PageSet};
use crate::rig::DriverStart;
use crate::transport::Transport;
use crate::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use crate::virtq::{NotifyMode, QueueLayout};

/// Guest size: 64 MiB, so a batch can reach the parallel policy's threaded split (16384 pages).
pub const LIFECYCLE_GUEST_BYTES: u64 = 64 << 20;
/// Bytes of an input before the guest RAM image.
pub const LIFECYCLE_HEADER: usize = 8;
/// Actions in an input's script.
pub const LIFECYCLE_OPS: usize = 4;

/// Queue size byte `b` of an input picks: 1, 2, 4, ..., 256.
pub fn queue_size_for(b: u8) -> u16 {
    1 << ((b & 0xf) % 9)
}

/// Guest address of queue `i`'s rings for queue size `size`: packed one after the other.
pub fn lifecycle_queue_addr(i: u16, size: u16) -> u64 {
    u64::from(i) * QueueLayout::placed_bytes(size).next_multiple_of(64)
}

/// What one lifecycle run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleOutcome {
    /// Whether the first negotiation succeeded.
    pub negotiated: bool,
    /// Driver resets the script did.
    pub resets: u32,
    /// Buffers the device popped.
    pub buffers: u64,
    /// Errors the device logged.
    pub errors: u64,
    /// Pages in the balloon at the end.
    pub balloon_pages: u64,
}

/// A violated invariant: the fuzz target turns it into a crash.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleViolation {
    /// A canary page next to guest RAM changed or was discarded.
    #[error("device touched memory outside guest RAM")]
    Canary,
    /// A guest page changed without being logged.
    #[error("guest page {pfn} changed but was not logged as written")]
    Unlogged {
        /// The page.
        pfn: u64,
    },
    /// The device wrote guest RAM while reset.
    #[error("device wrote {pages} guest pages while reset")]
    WroteWhileReset {
        /// Pages logged in that window.
        pages: u64,
    },
    /// The balloon and the counters disagree.
    #[error("balloon holds {balloon} pages, counters say {inflated} in - {deflated} out")]
    Accounting {
        /// Pages in the balloon.
        balloon: u64,
        /// Pages inflated.
        inflated: u64,
        /// Pages deflated.
        deflated: u64,
    },
}

/// The lifecycle harness: a guarded 64 MiB guest reused across inputs.
#[derive(Debug)]
pub struct LifecycleHarness {
    guarded: GuardedMemory,
}

impl LifecycleHarness {
    /// Maps the guarded guest; `None` if the canaries could not be placed.
    pub fn new() -> Option<LifecycleHarness> {
        Some(LifecycleHarness {
            guarded: GuardedMemory::new(LIFECYCLE_GUEST_BYTES)?,
        })
    }

    /// The guarded memory.
    pub fn guarded(&self) -> &GuardedMemory {
        &self.guarded
    }

    /// The device configuration and extra features header bytes 0 and 1 pick.
    pub fn config_for(h0: u8, h1: u8, size: u16) -> (DeviceConfig, u64) {
        let cfg = DeviceConfig {
            encoding: Encoding::ALL[usize::from(h0 & 3)],
            stats: h0 & 4 != 0,
            must_tell_host: h0 & 8 != 0,
            abi: if h0 & 0x10 != 0 {
                AbiMode::V3
            } else {
                AbiMode::Vballoon
            },
            populate_on_deflate: h0 & 0x20 != 0,
            discard: DiscardPolicy::ALL[usize::from(h1 & 7) % DiscardPolicy::ALL.len()],
            hints: HintOffer {
                misc: h1 & 8 != 0,
                free_page_hint: h1 & 0x10 != 0,
                reporting: h1 & 0x20 != 0,
                page_poison: h1 & 0x40 != 0,
            },
            queue_max_size: size,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        };
        let mut extra = 0;
        if h0 & 0x40 != 0 {
            extra |= feature(VIRTIO_F_EVENT_IDX);
        }
        if h0 & 0x80 != 0 {
            extra |= feature(VIRTIO_F_INDIRECT_DESC);
        }
        if h1 & 0x40 != 0 {
            extra |= bit(VIRTIO_BALLOON_F_PAGE_POISON);
        }
        (cfg, extra)
    }

    /// Runs one input and checks the invariants (module docs). Header: byte 0 and 1 the
    /// configuration ([`LifecycleHarness::config_for`]), byte 2 the queue size (low nibble) and
    /// how far below 65536 the ring indices start (high nibble), byte 3 the offered features
    /// the driver drops first, bytes 4..8 the script; the rest is guest RAM from address 0.
    pub fn run(&self, data: &[u8]) -> Result<LifecycleOutcome, LifecycleViolation> {
        let mem = Arc::clone(self.guarded.memory());
        // Every input starts from never-touched RAM (one madvise: only touched pages cost).
        let _ = mem.discard(GuestAddress(0), mem.size());
        let mut out = LifecycleOutcome::default();
        if data.len() < LIFECYCLE_HEADER {
            return Ok(out);
        }
        let (h, image) = data.split_at(LIFECYCLE_HEADER);
        let size = queue_size_for(h[2]);
        let (cfg, extra) = Self::config_for(h[0], h[1], size);
        let Ok(mut dev) = BalloonDevice::with_extra_features(Arc::clone(&mem), cfg, extra) else {
            return Ok(out);
        };
        let log = Arc::new(Mutex::new(PageSet::new(mem.pages())));
        let sink = Arc::clone(&log);
        let hook: WriteLog = Arc::new(move |pfn: Pfn, n: u64| {
            let mut set = crate::util::lock(&sink);
            let end = pfn.0.saturating_add(n).min(set.npages());
            if pfn.0 < end {
                set.insert_range(pfn.0, end - pfn.0);
            }
        });
        dev.set_write_log(Some(hook));
        let n = image.len().min(mem.size() as usize);
        let _ = mem.write(GuestAddress(0), &image[..n]);
        let t = Arc::clone(dev.transport());
        let start = 0u16.wrapping_sub(u16::from(h[2] >> 4));
        out.negotiated = negotiate(&t, cfg.abi, h[3], size).is_ok() && dev.activate().is_ok();
        if out.negotiated {
            for q in 0..dev.num_queues() {
                let _ = dev.set_queue_indices(q, start, start);
            }
        }
        let mut reset_since: Option<u64> = None;
        for &op in &h[4..] {
            let ctx = Ctx {
                t: &t,
                abi: cfg.abi,
                size,
                log: &log,
            };
            ctx.op(&mut dev, op, &mut out, &mut reset_since)?;
        }
        serve(&mut dev, &t);
        check_quiet(&log, reset_since)?;
        out.buffers = dev.counters().buffers + dev.counters().stats_buffers;
        out.errors = dev.errors_total();
        out.balloon_pages = dev.balloon_pages();
        let c = dev.counters();
        if c.pages_inflated.checked_sub(c.pages_deflated) != Some(out.balloon_pages) {
            return Err(LifecycleViolation::Accounting {
                balloon: out.balloon_pages,
                inflated: c.pages_inflated,
                deflated: c.pages_deflated,
            });
        }
        let logged = crate::util::lock(&log).clone();
        drop(dev);
        if !self.guarded.canaries_intact() {
            return Err(LifecycleViolation::Canary);
        }
        check_logged(&mem, &image[..n], &logged)?;
        Ok(out)
    }
}

/// What a script action needs besides the device.
struct Ctx<'a> {
    t: &'a Transport,
    abi: AbiMode,
    size: u16,
    log: &'a Mutex<PageSet>,
}

impl Ctx<'_> {
    /// One script action.
    fn op(
        &self,
        dev: &mut BalloonDevice,
        op: u8,
        out: &mut LifecycleOutcome,
        reset_since: &mut Option<u64>,
    ) -> Result<(), LifecycleViolation> {
        let arg = op >> 3;
        match op & 7 {
            0 => serve(dev, self.t),
            1 => {
                let _ = dev.request_stats();
                let _ = dev.request_unused_pages(u64::from(arg));
                let _ = dev.start_free_page_hint(2 + u32::from(arg));
            }
            2 => {
                // PAGE_POISON's value and `actual`, as a driver writes them at any time.
                let v = u32::from(arg) * 0x0101_0101;
                let _ = self.t.driver_write_config_u32(CONFIG_POISON_VAL, v);
                let _ = self.t.driver_write_config_u32(CONFIG_ACTUAL, v);
                let _ = dev.set_num_pages(v);
            }
            3 | 4 => {
                // Reset, then (3) renegotiate with another subset or (4) stay reset a while.
                check_quiet(self.log, *reset_since)?;
                self.t.reset();
                out.resets += 1;
                *reset_since = Some(logged_count(self.log));
                serve(dev, self.t);
                let _ = dev.request_stats();
                check_quiet(self.log, *reset_since)?;
                if op & 7 == 3 {
                    *reset_since = None;
                    if negotiate(self.t, self.abi, arg, self.size).is_ok() && arg & 0x10 != 0 {
                        // The owner activates, or (bit clear) the device follows DRIVER_OK.
                        let _ = dev.activate();
                    }
                }
            }
            5 => {
                // Hostile status writes: anything but a reset (which op 3/4 covers).
                let _ = self.t.set_status(arg.max(1) << 2 | arg & 3);
            }
            6 => {
                let _ = dev.stop_free_page_hint();
                dev.cancel_unused_pages();
                let _ = dev.free_page_hint_done();
            }
            _ => {
                let _ = dev.process_kicked();
            }
        }
        Ok(())
    }
}

/// Serves every queue, kicked or not.
fn serve(dev: &mut BalloonDevice, t: &Transport) {
    for q in 0..t.num_queues() {
        if let Ok(k) = t.kick_notifier(q) {
            let _ = k.notify();
        }
    }
    let _ = dev.process_kicked();
    for q in 0..dev.num_queues() {
        let _ = dev.process_queue(q);
    }
}

fn logged_count(log: &Mutex<PageSet>) -> u64 {
    crate::util::lock(log).count()
}

/// Nothing may have been logged since the reset at `since` (pages logged then).
fn check_quiet(log: &Mutex<PageSet>, since: Option<u64>) -> Result<(), LifecycleViolation> {
    match since {
        Some(before) if logged_count(log) != before => Err(LifecycleViolation::WroteWhileReset {
            pages: logged_count(log) - before,
        }),
        _ => Ok(()),
    }
}

/// Every page whose bytes differ from what the input put there (zeros past it) is logged.
/// A page of zeros to compare against.
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

fn check_logged(
    mem: &GuestMemory,
    image: &[u8],
    logged: &PageSet,
) -> Result<(), LifecycleViolation> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let image_pages = (image.len() as u64).div_ceil(PAGE_SIZE);
    let check = |pfn: u64, page: &mut Vec<u8>| -> Result<(), LifecycleViolation> {
        if logged.contains(pfn) {
            return Ok(());
        }
        let from = ((pfn * PAGE_SIZE) as usize).min(image.len());
        let to = (from + PAGE_SIZE as usize).min(image.len());
        let read = mem.read(Pfn(pfn).addr(), page.as_mut_slice()).is_ok();
        let (head, tail) = page.split_at(to - from);
        // Slice comparisons (memcmp), not byte loops: this runs for every fuzz input.
        if read && head == &image[from..to] && tail == &ZERO_PAGE[..tail.len()] {
            Ok(())
        } else {
            Err(LifecycleViolation::Unlogged { pfn })
        }
    };
    for pfn in 0..image_pages.min(mem.pages()) {
        check(pfn, &mut page)?;
    }
    // Past the image, only pages the host populated can differ from zeros (reading the others
    // would populate them): one mincore for the guest, scanned eight pages at a time.
    let Ok(resident) = mem.residency(GuestAddress(0), mem.size()) else {
        return Ok(());
    };
    for (w, chunk) in resident.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let mut bits = u64::from_le_bytes(word) & 0x0101_0101_0101_0101;
        while bits != 0 {
            let pfn = w as u64 * 8 + u64::from(bits.trailing_zeros() / 8);
            bits &= bits - 1;
            if pfn >= image_pages {
                check(pfn, &mut page)?;
            }
        }
    }
    Ok(())
}

/// The driver's side of §3.1.1 with the offered features minus those `drop` names (bit 0
/// encodings, 1 stats, 2 EVENT_IDX, 3 INDIRECT_DESC; bit 4 the hint queues and PAGE_POISON),
/// rings packed at [`lifecycle_queue_addr`].
fn negotiate(t: &Transport, abi: AbiMode, drop: u8, size: u16) -> crate::Result<()> {
    let mut take = t.device_features();
    let mask = |on: bool, bits: u64| if on { bits } else { 0 };
    let encodings =
        bit(abi.page_bitmap_bit()) | bit(VBALLOON_F_PAGE_EXTENTS) | bit(VBALLOON_F_PAGE_AUTO);
    let mut hints = bit(abi.misc_vq_bit()) | bit(VIRTIO_BALLOON_F_REPORTING);
    if abi.has_upstream_hinting() {
        hints |= bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT) | bit(VIRTIO_BALLOON_F_PAGE_POISON);
    }
    take &= !mask(drop & 1 != 0, encodings);
    take &= !mask(drop & 2 != 0, bit(VIRTIO_BALLOON_F_STATS_VQ));
    take &= !mask(drop & 4 != 0, feature(VIRTIO_F_EVENT_IDX));
    take &= !mask(drop & 8 != 0, feature(VIRTIO_F_INDIRECT_DESC));
    take &= !mask(drop & 0x10 != 0, hints);
    let start = DriverStart {
        features: Some(take),
        reset: true,
        ignore_refusal: true,
        ..DriverStart::new(size, lifecycle_queue_addr(1, size))
    };
    start.negotiate(t).map(|_| ())
}

/// Well-formed inputs across configurations: rings (starting at the index the header picks, so
/// some wrap) holding valid inflate, deflate and stats buffers, and scripts that reset and
/// renegotiate, write config space and ask for stats and hints; a fuzzer starts from these.
pub fn lifecycle_seeds() -> Vec<Vec<u8>> {
    // (h0, h1, h2, h3, script)
    let headers: [[u8; LIFECYCLE_HEADER]; 10] = [
        [0x04, 0x00, 0x03, 0, 0, 0, 0, 0],
        [0x45, 0x01, 0x35, 0, 1, 0, 2, 0],
        [0x86, 0x02, 0x23, 0, 0, 3 | 1 << 3, 0, 0],
        [0xc7, 0x04, 0xf8, 0, 0, 3 | 0x11 << 3, 0, 0],
        [0xc4, 0x03, 0x13, 0, 0, 4, 3 | 0x10 << 3, 0],
        [0x05, 0x78, 0x04, 0, 1, 2 | 1 << 3, 6, 7],
        [0x44, 0x3c, 0x53, 0x02, 0, 5 | 0x1f << 3, 0, 0],
        [0x15, 0x08, 0x03, 0, 1, 0, 3 | 0x10 << 3, 0],
        [0x87, 0x44, 0x18, 0x0c, 0, 2 | 0x1f << 3, 0, 7],
        [0x06, 0x04, 0x08, 0, 0, 3 | 0x04 << 3, 0, 0],
    ];
    headers.iter().filter_map(seed_for).collect()
}

fn seed_for(h: &[u8; LIFECYCLE_HEADER]) -> Option<Vec<u8>> {
    use crate::abi::encode_stats;
    use crate::pages::encode;
    use crate::virtq::{DriverQueue, Segment};
    let size = queue_size_for(h[2]);
    let (cfg, extra) = LifecycleHarness::config_for(h[0], h[1], size);
    let features = cfg.device_features() | extra;
    let bf = BalloonFeatures::new(features, cfg.abi);
    let q = bf.queues();
    let enc = crate::abi::encoding_for(bf);
    // A small scratch guest: the image only needs the rings and a few buffers.
    let mem = Arc::new(GuestMemory::new(1 << 20, crate::memory::Backing::Anonymous).ok()?);
    let start = 0u16.wrapping_sub(u16::from(h[2] >> 4));
    let mut at = lifecycle_queue_addr(q.count, size).next_multiple_of(PAGE_SIZE);
    for i in 0..q.count {
        let layout = QueueLayout::place(GuestAddress(lifecycle_queue_addr(i, size)), size).ok()?;
        let mut dq = DriverQueue::new(Arc::clone(&mem), layout, features).ok()?;
        let segments: Vec<Vec<u8>> = if Some(i) == q.stats {
            let mut b = Vec::new();
            encode_stats(&[(4, 1 << 20), (5, 2 << 20)], &mut b);
            vec![b]
        } else if i == q.inflate || i == q.deflate {
            let runs: &[PageRange] = if i == q.inflate {
                &[
                    PageRange::new(40, 3),
                    PageRange::new(45, 1),
                    PageRange::new(60, 500),
                ]
            } else {
                &[PageRange::new(40, 3)]
            };
            match encode(enc, runs) {
                Ok(m) if !m.is_empty() => m[0].segments.clone(),
                _ => continue,
            }
        } else {
            continue;
        };
        let mut segs = Vec::new();
        for s in &segments {
            mem.write(GuestAddress(at), s).ok()?;
            segs.push(Segment::readable(GuestAddress(at), s.len() as u32));
            at += (s.len() as u64).next_multiple_of(64);
        }
        if segs.len() > usize::from(size) || dq.add(&segs).is_err() {
            continue;
        }
        // Move the entry to where a ring whose indices start at `start` has it.
        let head = mem.read_u16(layout.avail_entry(0)).ok()?;
        mem.write_u16(layout.avail_entry(start & (size - 1)), head)
            .ok()?;
        mem.write_u16(layout.avail_idx(), start.wrapping_add(1))
            .ok()?;
    }
    let mut image = vec![0u8; at as usize];
    mem.read(GuestAddress(0), &mut image).ok()?;
    let used = image.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let mut input = h.to_vec();
    input.extend_from_slice(&image[..used]);
    Some(input)
}
