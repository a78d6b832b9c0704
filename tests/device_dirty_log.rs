//! Every byte the balloon device writes into guest RAM is in its write log, on every queue
//! (inflate, deflate, stats, misc, free-page hint, reporting) and on the paths that refuse a
//! buffer: each step below snapshots all of guest RAM, runs the device, and checks that every
//! page that changed (a used ring, a written reply, a discarded page) was logged, and that the
//! step did change something (so the check cannot pass vacuously).

use std::sync::{Arc, Mutex};

use vballoon::abi::{AbiMode, BalloonFeatures};
use vballoon::device::{BalloonDevice, DeviceConfig, HintOffer, QueueRole, WriteLog};
use vballoon::memory::{GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use vballoon::pages::hint::encode_cmd_id;
use vballoon::pages::{encode, Encoding, PageRange, PageSet};
use vballoon::rig::DriverStart;
use vballoon::virtq::defs::{feature, VIRTIO_F_EVENT_IDX};
use vballoon::virtq::{DriverQueue, NotifyMode, Segment};

const MIB: u64 = 1 << 20;
const GUEST: u64 = 8 * MIB;
const BUFS: u64 = MIB;

struct Rig {
    mem: Arc<GuestMemory>,
    dev: BalloonDevice,
    queues: Vec<DriverQueue>,
    log: Arc<Mutex<PageSet>>,
    next_buf: u64,
}

fn rig() -> Rig {
    let mem = Arc::new(GuestMemory::new(GUEST, vballoon::memory::Backing::Anonymous).unwrap());
    // Every page holds data, so a discard changes it.
    mem.fill(GuestAddress(0), GUEST, 0x5a).unwrap();
    let cfg = DeviceConfig {
        encoding: Encoding::Bitmap,
        stats: true,
        hints: HintOffer::ALL,
        notify: NotifyMode::Polling,
        ..DeviceConfig::default()
    };
    let mut dev =
        BalloonDevice::with_extra_features(Arc::clone(&mem), cfg, feature(VIRTIO_F_EVENT_IDX))
            .unwrap();
    let log = Arc::new(Mutex::new(PageSet::new(mem.pages())));
    let sink = Arc::clone(&log);
    let hook: WriteLog = Arc::new(move |pfn: Pfn, n: u64| {
        sink.lock().unwrap().insert_range(pfn.0, n);
    });
    dev.set_write_log(Some(hook));
    let features = dev.transport().device_features();
    let n = BalloonFeatures::new(features, AbiMode::Vballoon)
        .queues()
        .count;
    let start = DriverStart {
        queues: Some(n),
        ..DriverStart::new(16, 0x2000)
    };
    for i in 0..n {
        mem.fill(start.ring_addr(i), 0x2000, 0).unwrap();
    }
    let queues = start.start(&mut dev).unwrap();
    Rig {
        mem,
        dev,
        queues,
        log,
        next_buf: BUFS,
    }
}

impl Rig {
    fn index(&self, role: QueueRole) -> u16 {
        (0..self.dev.num_queues())
            .find(|&i| self.dev.queue_role(i) == Some(role))
            .unwrap_or_else(|| panic!("{role:?} queue present"))
    }

    /// Adds a chain of (bytes, writable) segments on the `role` queue.
    fn post(&mut self, role: QueueRole, segs: &[(Vec<u8>, bool)]) {
        let mut chain = Vec::new();
        for (bytes, writable) in segs {
            let at = GuestAddress(self.next_buf);
            self.mem.write(at, bytes).unwrap();
            chain.push(Segment {
                addr: at,
                len: bytes.len() as u32,
                writable: *writable,
            });
            self.next_buf += (bytes.len() as u64).max(1).next_multiple_of(64);
        }
        let i = usize::from(self.index(role));
        self.queues[i].add(&chain).unwrap();
    }

    /// Adds one device-writable block `[addr, addr + len)` on the `role` queue.
    fn post_block(&mut self, role: QueueRole, addr: u64, len: u32) {
        let i = usize::from(self.index(role));
        self.queues[i]
            .add(&[Segment {
                addr: GuestAddress(addr),
                len,
                writable: true,
            }])
            .unwrap();
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut b = vec![0u8; GUEST as usize];
        self.mem.read(GuestAddress(0), &mut b).unwrap();
        b
    }

    /// Runs `f` and checks that the pages it changed are exactly covered by the log.
    fn step(&mut self, what: &str, f: impl FnOnce(&mut BalloonDevice)) {
        let before = self.snapshot();
        *self.log.lock().unwrap() = PageSet::new(self.mem.pages());
        f(&mut self.dev);
        let after = self.snapshot();
        let logged = self.log.lock().unwrap().clone();
        let ps = PAGE_SIZE as usize;
        let changed: Vec<u64> = (0..self.mem.pages())
            .filter(|&p| {
                let r = p as usize * ps..(p as usize + 1) * ps;
                before[r.clone()] != after[r]
            })
            .collect();
        assert!(!changed.is_empty(), "{what}: the device wrote nothing");
        for p in &changed {
            assert!(logged.contains(*p), "{what}: page {p} changed, not logged");
        }
    }
}

#[test]
fn test_every_queue_and_refusal_logs_what_it_writes() {
    let mut r = rig();
    let bitmap = |runs: &[(u64, u64)]| -> Vec<(Vec<u8>, bool)> {
        let runs: Vec<PageRange> = runs.iter().map(|&r| r.into()).collect();
        let m = encode(Encoding::Bitmap, &runs).unwrap().remove(0);
        m.segments.into_iter().map(|s| (s, false)).collect()
    };
    let serve = |role| move |d: &mut BalloonDevice| drop(d.process_queue(r_index(d, role)));

    // Inflate: used ring and the discarded pages.
    let msg = bitmap(&[(1000, 16), (1100, 1)]);
    r.post(QueueRole::Inflate, &msg);
    r.step("inflate", serve(QueueRole::Inflate));
    assert_eq!(r.dev.balloon_pages(), 17);
    // A refused inflate buffer (device-writable): still used, length 0.
    r.post(QueueRole::Inflate, &[(vec![0u8; 64], true)]);
    r.step("refused inflate", serve(QueueRole::Inflate));
    assert_eq!(r.dev.counters().bad_buffers, 1);
    // Deflate.
    r.post(QueueRole::Deflate, &bitmap(&[(1000, 8)]));
    r.step("deflate", serve(QueueRole::Deflate));
    assert_eq!(r.dev.balloon_pages(), 9);

    // Stats: a second buffer while one is held sends the first back (a refusal path).
    let mut sample = Vec::new();
    vballoon::abi::encode_stats(&[(4, 1 << 20)], &mut sample);
    r.post(QueueRole::Stats, &[(sample.clone(), false)]);
    r.post(QueueRole::Stats, &[(sample, false)]);
    r.step("stats held twice", serve(QueueRole::Stats));
    r.step("stats request", |d| assert!(d.request_stats().unwrap()));

    // Misc: the host's request is written into the guest's 16-byte buffer.
    r.post(QueueRole::Misc, &[(vec![0u8; 16], true)]);
    r.step("misc request", |d| {
        d.process_queue(r_index(d, QueueRole::Misc)).unwrap();
        assert!(d.request_unused_pages(7).unwrap());
    });

    // Free page hint: the start ack, a block, STOP.
    r.dev.start_free_page_hint(5).unwrap();
    r.post(QueueRole::FreePage, &[(encode_cmd_id(5).to_vec(), false)]);
    r.step("free page ack", serve(QueueRole::FreePage));
    r.post_block(QueueRole::FreePage, 4 * MIB, (4 * MIB) as u32);
    r.step("free page block", serve(QueueRole::FreePage));

    // Reporting: a 2 MiB block is discarded (its pages change) and the buffer used.
    r.post_block(QueueRole::Reporting, 2 * MIB, (2 * MIB) as u32);
    r.step("reporting", serve(QueueRole::Reporting));
    assert!(r.mem.is_zero(GuestAddress(2 * MIB), 2 * MIB).unwrap());
    assert_eq!(r.dev.errors_total(), 2, "{:?}", r.dev.take_errors());
}

fn r_index(d: &BalloonDevice, role: QueueRole) -> u16 {
    (0..d.num_queues())
        .find(|&i| d.queue_role(i) == Some(role))
        .unwrap()
}
