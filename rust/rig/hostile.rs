//! A guest made of arbitrary bytes: the harness behind the fuzz target and the hostile-guest
//! tests.
//!
//! [`GuardedMemory`] maps guest RAM with canary pages right below and right above it (so a
//! discard or write that strays one byte out of guest RAM lands on a canary). [`Harness`]
//! negotiates a device over it, then lets the input bytes be the whole of guest RAM (rings,
//! descriptors, buffers) and runs every queue handler, twice, with a stats request between.

use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::device::{BalloonDevice, DeviceConfig, DiscardPolicy, HintOffer};
use crate::memory::{Backing, GuestAddress, GuestMemory, PageRange, PAGE_SIZE};
use crate::pages::Encoding;
use crate::rig::DriverStart;
use crate::transport::Transport;
use crate::virtq::{NotifyMode, QueueLayout};

/// Canary pages on each side of guest RAM.
pub const CANARY_PAGES: u64 = 4;
/// The byte canaries are filled with.
pub const CANARY_BYTE: u8 = 0xa5;

/// One canary mapping.
#[derive(Debug)]
struct Canary {
    base: *mut u8,
    len: usize,
}

impl Canary {
    /// Maps `len` bytes at exactly `at`, failing if anything is mapped there.
    fn map_at(at: usize, len: usize) -> Option<Canary> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: it fails instead.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        if p as usize != at {
            // Kernels before 4.17 treat the flag as a hint; give back a misplaced mapping.
            // SAFETY: `p` is the mapping just made, of `len` bytes.
            unsafe { libc::munmap(p, len) };
            return None;
        }
        // SAFETY: fresh private mapping of `len` bytes that we own.
        unsafe { ptr::write_bytes(p.cast::<u8>(), CANARY_BYTE, len) };
        Some(Canary {
            base: p.cast(),
            len,
        })
    }

    /// Whether every byte still holds the pattern and every page is resident.
    fn intact(&self) -> bool {
        let pages = self.len / PAGE_SIZE as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: our own mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(self.base.cast(), self.len, vec.as_mut_ptr()) };
        if rc != 0 || vec.iter().any(|b| b & 1 == 0) {
            return false;
        }
        // A page at a time through a copy, compared with memcmp: this runs for every fuzz input.
        let pattern = [CANARY_BYTE; PAGE_SIZE as usize];
        let mut copy = [0u8; PAGE_SIZE as usize];
        (0..pages).all(|p| {
            // SAFETY: page `p` lies inside our mapping of `pages` whole pages; nothing else
            // writes it while we read (a stray device write is what we look for, and the
            // device has returned by now).
            unsafe {
                ptr::copy_nonoverlapping(
                    self.base.add(p * PAGE_SIZE as usize),
                    copy.as_mut_ptr(),
                    copy.len(),
                )
            };
            copy == pattern
        })
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // SAFETY: our own mapping of exactly this size.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Guest RAM with canary pages mapped directly below and above it.
#[derive(Debug)]
pub struct GuardedMemory {
    mem: Arc<GuestMemory>,
    below: Canary,
    above: Canary,
}

// SAFETY: the canaries are private mappings only read through atomics or by mincore.
unsafe impl Send for GuardedMemory {}
// SAFETY: as above.
unsafe impl Sync for GuardedMemory {}

impl GuardedMemory {
    /// Maps `size` bytes of anonymous guest RAM (the backing `GuestMemory::new_at` places) with
    /// [`CANARY_PAGES`] canary pages on each side; `None` if the address space around it could
    /// not be had after a few tries.
    pub fn new(size: u64) -> Option<GuardedMemory> {
        let clen = (CANARY_PAGES * PAGE_SIZE) as usize;
        let total = size as usize + 2 * clen;
        for _ in 0..16 {
            // Reserve the whole span so the three mappings are contiguous, then release it and
            // map canary, guest, canary into the hole. Another thread can only race us in the
            // instant between, and then NOREPLACE fails and we try again.
            // SAFETY: a fresh inaccessible mapping at a kernel-chosen address.
            let r = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    total,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if r == libc::MAP_FAILED {
                return None;
            }
            // SAFETY: exactly the reservation just made.
            unsafe { libc::munmap(r, total) };
            let at = r as usize;
            let below = Canary::map_at(at, clen);
            let mem = GuestMemory::new_at(size, at + clen).ok();
            let above = Canary::map_at(at + clen + size as usize, clen);
            if let (Some(below), Some(mem), Some(above)) = (below, mem, above) {
                return Some(GuardedMemory {
                    mem: Arc::new(mem),
                    below,
                    above,
                });
            }
        }
        None
    }

