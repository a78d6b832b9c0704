//! A hostile migration source: the harness behind the `migration_dest` fuzz target and the
//! hostile-peer property tests.
//!
//! [`Script`] turns arbitrary bytes into a stream of frames with *correct* CRCs (and, with a
//! key, correct MACs): hostile numbers (page numbers, run lengths, record counts, round
//! numbers, totals, frame types and lengths) behind valid integrity checks, so the destination's
//! own validation is what is exercised. [`ScriptedSource`] plays the source side of the
//! connection in memory (handshake included). [`run`] feeds a [`Destination`] and checks it:
//! a typed result, nothing outside guest RAM touched, and no page holding data that no data
//! record of the stream carried.

use std::io::{self, Read, Write};
use std::time::Duration;

use super::auth::{hello, MigrationKey, RecordKeys, Role, CLIENT_MAGIC, HELLO_LEN, NONCE_LEN};
use super::crc::crc32c_append;
use super::dest::{DestConfig, Destination};
use super::error::MigrationError;
use super::stream::{frame_header, Header, HEADER_LEN};
use super::transport::Channel;
use super::PAGE;
use crate::memory::{GuestAddress, GuestMemory, PAGE_SIZE};

/// The key the keyed scripts use.
pub const KEY: &[u8] = b"hostile-harness-key-0123456789";
const PFN_MASK: u64 = (1 << 56) - 1;
/// Most data records one script holds.
const MAX_DATA_RECORDS: u64 = 6;

/// Reads the input as little-endian numbers; missing bytes read as zero.
struct Input<'a> {
    d: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn left(&self) -> bool {
        self.at < self.d.len()
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.d.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
        b
    }

    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// A stream made from arbitrary bytes, cut into the pieces a source would write.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The header, then one entry per frame (and maybe trailing garbage).
    pub pieces: Vec<Vec<u8>>,
    /// Whether the connection is keyed.
    pub keyed: bool,
    /// Pages some data record may have filled with a non-zero byte.
    pub nonzero: Vec<u64>,
}

/// The running totals a correct end frame carries (as the reader counts them).
#[derive(Default)]
struct Tally {
    data: u64,
    zero: u64,
    frames: u64,
    bytes: u64,
    round: u32,
    chain: u32,
    vpages: u64,
    vframes: u64,
}

impl Script {
    /// Interprets `data` for a destination of `guest_pages` pages.
    pub fn from_bytes(data: &[u8], guest_pages: u64) -> Script {
        let mut inp = Input { d: data, at: 0 };
        let sel = inp.u8();
        let guest_size = match (sel >> 3) & 3 {
            0 | 1 => guest_pages * PAGE_SIZE,
            2 => guest_pages.saturating_sub(u64::from(inp.u8()) + 1).max(1) * PAGE_SIZE,
            _ => inp.u64(),
        };
        let header = Header {
            guest_size,
            flags: u64::from(sel & 7),
        };
        let pages = guest_size / PAGE_SIZE;
        let mut s = Script {
            pieces: vec![header.encode().to_vec()],
            keyed: sel & 0x80 == 0,
            nonzero: Vec::new(),
        };
        let mut t = Tally {
            bytes: HEADER_LEN as u64,
            ..Tally::default()
        };
        while inp.left() && s.pieces.len() < 64 {
            match inp.u8() % 8 {
                0 => s.batch(&mut inp, &mut t, pages),
                1 => {
                    let r = match inp.u8() {
                        m if m % 2 == 0 => t.round.wrapping_add(1),
                        _ => inp.u32(),
                    };
                    t.round = r;
                    let mut p = r.to_le_bytes().to_vec();
                    p.extend_from_slice(&[0; 4]);
                    s.frame(&mut t, 2, 0, &p);
                }
                2 | 3 => {
                    let mut p = Vec::with_capacity(40);
                    for v in [t.data, t.zero, t.frames, t.bytes] {
                        p.extend_from_slice(&v.to_le_bytes());
                    }
                    p.extend_from_slice(&t.round.to_le_bytes());
                    p.extend_from_slice(&t.chain.to_le_bytes());
                    if inp.u8() % 4 == 3 {
                        let at = usize::from(inp.u8() % 40);
                        p[at] ^= inp.u8() | 1;
                    }
                    s.frame(&mut t, 3, 0, &p);
                }
                4 => s.verify(&mut inp, &mut t, pages),
                5 => {
                    let mut p = t.vpages.to_le_bytes().to_vec();
                    p.extend_from_slice(&t.vframes.to_le_bytes());
                    if inp.u8() % 4 == 3 {
                        p[usize::from(inp.u8() % 16)] ^= 1;
                    }
                    s.frame(&mut t, 5, 0, &p);
                }
                6 => {
                    let (kind, count, len) = (inp.u8(), inp.u32(), inp.u16() % 512);
                    let p: Vec<u8> = (0..len).map(|_| inp.u8()).collect();
                    s.frame(&mut t, kind, count, &p);
                }
                _ => {
                    let n = inp.u8() % 24;
                    s.pieces.push((0..n).map(|_| inp.u8()).collect());
                    break;
                }
            }
        }
        s
    }

