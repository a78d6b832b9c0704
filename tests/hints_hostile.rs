//! A hostile guest against the hint queues: unused-page replies with a wrong request id, a bad
//! header, pages outside guest RAM, the wrong buffer direction; bad command ids and blocks on
//! the free page queue; bad reports. Each bad buffer gets a typed error, comes back used with
//! length 0, passes nothing on and discards nothing; good buffers next to it still count; the
//! canary pages around guest RAM stay untouched.

use std::sync::{Arc, Mutex};

use vballoon::device::{
    BalloonDevice, BalloonError, DeviceConfig, FreePageStatus, HintError, HintEvent, HintOffer,
};
use vballoon::memory::{GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::pages::bitmap::{
    BmapHeader, ReqHeader, BALLOON_FLAG_CONT, BALLOON_FLAG_DONE, BALLOON_GET_UNUSED_PAGES,
};
use vballoon::pages::PagesError;
use vballoon::rig::hostile::GuardedMemory;
use vballoon::rig::DriverStart;
use vballoon::virtq::{DriverQueue, NotifyMode, Segment};

/// 64 MiB: sixteen 4 MiB blocks.
const PAGES: u64 = 16384;
/// Where the rig's buffers go (rings sit below).
const BUFS: u64 = 0x10_0000;
/// The free page hint command id the tests issue.
const ID: u32 = 0x8000_0000;

struct Rig {
    guarded: GuardedMemory,
    dev: BalloonDevice,
    queues: Vec<DriverQueue>,
    next_buf: u64,
    events: Arc<Mutex<Vec<HintEvent>>>,
    /// The hint queues' indexes, as the abi numbers them for what was negotiated.
    misc: u16,
    free_page: u16,
    reporting: u16,
}

impl Rig {
    fn new() -> Rig {
        let guarded = GuardedMemory::new(PAGES * PAGE_SIZE).expect("canaries");
        let mem = Arc::clone(guarded.memory());
        let mut dev = BalloonDevice::new(
            Arc::clone(&mem),
            DeviceConfig {
                hints: HintOffer::ALL,
                notify: NotifyMode::Polling,
                ..DeviceConfig::default()
            },
        )
        .unwrap();
        let queues = DriverStart::new(64, 0x4000).start(&mut dev).unwrap();
        assert_eq!(queues.len(), 6);
        let q = dev.features().expect("negotiated").queues();
        let hint_queue = |i: Option<u16>| i.expect("every hint queue negotiated");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        dev.set_hint_sink(Some(Arc::new(move |e| sink.lock().unwrap().push(e))));
        Rig {
            guarded,
            dev,
            queues,
            next_buf: BUFS,
            events,
            misc: hint_queue(q.misc),
            free_page: hint_queue(q.free_page),
            reporting: hint_queue(q.reporting),
        }
    }

    fn mem(&self) -> &Arc<GuestMemory> {
        self.guarded.memory()
    }

    /// Adds one chain on `queue`: readable segments carry bytes, writable ones a length.
    fn send(&mut self, queue: u16, segs: &[Seg]) -> u16 {
        let mut chain = Vec::new();
        for s in segs {
            let at = GuestAddress(self.next_buf);
            let len = match s {
                Seg::Out(b) => {
                    self.mem().write(at, b).unwrap();
                    b.len() as u64
                }
                Seg::In(n) => *n,
                Seg::At(addr, n, w) => {
                    chain.push(Segment {
                        addr: GuestAddress(*addr),
                        len: *n,
                        writable: *w,
                    });
                    continue;
                }
            };
            chain.push(Segment {
                addr: at,
                len: len as u32,
                writable: matches!(s, Seg::In(_)),
            });
            self.next_buf += len.max(1).next_multiple_of(64);
        }
        self.queues[usize::from(queue)].add(&chain).unwrap()
    }

    /// Serves `queue`; returns the errors it logged.
    fn serve(&mut self, queue: u16) -> Vec<BalloonError> {
        self.dev.process_queue(queue).unwrap();
        self.dev.take_errors()
    }

    /// Every chain the device returned, as (head, len).
    fn used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        let mut v = Vec::new();
        while let Some(u) = self.queues[usize::from(queue)].pop_used().unwrap() {
            v.push((u.head, u.len));
        }
        v
    }

    fn events(&self) -> Vec<HintEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Sends a bad buffer on `queue`: it must come back used with length 0, with one error
    /// that `check` accepts, and pass nothing on.
    fn refuse(&mut self, queue: u16, segs: &[Seg], check: impl Fn(&HintError) -> bool) {
        let head = self.send(queue, segs);
        let errs = self.serve(queue);
        assert_eq!(errs.len(), 1, "{errs:?}");
        match &errs[0] {
            BalloonError::Hint(e) => assert!(check(e), "unexpected error {e}"),
            e => panic!("not a hint error: {e}"),
        }
        assert_eq!(self.used(queue), vec![(head, 0)]);
        assert!(self.events().is_empty(), "a refused buffer passed pages on");
    }
}