    /// The guest RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Whether both canaries are untouched and resident.
    pub fn canaries_intact(&self) -> bool {
        self.below.intact() && self.above.intact()
    }
}

/// Guest pages the harness maps: 2 MiB. A mapping of a whole number of huge pages is placed
/// THP-aligned, which leaves room for the canaries on both sides in any process layout (a
/// 128 KiB guest could not get both in about a quarter of fresh ASan processes).
pub const HARNESS_PAGES: u64 = 512;
/// Queue size the harness sets up.
pub const HARNESS_QUEUE_SIZE: u16 = 8;
/// Guest address of queue `i`'s rings.
pub const fn harness_queue_addr(i: u16) -> u64 {
    0x100 * i as u64
}

/// What one harness run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileOutcome {
    /// Errors the device logged (bad buffers, broken queues, host errors).
    pub errors: u64,
    /// Whether a queue broke (DEVICE_NEEDS_RESET).
    pub needs_reset: bool,
    /// Pages in the balloon at the end.
    pub balloon_pages: u64,
    /// Buffers the device popped.
    pub buffers: u64,
}

/// A device negotiated over [`GuardedMemory`], fed arbitrary guest RAM.
#[derive(Debug)]
pub struct Harness {
    guarded: GuardedMemory,
    /// Bytes the previous input wrote: only those (and the rings) need zeroing again.
    dirty: std::sync::atomic::AtomicUsize,
}

impl Harness {
    /// Maps the guarded guest; `None` if the canaries could not be placed.
    pub fn new() -> Option<Harness> {
        Some(Harness {
            guarded: GuardedMemory::new(HARNESS_PAGES * PAGE_SIZE)?,
            dirty: std::sync::atomic::AtomicUsize::new(HARNESS_PAGES as usize * PAGE_SIZE as usize),
        })
    }

    /// The guarded memory.
    pub fn guarded(&self) -> &GuardedMemory {
        &self.guarded
    }

    /// The device configuration byte 0 of an input selects.
    pub fn config_for(selector: u8) -> DeviceConfig {
        DeviceConfig {
            encoding: Encoding::ALL[usize::from(selector & 3)],
            stats: selector & 4 != 0,
            must_tell_host: selector & 8 != 0,
            discard: DiscardPolicy::ALL[usize::from((selector >> 4) & 3)],
            abi: if selector & 0x40 != 0 {
                crate::abi::AbiMode::V3
            } else {
                crate::abi::AbiMode::Vballoon
            },
            populate_on_deflate: selector & 0x80 != 0,
            queue_max_size: HARNESS_QUEUE_SIZE,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        }
    }

    /// The hint queues byte 1 of an input offers: bit 0 the seed's misc queue, bit 1 upstream
    /// FREE_PAGE_HINT, bit 2 free page reporting.
    pub fn hints_for(selector: u8) -> HintOffer {
        HintOffer {
            misc: selector & 1 != 0,
            free_page_hint: selector & 2 != 0,
            reporting: selector & 4 != 0,
            page_poison: false,
        }
    }

    /// Runs one input: byte 0 picks the configuration, byte 1 the hint queues (and is the
    /// request id the host asks with), the rest becomes guest RAM from
    /// address 0 (rings of queue `i` at `0x100 * i`, size 8). Every queue is served, the host
    /// asks for stats, and every queue is served again. Never panics on any input.
    pub fn run(&self, data: &[u8]) -> HostileOutcome {
        let mem = self.guarded.memory();
        // The device itself writes only used rings (below 0x1000); discards leave zeros.
        let dirty = self.dirty.load(Ordering::Relaxed).max(0x1000);
        let _ = mem.fill(GuestAddress(0), (dirty as u64).min(mem.size()), 0);
        let Some((&selector, rest)) = data.split_first() else {
            return HostileOutcome::default();
        };
        let Some((&hint_selector, rest)) = rest.split_first() else {
            return HostileOutcome::default();
        };
        let mut cfg = Self::config_for(selector);
        cfg.hints = Self::hints_for(hint_selector);
        let Ok(mut dev) = BalloonDevice::new(Arc::clone(mem), cfg) else {
            return HostileOutcome::default();
        };
        if negotiate(dev.transport()).is_err() || dev.activate().is_err() {
            return HostileOutcome::default();
        }
        let n = rest.len().min(mem.size() as usize);
        self.dirty.store(n, Ordering::Relaxed);
        let _ = mem.write(GuestAddress(0), &rest[..n]);
        for round in 0..2 {
            for q in 0..dev.num_queues() {
                let _ = dev.process_queue(q);
            }
            if round == 0 {
                let _ = dev.request_stats();
                // Ask for hints too, so the guest's bytes are read as answers to them.
                let _ = dev.request_unused_pages(u64::from(hint_selector));
                let _ = dev.start_free_page_hint(0x8000_0000 | u32::from(hint_selector));
            }
        }
        let c = dev.counters();
        HostileOutcome {
            errors: dev.errors_total(),
            needs_reset: dev.transport().status() & crate::transport::VIRTIO_CONFIG_S_NEEDS_RESET
                != 0,
            balloon_pages: dev.balloon_pages(),
            buffers: c.buffers + c.stats_buffers,
        }
    }
}

