//! A hostile guest at scale cannot make the device allocate: an 8 GiB guest fills a 256-entry
//! inflate queue with 1 MiB alternating-bit bitmaps (a million one-page runs each, a quarter of
//! a billion in the batch), and the process's peak memory grows by at most 64 MiB while the
//! device serves it. Every page named is still accounted for.
//!
//! Its own test binary, so the process-wide peak (VmHWM) is this test's alone.

use std::sync::Arc;

use vballoon::device::{BalloonDevice, DeviceConfig, DiscardPolicy, QueueRole};
use vballoon::memory::{GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::pages::bitmap::{BmapHeader, MAX_BMAP_LEN};
use vballoon::pages::Encoding;
use vballoon::rig::DriverStart;
use vballoon::virtq::{DriverQueue, NotifyMode, Segment};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const GUEST: u64 = 8 * GIB;
const QUEUE_SIZE: u16 = 256;
/// Pages below this are named (every other one); rings and buffers live above it.
const NAMED_LIMIT: u64 = 7 * GIB / PAGE_SIZE;
const RINGS: u64 = 7 * GIB + 256 * MIB;
const BUFS: u64 = 7 * GIB + 512 * MIB;
const BUDGET: u64 = 64 * MIB;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the process's peak RSS to its current RSS (Linux 4.0+), returning it in bytes.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs 5 resets VmHWM");
    status_kib("VmHWM:") * 1024
}

fn peak() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// One 1 MiB bitmap message naming every page below [`NAMED_LIMIT`] with the same parity as
/// `phase`, one-page runs all.
fn alternating_message(phase: u64) -> Vec<u8> {
    let mut body = vec![0u8; MAX_BMAP_LEN as usize];
    let pattern = if phase % 2 == 0 { 0x55 } else { 0xaa };
    body[..(NAMED_LIMIT / 8) as usize].fill(pattern);
    let h = BmapHeader {
        start_pfn: 0,
        bmap_len: MAX_BMAP_LEN,
        ..BmapHeader::RESIZE
    };
    let mut m = h.to_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

struct Rig {
    dev: BalloonDevice,
    queues: Vec<DriverQueue>,
}

fn rig(discard: DiscardPolicy) -> Rig {
    let mem = Arc::new(GuestMemory::new(GUEST, vballoon::memory::Backing::Anonymous).unwrap());
    let mut dev = BalloonDevice::new(
        Arc::clone(&mem),
        DeviceConfig {
            encoding: Encoding::Bitmap,
            queue_max_size: QUEUE_SIZE,
            notify: NotifyMode::Polling,
            discard,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let start = DriverStart {
        ring_base: RINGS,
        ..DriverStart::new(QUEUE_SIZE, MIB)
    };
    let queues = start.start(&mut dev).unwrap();
    Rig { dev, queues }
}

impl Rig {
    /// Serves the `n` buffers filled on queue `index` as one batch: the peak memory it adds
    /// stays within [`BUDGET`] and every buffer comes back used.
    fn serve_within_budget(&mut self, what: &str, index: u16, n: u64) {
        let grown = self.serve_measured(index, n);
        eprintln!("{what} batch: peak memory grew by {} KiB", grown / 1024);
        assert!(
            grown <= BUDGET,
            "{what} batch grew peak memory by {} MiB",
            grown / MIB
        );
        assert_eq!(self.used(index), n);
    }

    /// Fills queue `index` with `n` alternating-bit bitmaps of parity `phase` (or alternating
    /// parities, buffer by buffer, if `mixed`).
    fn fill(&mut self, index: u16, n: u64, phase: u64, mixed: bool) {
        let mem = Arc::clone(self.dev.memory());
        let msgs = [alternating_message(phase), alternating_message(phase + 1)];
        for i in 0..n {
            let m = &msgs[usize::from(mixed && i % 2 == 1)];
            let at = GuestAddress(BUFS + i * (MAX_BMAP_LEN + PAGE_SIZE));
            mem.write(at, m).unwrap();
            let seg = Segment::readable(at, m.len() as u32);
            self.queues[usize::from(index)].add(&[seg]).unwrap();
        }
    }

    fn used(&mut self, index: u16) -> u64 {
        let mut n = 0;
        while let Some(u) = self.queues[usize::from(index)].pop_used().unwrap() {
            assert_eq!(u.len, 0);
            n += 1;
        }
        n
    }

    /// Serves `index` and returns the peak memory growth while it did.
    fn serve_measured(&mut self, index: u16, buffers: u64) -> u64 {
        let base = reset_peak();
        let run = self.dev.process_queue(index).unwrap();
        let grown = peak().saturating_sub(base);
        assert_eq!(run.buffers, buffers);
        assert_eq!(run.bad_buffers, 0, "{:?}", self.dev.take_errors());
        grown
    }
}

fn even_pages() -> u64 {
    NAMED_LIMIT / 2
}

#[test]
fn test_alternating_bitmaps_in_every_buffer_cost_bounded_memory_and_lose_no_page() {
    let mut r = rig(DiscardPolicy::Never);
    let (inflate, deflate) = (0u16, 1u16);
    assert_eq!(r.dev.queue_role(inflate), Some(QueueRole::Inflate));
    assert_eq!(r.dev.queue_role(deflate), Some(QueueRole::Deflate));
    let n = u64::from(QUEUE_SIZE);
    let per_buffer = even_pages();
    r.fill(inflate, n, 0, false);

    r.serve_within_budget("inflate", inflate, n);
    // Exactly the even pages below the limit are in the balloon, once each.
    let set = r.dev.balloon();
    assert_eq!(set.count(), per_buffer);
    assert!(set
        .runs()
        .all(|r| r.len == 1 && r.start % 2 == 0 && r.start < NAMED_LIMIT));
    let c = r.dev.counters();
    assert_eq!(c.pages_inflated, per_buffer);
    assert_eq!(c.pages_inflated + c.pages_reinflated, n * per_buffer);
    assert_eq!((c.inflate_buffers, c.bad_buffers), (n, 0));

    // Deflate: half the buffers name the odd pages (never inflated: stray), half the even ones.
    // Fewer buffers (the batch is bounded the same way; this keeps the debug-build test short).
    let n = 32;
    r.fill(deflate, n, 0, true);
    r.serve_within_budget("deflate", deflate, n);
    assert_eq!(r.dev.balloon_pages(), 0);
    let c = r.dev.counters();
    assert_eq!(c.pages_deflated, per_buffer);
    assert_eq!(c.pages_deflated + c.pages_stray_deflated, n * per_buffer);
    assert_eq!(r.dev.errors_total(), 0);
}