enum Seg {
    /// Device-readable bytes.
    Out(Vec<u8>),
    /// A device-writable buffer of this many bytes.
    In(u64),
    /// A buffer at a chosen address: (address, length, writable).
    At(u64, u32, bool),
}

fn reply(h: BmapHeader, body: &[u8]) -> Vec<Seg> {
    vec![Seg::Out(h.to_bytes().to_vec()), Seg::Out(body.to_vec())]
}

fn hdr(req_id: u64, start_pfn: u64, bmap_len: u64, flag: u16) -> BmapHeader {
    BmapHeader {
        cmd: BALLOON_GET_UNUSED_PAGES,
        flag,
        req_id,
        start_pfn,
        bmap_len,
        ..BmapHeader::RESIZE
    }
}

#[test]
fn test_hostile_unused_page_replies() {
    let mut r = Rig::new();
    // The request buffer: the device holds it, and writes the request into it.
    let req = r.send(r.misc, &[Seg::In(16)]);
    assert!(r.serve(r.misc).is_empty());
    assert!(r.dev.holds_misc_request_buffer());
    let at = r.next_buf - 64;
    assert!(r.dev.request_unused_pages(u64::from(ID)).unwrap());
    assert_eq!(r.used(r.misc), vec![(req, 16)]);
    let mut got = [0u8; 16];
    r.mem().read(GuestAddress(at), &mut got).unwrap();
    assert_eq!(got, ReqHeader::get_unused_pages(u64::from(ID)).to_bytes());
    let id = u64::from(ID);
    let ones = [0xffu8; 8];

    r.refuse(r.misc, &reply(hdr(999, 64, 8, 0), &ones), |e| {
        matches!(
            e,
            HintError::StaleReply {
                req_id: 999,
                current: Some(_)
            }
        )
    });
    let bad_shift = BmapHeader {
        page_shift: 13,
        ..hdr(id, 64, 8, 0)
    };
    r.refuse(r.misc, &reply(bad_shift, &ones), |e| {
        matches!(
            e,
            HintError::BadReply {
                source: PagesError::BadPageShift { page_shift: 13, .. }
            }
        )
    });
    r.refuse(r.misc, &reply(hdr(id, 64, 16, 0), &ones), |e| {
        matches!(
            e,
            HintError::BadReply {
                source: PagesError::BitmapLengthMismatch { .. }
            }
        )
    });
    r.refuse(r.misc, &reply(hdr(id, PAGES - 32, 8, 0), &ones), |e| {
        matches!(
            e,
            HintError::BadReply {
                source: PagesError::PageOutsideRam { pfn, .. }
            } if *pfn == PAGES
        )
    });
    r.refuse(r.misc, &reply(hdr(id, 64, 8, 7), &ones), |e| {
        matches!(
            e,
            HintError::BadReply {
                source: PagesError::BadBitmapFlag { flag: 7 }
            }
        )
    });
    r.refuse(r.misc, &[Seg::Out(vec![0; 10])], |e| {
        matches!(
            e,
            HintError::BadReply {
                source: PagesError::BitmapHeaderTruncated { .. }
            }
        )
    });
    // Wrong direction: a reply with a device-writable part.
    let mut mixed = reply(hdr(id, 64, 8, 0), &ones);
    mixed.push(Seg::In(64));
    r.refuse(r.misc, &mixed, |e| {
        matches!(e, HintError::Direction { found: "mixed", .. })
    });
    r.refuse(r.misc, &[Seg::At(BUFS, 2 << 20, false)], |e| {
        matches!(e, HintError::ReplyTooLong { .. })
    });
    r.refuse(r.misc, &[Seg::In(8)], |e| {
        matches!(e, HintError::RequestBufferLength { len: 8, .. })
    });
    assert_eq!(r.dev.hint_counters().bad_buffers, 9);

    // Nothing lost: the request is still current, and good replies count whole.
    let a = r.send(
        r.misc,
        &reply(hdr(id, 64, 8, BALLOON_FLAG_CONT), &[0x0f; 8]),
    );
    let b = r.send(r.misc, &reply(hdr(id, 256, 1, BALLOON_FLAG_DONE), &[0x80]));
    assert!(r.serve(r.misc).is_empty());
    assert_eq!(r.used(r.misc), vec![(a, 0), (b, 0)]);
    let mut pages = Vec::new();
    for e in r.events() {
        match e {
            HintEvent::Pages { id: i, pfn, npages } => {
                assert_eq!(i, id);
                pages.extend(pfn..pfn + npages);
            }
            HintEvent::Finished { id: i } => assert_eq!(i, id),
        }
    }
    let want: Vec<u64> = (0..8u64)
        .flat_map(|byte| (0..4).map(move |bit| 64 + byte * 8 + bit))
        .chain([263])
        .collect();
    assert_eq!(pages, want);
    // Replies after DONE are stale.
    r.send(r.misc, &reply(hdr(id, 64, 8, BALLOON_FLAG_DONE), &ones));
    assert!(
        r.serve(r.misc).is_empty(),
        "a late reply is counted, not an error"
    );
    assert!(r.events().is_empty());
    assert_eq!(r.dev.hint_counters().stale_replies, 2);
    assert!(r.guarded.canaries_intact());
}