/// Well-formed inputs for every configuration a selector byte can pick: rings holding one valid
/// message on the inflate and deflate queues and a stats buffer, so a fuzzer starts from
/// buffers the device accepts.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    use crate::abi::encode_stats;
    use crate::pages::encode;
    use crate::virtq::{DriverQueue, Segment};
    let mut seeds = Vec::new();
    for selector in [0u8, 1, 2, 3, 4, 5, 6, 7, 0x0d, 0x15, 0x45, 0x84] {
        let cfg = Harness::config_for(selector);
        let Ok(mem) = GuestMemory::new(HARNESS_PAGES * PAGE_SIZE, Backing::Anonymous) else {
            continue;
        };
        let mem = Arc::new(mem);
        let features = cfg.device_features();
        let q = crate::abi::BalloonFeatures::new(features, cfg.abi).queues();
        let enc = crate::abi::encoding_for(crate::abi::BalloonFeatures::new(features, cfg.abi));
        let mut at = 0x4000u64;
        for i in 0..q.count {
            let Ok(layout) =
                QueueLayout::place(GuestAddress(harness_queue_addr(i)), HARNESS_QUEUE_SIZE)
            else {
                continue;
            };
            let Ok(mut dq) = DriverQueue::new(Arc::clone(&mem), layout, features) else {
                continue;
            };
            let segments: Vec<Vec<u8>> = if Some(i) == q.stats {
                let mut b = Vec::new();
                encode_stats(&[(4, 1 << 20), (5, 2 << 20)], &mut b);
                vec![b]
            } else {
                let runs = &[
                    PageRange::new(8, 3),
                    PageRange::new(13, 1),
                    PageRange::new(20, 4),
                ][..];
                match encode(enc, runs) {
                    Ok(m) if !m.is_empty() => m[0].segments.clone(),
                    _ => continue,
                }
            };
            let mut segs = Vec::new();
            for s in &segments {
                let _ = mem.write(GuestAddress(at), s);
                segs.push(Segment::readable(GuestAddress(at), s.len() as u32));
                at += (s.len() as u64).next_multiple_of(64);
            }
            let _ = dq.add(&segs);
        }
        let mut image = vec![0u8; mem.size() as usize];
        if mem.read(GuestAddress(0), &mut image).is_err() {
            continue;
        }
        let used = image.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let mut input = vec![selector, 0];
        input.extend_from_slice(&image[..used]);
        seeds.push(input);
    }
    seeds
}

/// Plays the driver's part of initialisation: accept everything offered, set up every queue at
/// [`harness_queue_addr`], DRIVER_OK.
fn negotiate(t: &Transport) -> crate::Result<()> {
    let start = DriverStart::new(HARNESS_QUEUE_SIZE, harness_queue_addr(1));
    start.negotiate(t).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    #[test]
    fn test_seed_inputs_are_served() {
        let h = Harness::new().expect("canaries placed");
        for seed in seed_inputs() {
            let out = h.run(&seed);
            assert!(out.buffers >= 2, "selector {:#x}: {out:?}", seed[0]);
            assert!(!out.needs_reset, "selector {:#x}: {out:?}", seed[0]);
            assert!(h.guarded().canaries_intact());
        }
    }

    /// Writes [`seed_inputs`] into the fuzz corpus: `cargo test --no-default-features --lib
    /// write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/device_queues");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seed_inputs().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }

    #[test]
    fn test_random_guests_never_escape() {
        let h = Harness::new().expect("canaries placed");
        assert!(h.guarded().canaries_intact());
        let mut rng = Rng::new(7);
        let mut buf = vec![0u8; 4096];
        for i in 0..300 {
            let n = 1 + rng.below(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            buf[0] = i as u8;
            h.run(&buf[..n]);
            assert!(h.guarded().canaries_intact(), "input {i}");
        }
    }
}
