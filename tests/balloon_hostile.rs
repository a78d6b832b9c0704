//! A hostile guest against the balloon device: malformed messages in every encoding, broken
//! rings, stray deflates and bad stats buffers. Each bad buffer gets a typed error and comes
//! back used (length 0), good buffers next to it are still served, nothing is lost, and the
//! canary pages mapped right below and above guest RAM stay untouched and resident.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vballoon::device::{BalloonDevice, BalloonError, DeviceConfig, QueueRole};
use vballoon::memory::{GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::pages::bitmap::BmapHeader;
use vballoon::pages::{encode, Encoding, PageRange, PagesError};
use vballoon::rig::hostile::GuardedMemory;
use vballoon::rig::DriverStart;
use vballoon::transport::VIRTIO_CONFIG_S_NEEDS_RESET;
use vballoon::virtq::{DriverQueue, NotifyMode, Segment, VirtqError};

const PAGES: u64 = 1024;
/// Pages filled with a pattern that no refused message may discard.
const SENTINEL: (u64, u64) = (512, 256);
/// Pages the good messages inflate.
const GOOD: &[PageRange] = &[PageRange::new(800, 8), PageRange::new(810, 1)];
const BUFS: u64 = 0x40000;

struct Rig {
    guarded: GuardedMemory,
    dev: BalloonDevice,
    queues: Vec<DriverQueue>,
    next_buf: u64,
}

impl Rig {
    fn new(enc: Encoding) -> Rig {
        let guarded = GuardedMemory::new(PAGES * PAGE_SIZE).expect("canaries");
        let mem = Arc::clone(guarded.memory());
        let (s, l) = SENTINEL;
        mem.fill(GuestAddress(s * PAGE_SIZE), l * PAGE_SIZE, 0x77)
            .unwrap();
        let mut dev = BalloonDevice::new(
            Arc::clone(&mem),
            DeviceConfig {
                encoding: enc,
                notify: NotifyMode::Polling,
                ..DeviceConfig::default()
            },
        )
        .unwrap();
        let queues = DriverStart::new(64, 0x4000).start(&mut dev).unwrap();
        Rig {
            guarded,
            dev,
            queues,
            next_buf: BUFS,
        }
    }

    fn mem(&self) -> &Arc<GuestMemory> {
        self.guarded.memory()
    }

    /// Writes `segs` into guest RAM and adds them as one chain on `queue`; returns the head.
    fn send(&mut self, queue: u16, segs: &[(Vec<u8>, bool)]) -> u16 {
        let mut chain = Vec::new();
        for (bytes, writable) in segs {
            let at = GuestAddress(self.next_buf);
            self.mem().write(at, bytes).unwrap();
            chain.push(Segment {
                addr: at,
                len: bytes.len() as u32,
                writable: *writable,
            });
            self.next_buf += (bytes.len() as u64).max(1).next_multiple_of(64);
        }
        self.queues[usize::from(queue)].add(&chain).unwrap()
    }

    fn good(&mut self, queue: u16, enc: Encoding) -> u16 {
        let m = encode(enc, GOOD).unwrap().remove(0);
        let segs: Vec<(Vec<u8>, bool)> = m.segments.into_iter().map(|s| (s, false)).collect();
        self.send(queue, &segs)
    }

    /// Every head comes back, with length 0.
    fn used(&mut self, queue: u16) -> Vec<u16> {
        let mut v = Vec::new();
        while let Some(u) = self.queues[usize::from(queue)].pop_used().unwrap() {
            assert_eq!(u.len, 0);
            v.push(u.head);
        }
        v
    }

    fn check_untouched(&self) {
        assert!(self.guarded.canaries_intact(), "canary touched");
        let (s, l) = SENTINEL;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for p in s..s + l {
            self.mem()
                .read(GuestAddress(p * PAGE_SIZE), &mut page)
                .unwrap();
            assert!(page.iter().all(|b| *b == 0x77), "sentinel page {p} changed");
        }
    }
}

fn seg(b: Vec<u8>) -> Vec<(Vec<u8>, bool)> {
    vec![(b, false)]
}

fn pfns(list: &[u32]) -> Vec<u8> {
    list.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn bmap(h: BmapHeader, body: &[u8]) -> Vec<(Vec<u8>, bool)> {
    vec![(h.to_bytes().to_vec(), false), (body.to_vec(), false)]
}

fn hdr(start_pfn: u64, bmap_len: u64) -> BmapHeader {
    BmapHeader {
        start_pfn,
        bmap_len,
        ..BmapHeader::RESIZE
    }
}

/// A one-word bitmap message whose header is `hdr(0, 8)` with one field made bad.
fn bmap_with(bad: impl FnOnce(&mut BmapHeader)) -> Msg {
    let mut h = hdr(0, 8);
    bad(&mut h);
    bmap(h, &[1; 8])
}

fn ext(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn auto(kind: u8, rest: Vec<(Vec<u8>, bool)>) -> Vec<(Vec<u8>, bool)> {
    let mut v = vec![(vec![kind, 0, 0, 0, 0, 0, 0, 0], false)];
    v.extend(rest);
    v
}

type Check = fn(&BalloonError) -> bool;
/// A message as (bytes, device-writable) segments.
type Msg = Vec<(Vec<u8>, bool)>;

fn decode_err(e: &BalloonError, f: impl Fn(&PagesError) -> bool) -> bool {
    matches!(e, BalloonError::Decode { source, .. } if f(source))
}

/// The hostile messages of `enc`, each with the error it must get.
fn hostile(enc: Encoding) -> Vec<(&'static str, Msg, Check)> {
    let writable: Check = |e| matches!(e, BalloonError::WritableSegment { .. });
    match enc {
        Encoding::Pfn => vec![
            ("odd length", seg(vec![1, 0, 0, 0, 2, 0]), |e| {
                decode_err(e, |p| matches!(p, PagesError::PfnArrayLength { len: 6 }))
            }),
            ("pfn = pages", seg(pfns(&[3, PAGES as u32])), |e| {
                decode_err(e, |p| {
                    matches!(p, PagesError::PageOutsideRam { pfn: PAGES, .. })
                })
            }),
            ("pfn = u32::MAX", seg(pfns(&[u32::MAX])), |e| {
                decode_err(e, |p| matches!(p, PagesError::PageOutsideRam { .. }))
            }),
            ("257 pfns", seg(pfns(&[5; 257])), |e| {
                matches!(e, BalloonError::MessageTooLong { len: 1028, .. })
            }),
            (
                "writable",
                vec![(pfns(&[5]), false), (vec![0; 4], true)],
                writable,
            ),
        ],
        Encoding::Bitmap => vec![
            ("short header", seg(vec![0; 31]), |e| {
                decode_err(e, |p| {
                    matches!(p, PagesError::BitmapHeaderTruncated { len: 31, .. })
                })
            }),
            ("page_shift 13", bmap_with(|h| h.page_shift = 13), |e| {
                decode_err(e, |p| {
                    matches!(p, PagesError::BadPageShift { page_shift: 13, .. })
                })
            }),
            ("bmap_len > body", bmap(hdr(0, 16), &[1; 8]), |e| {
                decode_err(e, |p| {
                    matches!(
                        p,
                        PagesError::BitmapLengthMismatch {
                            bmap_len: 16,
                            body_len: 8
                        }
                    )
                })
            }),
            ("bmap_len huge", bmap(hdr(0, 1 << 40), &[1; 8]), |e| {
                decode_err(e, |p| matches!(p, PagesError::BitmapTooLong { .. }))
            }),
            (
                "start_pfn overflow",
                bmap(hdr(u64::MAX - 10, 8), &[1; 8]),
                |e| decode_err(e, |p| matches!(p, PagesError::RunOverflow { .. })),
            ),
            (
                "bit past RAM",
                bmap(hdr(PAGES - 64, 16), &[0xff; 16]),
                |e| {
                    decode_err(e, |p| {
                        matches!(p, PagesError::PageOutsideRam { pfn: PAGES, .. })
                    })
                },
            ),
            ("cmd 1", bmap_with(|h| h.cmd = 1), |e| {
                decode_err(e, |p| matches!(p, PagesError::BadBitmapCommand { cmd: 1 }))
            }),
            ("flag 7", bmap_with(|h| h.flag = 7), |e| {
                decode_err(e, |p| matches!(p, PagesError::BadBitmapFlag { flag: 7 }))
            }),
            (
                "longer than 1 MiB + 32",
                seg(vec![0; (1 << 20) + 33]),
                |e| matches!(e, BalloonError::MessageTooLong { .. }),
            ),
            (
                "writable piece",
                vec![(hdr(0, 8).to_bytes().to_vec(), false), (vec![1; 8], true)],
                writable,
            ),
        ],
        Encoding::Extents => vec![
            ("12 bytes", seg(vec![0; 12]), |e| {
                decode_err(e, |p| matches!(p, PagesError::ExtentsLength { len: 12 }))
            }),
            ("zero length", seg(ext(&[600 << 12, 0])), |e| {
                decode_err(e, |p| {
                    matches!(p, PagesError::ZeroLengthExtent { pfn: 600, .. })
                })
            }),
            ("past RAM", seg(ext(&[(1000 << 12) | 100])), |e| {
                decode_err(e, |p| matches!(p, PagesError::PageOutsideRam { .. }))
            }),
            (
                "truncated long record",
                seg(ext(&[(5 << 12) | 1, 600 << 12])),
                |e| {
                    decode_err(e, |p| {
                        matches!(p, PagesError::ExtentTruncated { offset: 8 })
                    })
                },
            ),
            ("length overflow", seg(ext(&[600 << 12, u64::MAX])), |e| {
                decode_err(e, |p| matches!(p, PagesError::RunOverflow { .. }))
            }),
            ("32 KiB + 8", seg(vec![0; 32 * 1024 + 8]), |e| {
                matches!(e, BalloonError::MessageTooLong { .. })
            }),
        ],
        Encoding::Auto => vec![
            ("short tag", seg(vec![1, 0, 0, 0]), |e| {
                decode_err(e, |p| {
                    matches!(p, PagesError::AutoHeaderTruncated { len: 4, .. })
                })
            }),
            ("kind 9", auto(9, seg(ext(&[(5 << 12) | 1]))), |e| {
                decode_err(e, |p| matches!(p, PagesError::UnknownAutoKind { kind: 9 }))
            }),
            (
                "reserved byte",
                vec![
                    (vec![2, 0, 0, 1, 0, 0, 0, 0], false),
                    (ext(&[(5 << 12) | 1]), false),
                ],
                |e| {
                    decode_err(e, |p| {
                        matches!(
                            p,
                            PagesError::AutoReserved {
                                offset: 3,
                                value: 1
                            }
                        )
                    })
                },
            ),
            (
                "bitmap body with page_shift 0",
                auto(
                    1,
                    bmap(
                        BmapHeader {
                            page_shift: 0,
                            ..hdr(0, 8)
                        },
                        &[1; 8],
                    ),
                ),
                |e| decode_err(e, |p| matches!(p, PagesError::BadPageShift { .. })),
            ),
            (
                "extents body past RAM",
                auto(2, seg(ext(&[(1023 << 12) | 2]))),
                |e| decode_err(e, |p| matches!(p, PagesError::PageOutsideRam { .. })),
            ),
        ],
    }
}

#[test]
fn test_malformed_messages_get_typed_errors_and_lose_nothing() {
    for enc in Encoding::ALL {
        for queue in [0u16, 1] {
            let mut rig = Rig::new(enc);
            let cases = hostile(enc);
            for (name, segs, check) in &cases {
                let bad = rig.send(queue, segs);
                let good = rig.good(queue, enc);
                let run = rig.dev.process_queue(queue).unwrap();
                assert_eq!((run.buffers, run.bad_buffers), (2, 1), "{enc} {name}");
                let errs = rig.dev.take_errors();
                assert_eq!(errs.len(), 1, "{enc} {name}: {errs:?}");
                assert!(check(&errs[0]), "{enc} {name}: got {:?}", errs[0]);
                // Both come back, bad and good, with length 0: nothing is lost.
                assert_eq!(rig.used(queue), vec![bad, good], "{enc} {name}");
                rig.check_untouched();
            }
            let c = rig.dev.counters();
            assert_eq!(c.bad_buffers, cases.len() as u64);
            assert_eq!(rig.dev.errors_total(), cases.len() as u64);
            assert_eq!(
                rig.dev.transport().status() & VIRTIO_CONFIG_S_NEEDS_RESET,
                0
            );
            if queue == 0 {
                // The good inflates went through: exactly those pages are in the balloon.
                assert_eq!(rig.dev.balloon_pages(), 9, "{enc}");
                assert!(rig
                    .mem()
                    .is_zero(GuestAddress(800 * PAGE_SIZE), 8 * PAGE_SIZE)
                    .unwrap());
            } else {
                // Deflating pages never inflated is counted and ignored.
                assert_eq!(c.pages_stray_deflated, 9 * cases.len() as u64, "{enc}");
                assert_eq!(rig.dev.balloon_pages(), 0);
            }
        }
    }
}

#[test]
fn test_inflate_then_deflate_after_refusals() {
    let mut rig = Rig::new(Encoding::Bitmap);
    rig.good(0, Encoding::Bitmap);
    rig.dev.process_queue(0).unwrap();
    assert_eq!(rig.dev.balloon_pages(), 9);
    rig.send(1, &bmap(hdr(0, 16), &[1; 8]));
    rig.good(1, Encoding::Bitmap);
    let run = rig.dev.process_queue(1).unwrap();
    assert_eq!((run.buffers, run.bad_buffers, run.pages), (2, 1, 9));
    assert_eq!(rig.dev.balloon_pages(), 0);
    assert_eq!(rig.dev.counters().pages_stray_deflated, 0);
    rig.check_untouched();
}

#[test]
fn test_broken_ring_needs_reset_and_touches_nothing() {
    for enc in Encoding::ALL {
        // avail.idx far ahead of the device.
        let mut rig = Rig::new(enc);
        let idx = rig.queues[0].layout().avail_idx();
        rig.mem().store_u16(idx, 100, Ordering::Release).unwrap();
        assert!(matches!(
            rig.dev.process_queue(0),
            Err(BalloonError::NeedsReset {
                queue: QueueRole::Inflate
            })
        ));
        assert!(rig.dev.transport().status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0);
        let errs = rig.dev.take_errors();
        assert!(matches!(
            errs.as_slice(),
            [BalloonError::Queue {
                source: VirtqError::AvailIndexAhead { avail_idx: 100, .. },
                ..
            }]
        ));
        // Later kicks only say it needs reset, and log nothing new.
        assert!(rig.dev.process_queue(0).is_err());
        assert_eq!(rig.dev.errors_total(), 1);
        assert_eq!(rig.dev.counters().queue_errors, 1);
        rig.check_untouched();

        // A descriptor reaching past the end of guest RAM.
        let mut rig = Rig::new(enc);
        let head = rig.good(0, enc);
        let desc = rig.queues[0].layout().desc(head);
        let end = PAGES * PAGE_SIZE;
        rig.mem().write_u64(desc, end - 8).unwrap();
        rig.mem()
            .write_u32(GuestAddress(desc.raw() + 8), 64)
            .unwrap();
        assert!(rig.dev.process_queue(0).is_err());
        assert!(matches!(
            rig.dev.take_errors().as_slice(),
            [BalloonError::Queue {
                source: VirtqError::BufferOutsideMemory { .. },
                ..
            }]
        ));
        assert_eq!(rig.dev.balloon_pages(), 0);
        rig.check_untouched();
    }
}

#[test]
fn test_bad_stats_buffers() {
    let mut rig = Rig::new(Encoding::Pfn);
    let stats_q = 2;
    // 15 bytes: not a whole number of entries.
    rig.send(stats_q, &seg(vec![4; 15]));
    rig.dev.process_queue(stats_q).unwrap();
    assert!(matches!(
        rig.dev.take_errors().as_slice(),
        [BalloonError::StatsLength { len: 15 }]
    ));
    // The device holds it until it wants a sample, then returns it.
    assert!(rig.dev.holds_stats_buffer());
    assert!(rig.dev.request_stats().unwrap());
    assert_eq!(rig.used(stats_q).len(), 1);
    // A good buffer with an unknown tag: known tags kept, the other ignored.
    let mut b = Vec::new();
    vballoon::abi::encode_stats(&[(4, 4096), (77, 1), (5, 8192)], &mut b);
    rig.send(stats_q, &seg(b));
    rig.dev.process_queue(stats_q).unwrap();
    let s = rig.dev.stats();
    assert_eq!((s.get(4), s.get(5), s.unknown), (Some(4096), Some(8192), 1));
    assert!(rig.dev.errors_total() == 1);
    // A second buffer while one is held: the old one comes back, the new one is held.
    let mut b = Vec::new();
    vballoon::abi::encode_stats(&[(4, 1)], &mut b);
    rig.send(stats_q, &seg(b));
    rig.dev.process_queue(stats_q).unwrap();
    assert!(matches!(
        rig.dev.take_errors().last(),
        Some(BalloonError::StatsBufferAlreadyHeld { .. })
    ));
    assert_eq!(rig.used(stats_q).len(), 1);
    assert_eq!(rig.dev.stats().get(4), Some(1));
    // Too long to read.
    assert!(rig.dev.request_stats().unwrap());
    rig.used(stats_q);
    rig.send(stats_q, &seg(vec![0; 5000]));
    rig.dev.process_queue(stats_q).unwrap();
    assert!(matches!(
        rig.dev.take_errors().as_slice(),
        [BalloonError::StatsTooLong { len: 5000, .. }]
    ));
    rig.check_untouched();
}

#[test]
fn test_reinflating_a_page_is_counted_once() {
    let mut rig = Rig::new(Encoding::Extents);
    rig.good(0, Encoding::Extents);
    rig.good(0, Encoding::Extents);
    let run = rig.dev.process_queue(0).unwrap();
    assert_eq!(run.buffers, 2);
    let c = rig.dev.counters();
    assert_eq!((c.pages_inflated, c.pages_reinflated), (9, 0));
    // Coalesced across both buffers: the same runs, discarded once.
    assert_eq!(c.discard_calls, 2);
    rig.good(0, Encoding::Extents);
    rig.dev.process_queue(0).unwrap();
    let c = rig.dev.counters();
    assert_eq!((c.pages_inflated, c.pages_reinflated), (9, 9));
    rig.check_untouched();
}