#[test]
fn test_hostile_free_page_buffers() {
    let mut r = Rig::new();
    r.dev.start_free_page_hint(ID).unwrap();
    let block = |pfn: u64| Seg::At(pfn * PAGE_SIZE, (1024 * PAGE_SIZE) as u32, true);
    // Blocks before the ack are not hints.
    let h = r.send(r.free_page, &[block(1024)]);
    assert!(r.serve(r.free_page).is_empty());
    assert_eq!(r.used(r.free_page), vec![(h, 0)]);
    assert!(r.events().is_empty());
    assert_eq!(r.dev.hint_counters().stale_blocks, 1);

    r.refuse(r.free_page, &[Seg::Out(vec![1, 2, 3])], |e| {
        matches!(
            e,
            HintError::BadCmdId {
                source: PagesError::CmdIdLength { len: 3, .. }
            }
        )
    });
    r.refuse(
        r.free_page,
        &[Seg::Out(0x1234u32.to_le_bytes().to_vec())],
        |e| matches!(e, HintError::UnknownCmdId { cmd_id: 0x1234, .. }),
    );
    // The ack starts hinting.
    r.send(r.free_page, &[Seg::Out(ID.to_le_bytes().to_vec())]);
    assert!(r.serve(r.free_page).is_empty());
    assert_eq!(r.dev.free_page_status(), FreePageStatus::Start(ID));
    r.used(r.free_page);
    // Wrong direction: a block the device may only read is taken for a command id.
    r.refuse(
        r.free_page,
        &[Seg::At(2048 * PAGE_SIZE, 4 << 20, false)],
        |e| matches!(e, HintError::BadCmdId { .. }),
    );
    r.refuse(
        r.free_page,
        &[Seg::Out(ID.to_le_bytes().to_vec()), Seg::In(PAGE_SIZE)],
        |e| matches!(e, HintError::Direction { found: "mixed", .. }),
    );
    // Blocks that are not whole pages; one bad block refuses the whole buffer.
    r.refuse(
        r.free_page,
        &[block(3072), Seg::At(4096 * PAGE_SIZE + 100, 4096, true)],
        |e| {
            matches!(
                e,
                HintError::BadBlock {
                    source: PagesError::HintNotPageAligned { .. },
                    ..
                }
            )
        },
    );
    r.refuse(r.free_page, &[Seg::At(4096 * PAGE_SIZE, 100, true)], |e| {
        matches!(e, HintError::BadBlock { .. })
    });
    // Still started: good blocks count.
    let h = r.send(r.free_page, &[block(5120), block(6144)]);
    assert!(r.serve(r.free_page).is_empty());
    assert_eq!(r.used(r.free_page), vec![(h, 0)]);
    assert_eq!(
        r.events(),
        vec![
            HintEvent::Pages {
                id: u64::from(ID),
                pfn: 5120,
                npages: 1024
            },
            HintEvent::Pages {
                id: u64::from(ID),
                pfn: 6144,
                npages: 1024
            }
        ]
    );
    // The guest's STOP ends it; later blocks are ignored.
    r.send(r.free_page, &[Seg::Out(0u32.to_le_bytes().to_vec())]);
    r.send(r.free_page, &[block(7168)]);
    assert!(r.serve(r.free_page).is_empty());
    assert_eq!(r.events(), vec![HintEvent::Finished { id: u64::from(ID) }]);
    assert_eq!(r.dev.free_page_status(), FreePageStatus::Stop);
    assert_eq!(r.dev.hint_counters().stale_blocks, 2);
    // The device never wrote a block.
    assert!(r.guarded.canaries_intact());
}