    /// Appends a frame with a correct CRC and keeps the tally as the reader would.
    fn frame(&mut self, t: &mut Tally, kind: u8, count: u32, payload: &[u8]) {
        // Payloads here are at most a few MiB: the header always encodes.
        let Ok(head) = frame_header(kind, count, payload) else {
            return;
        };
        let mut f = head.to_vec();
        f.extend_from_slice(payload);
        t.frames += 1;
        t.bytes += f.len() as u64;
        // The chain CRC runs over each frame's stored CRC field.
        t.chain = crc32c_append(t.chain, &head[12..16]);
        self.pieces.push(f);
    }

    fn pfn(inp: &mut Input<'_>, mode: u8, pages: u64) -> u64 {
        match mode % 4 {
            0 => u64::from(inp.u8()),
            1 => u64::from(inp.u16()),
            2 => inp.u64() & PFN_MASK,
            _ => pages.saturating_sub(u64::from(inp.u8() % 4) + 1),
        }
    }

    fn batch(&mut self, inp: &mut Input<'_>, t: &mut Tally, pages: u64) {
        let n = inp.u8() % 32;
        let mut p = Vec::new();
        for _ in 0..n {
            let k = inp.u8();
            // Data records cost 4 KiB each to seal and apply: a few reach every path, more
            // would only slow the fuzzer down, so past the cap they become zero runs.
            let kind = match k % 4 {
                0 | 1 if t.data < MAX_DATA_RECORDS => 1u8,
                0..=2 => 2,
                _ => inp.u8(),
            };
            let pfn = Self::pfn(inp, k >> 2, pages);
            p.extend_from_slice(&((u64::from(kind) << 56) | pfn).to_le_bytes());
            match kind {
                1 => {
                    let fill = inp.u8();
                    p.extend_from_slice(&[fill; PAGE]);
                    t.data += 1;
                    if fill != 0 {
                        self.nonzero.push(pfn);
                    }
                }
                2 => {
                    let c = match k >> 4 {
                        0..=5 => u64::from(inp.u8()),
                        6..=9 => pages.saturating_sub(pfn),
                        10..=12 => pages,
                        _ => inp.u64(),
                    };
                    p.extend_from_slice(&c.to_le_bytes());
                    t.zero = t.zero.wrapping_add(c);
                }
                _ => {}
            }
        }
        let count = match inp.u8() {
            0xff => inp.u32(),
            0xfe => u32::from(n) + 1,
            _ => u32::from(n),
        };
        self.frame(t, 1, count, &p);
    }

    fn verify(&mut self, inp: &mut Input<'_>, t: &mut Tally, pages: u64) {
        let n = inp.u8() % 8;
        let mut p = Vec::new();
        for _ in 0..n {
            let k = inp.u8();
            let first = Self::pfn(inp, k, pages);
            let len = match k >> 2 {
                0..=47 => u64::from(k % 16),
                _ => inp.u64(),
            };
            p.extend_from_slice(&first.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            for _ in 0..len.min(16) {
                p.extend_from_slice(&inp.u64().to_le_bytes());
            }
            t.vpages = t.vpages.wrapping_add(len);
        }
        t.vframes += 1;
        self.frame(t, 4, u32::from(n), &p);
    }
}

/// The source side of a connection, played from a [`Script`] in memory.
#[derive(Debug)]
pub struct ScriptedSource {
    key: Option<MigrationKey>,
    pieces: Vec<Vec<u8>>,
    out: Vec<u8>,
    pos: usize,
    nonce: [u8; NONCE_LEN],
    heard: Vec<u8>,
    sealed: bool,
}

impl ScriptedSource {
    /// Plays `script`, authenticating with `key` if the script is keyed.
    pub fn new(script: &Script, key: &MigrationKey) -> ScriptedSource {
        let nonce = [7u8; NONCE_LEN];
        let (key, out) = if script.keyed {
            (Some(key.clone()), hello(CLIENT_MAGIC, &nonce).to_vec())
        } else {
            (None, script.pieces.concat())
        };
        ScriptedSource {
            key,
            pieces: script.pieces.clone(),
            out,
            pos: 0,
            nonce,
            heard: Vec::new(),
            sealed: false,
        }
    }