#[test]
fn test_hostile_reports_discard_nothing() {
    let mut r = Rig::new();
    let fill = |r: &Rig, pfn: u64| {
        r.mem()
            .fill(GuestAddress(pfn * PAGE_SIZE), 512 * PAGE_SIZE, 0x77)
            .unwrap()
    };
    let intact = |r: &Rig, pfn: u64| {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        r.mem()
            .read(GuestAddress(pfn * PAGE_SIZE), &mut page)
            .unwrap();
        page.iter().all(|b| *b == 0x77)
    };
    let block = |pfn: u64| Seg::At(pfn * PAGE_SIZE, (512 * PAGE_SIZE) as u32, true);
    for p in [2048, 2560, 3072] {
        fill(&r, p);
    }
    // A report the device could only read.
    r.refuse(
        r.reporting,
        &[Seg::At(2048 * PAGE_SIZE, (512 * PAGE_SIZE) as u32, false)],
        |e| {
            matches!(
                e,
                HintError::Direction {
                    found: "device-readable",
                    ..
                }
            )
        },
    );
    // One bad block refuses the whole report: the good one next to it stays.
    r.refuse(
        r.reporting,
        &[block(2048), Seg::At(2560 * PAGE_SIZE + 8, 4096, true)],
        |e| matches!(e, HintError::BadBlock { .. }),
    );
    assert!(intact(&r, 2048) && intact(&r, 2560));
    assert_eq!(r.dev.hint_counters().reported_pages, 0);
    // A good report is discarded.
    let h = r.send(r.reporting, &[block(2048), block(3072)]);
    assert!(r.serve(r.reporting).is_empty());
    assert_eq!(r.used(r.reporting), vec![(h, 0)]);
    assert!(!intact(&r, 2048) && !intact(&r, 3072) && intact(&r, 2560));
    assert_eq!(r.dev.hint_counters().reported_pages, 1024);
    assert!(r.guarded.canaries_intact());
}