    /// What the destination wrote.
    pub fn heard(&self) -> &[u8] {
        &self.heard
    }

    /// Once the destination's handshake is heard, seals every piece as one record.
    fn seal(&mut self) {
        let Some(key) = &self.key else { return };
        if self.sealed || self.heard.len() < HELLO_LEN {
            return;
        }
        let mut dn = [0u8; NONCE_LEN];
        dn.copy_from_slice(&self.heard[8..HELLO_LEN]);
        let mut keys = RecordKeys::derive(key, &self.nonce, &dn, Role::Source);
        for p in &self.pieces {
            keys.seal(p, &mut self.out);
        }
        self.sealed = true;
    }
}

impl Read for ScriptedSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.out.len() {
            self.seal();
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for ScriptedSource {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Replies are a few 16-byte messages: keep at most 64 KiB of them.
        let n = buf.len().min((64 << 10) - self.heard.len().min(64 << 10));
        self.heard.extend_from_slice(&buf[..n]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Channel for ScriptedSource {
    fn set_timeouts(&self, _: Option<Duration>, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn shutdown(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What one run of the harness saw.
#[derive(Debug)]
pub struct Outcome {
    /// The destination's result: the report's data page count, or its error.
    pub result: Result<u64, MigrationError>,
    /// Resident pages holding data no data record of the stream carried (must be empty).
    pub stray_pages: Vec<u64>,
}

/// Feeds `data` (as a [`Script`]) to a keyed destination writing into `mem`, which must be
/// unpopulated (fresh or discarded); leaves it discarded again.
pub fn run(data: &[u8], mem: &GuestMemory) -> Outcome {
    let key = MigrationKey::new(KEY).unwrap_or_else(|_| unreachable!("the harness key is long"));
    let script = Script::from_bytes(data, mem.pages());
    let cfg = DestConfig {
        key: script.keyed.then(|| key.clone()),
        ..DestConfig::default()
    };
    let result = Destination::new(mem, cfg)
        .receive(ScriptedSource::new(&script, &key))
        .map(|r| r.data_pages);
    let mut stray_pages = Vec::new();
    let mut resident = true;
    if let Ok(res) = mem.residency(GuestAddress(0), mem.size()) {
        resident = res.iter().any(|r| r & 1 != 0);
        let mut allowed = script.nonzero.clone();
        allowed.sort_unstable();
        for (pfn, r) in res.iter().enumerate() {
            let pfn = pfn as u64;
            let addr = GuestAddress(pfn * PAGE_SIZE);
            if r & 1 != 0
                && allowed.binary_search(&pfn).is_err()
                && !mem.is_zero(addr, PAGE_SIZE).unwrap_or(false)
            {
                stray_pages.push(pfn);
            }
        }
    }
    if resident {
        let _ = mem.discard(GuestAddress(0), mem.size());
    }
    Outcome {
        result,
        stray_pages,
    }
}

/// Inputs that reach the end of a well-formed stream, for the fuzz corpus and the tests.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    vec![
        // Keyed, no flags: round 1, a batch of two data pages (one 0xab, one zero) and a zero run
        // to the guest's end, a correct end frame.
        vec![0, 1, 0, 0, 3, 0, 2, 0xab, 0, 3, 0, 0x62, 4, 0, 2, 0],
        // Unkeyed: round 1, a batch with one data page, a correct end frame.
        vec![0x80, 1, 0, 0, 1, 0, 9, 0x11, 0, 2, 0],
        // Verify flag: round 1, the whole guest as one zero run, the end frame, a verify frame
        // with one checksum for page 3, a correct verify end.
        vec![
            4, 1, 0, 0, 1, 0x62, 0, 0, 2, 0, 4, 1, 1, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 0,
        ],
    ]
}
