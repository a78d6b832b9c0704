//! The migration stream: what the source writes and the destination reads, byte by byte.
//!
//! All integers are little-endian. CRCs are CRC-32C ([`crc32c`]).
//!
//! ## Header (40 bytes, once, first)
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VBMIGRAT"` ([`MAGIC`]) |
//! | 8 | 4 | format version, [`VERSION`] (1) |
//! | 12 | 4 | page size, 4096 |
//! | 16 | 8 | guest RAM size in bytes (a positive multiple of the page size) |
//! | 24 | 8 | flags: bit 0 [`FLAG_HINTED`] (free pages hinted by the guest may never be sent), bit 1 [`FLAG_SKIP_UNPOPULATED`] (never-populated pages are sent as zero runs unread), bit 2 [`FLAG_VERIFY`] (a verify trailer follows the end frame); other bits must be 0 |
//! | 32 | 4 | reserved, 0 |
//! | 36 | 4 | CRC-32C of bytes 0..36 |
//!
//! ## Frames (repeated)
//! Every frame is a 16-byte frame header followed by `len` payload bytes:
//! | off | size | field |
//! |---|---|---|
//! | 0 | 1 | type: 1 = batch, 2 = round marker, 3 = end, 4 = verify, 5 = verify end |
//! | 1 | 3 | reserved, 0 |
//! | 4 | 4 | record count (batches; 0 for the other types) |
//! | 8 | 4 | payload length `len` |
//! | 12 | 4 | CRC-32C of frame-header bytes 0..12 followed by the payload |
//!
//! **Batch** (type 1, `len` ≤ [`MAX_BATCH_PAYLOAD`], count ≤ [`MAX_BATCH_RECORDS`]): `count`
//! records back to back, each starting with a u64 whose top byte is the record kind and whose
//! low 56 bits are a page frame number:
//! - kind 1, **data**: `(1 << 56) | pfn`, then the page's 4096 bytes (4104 bytes in all);
//! - kind 2, **zero run**: `(2 << 56) | first_pfn`, then a u64 page count ≥ 1 (16 bytes): pages
//!   `[first_pfn, first_pfn + count)` are all zero. 8 GiB of zeros is one 16-byte record.
//!
//! Every page named must lie inside the guest, and the records must fill the payload exactly.
//!
//! **Round marker** (type 2, `len` = 8): u32 round number (1, 2, ... consecutive; the source
//! writes it before the round's batches), u32 reserved 0.
//!
//! **End** (type 3, `len` = 40, last frame): u64 data pages sent, u64 pages covered by zero runs,
//! u64 frames before this one, u64 stream bytes before this frame (header included), u32 last
//! round number, u32 chain CRC: CRC-32C over the 4-byte CRC fields of every earlier frame, in
//! order (catches a lost, repeated or reordered frame whose own CRC is fine).
//!
//! ## Verify trailer (only with [`FLAG_VERIFY`], after the destination's DONE)
//! With the guest paused and the migration complete, the source proves to the destination
//! which pages must match: it sends a checksum of every page the guest uses (not free, not
//! ballooned), and the destination compares each with its own copy. Free pages are not
//! listed, since they need not arrive.
//! - **Verify** (type 4, `len` ≤ [`MAX_BATCH_PAYLOAD`]): `count` records, each a u64
//!   `first_pfn`, a u64 page count `n` ≥ 1, then `n` u64 checksums, one per page
//!   `first_pfn ..first_pfn + n` in order. The checksum of a page is
//!   [`hash64`](crate::guest::hash::hash64) of its 4096 bytes.
//! - **Verify end** (type 5, `len` = 16, last frame): u64 pages checksummed, u64 verify frames
//!   before this one.
//!
//! Frames of type 4 and 5 are invalid before the end frame or without the flag.
//!
//! ## Replies (destination to source, 16 bytes each)
//! u32 magic `"VBRP"` ([`REPLY_MAGIC`]), u32 code ([`ReplyCode`]), u64 detail. The destination
//! answers the header with ACCEPT (1) or a rejection, the end frame with DONE (2; detail: data
//! pages applied) or a rejection, and a verify end frame with VERIFIED (3; detail: pages whose
//! checksum differs); on any error it sends a rejection if it still can.

use std::io::{self, Read, Write};
use std::time::Duration;

use super::crc::{crc32c, crc32c_append};
use super::error::{MigrationError, RejectReason, StreamError};
use super::transport::map_io_error;
use crate::memory::PAGE_SIZE;

/// Stream magic, the ASCII bytes `VBMIGRAT`.
pub const MAGIC: [u8; 8] = *b"VBMIGRAT";
/// The stream format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 40;
/// Frame header size in bytes.
pub const FRAME_HEADER_LEN: usize = 16;
/// Header flag: hinted free pages may never be sent.
pub const FLAG_HINTED: u64 = 1 << 0;
/// Header flag: never-populated pages are sent as zero runs without being read.
pub const FLAG_SKIP_UNPOPULATED: u64 = 1 << 1;
/// Header flag: a verify trailer follows the end frame.
pub const FLAG_VERIFY: u64 = 1 << 2;
const KNOWN_FLAGS: u64 = FLAG_HINTED | FLAG_SKIP_UNPOPULATED | FLAG_VERIFY;
/// Largest batch payload.
pub const MAX_BATCH_PAYLOAD: u32 = 2 << 20;
/// Most records in one batch.
pub const MAX_BATCH_RECORDS: u32 = 1 << 16;
/// Payload the writer aims for before it closes a batch (256 data pages).
pub const TARGET_BATCH_PAYLOAD: usize = 256 * DATA_RECORD_LEN;

const FRAME_BATCH: u8 = 1;
const FRAME_ROUND: u8 = 2;
const FRAME_END: u8 = 3;
const FRAME_VERIFY: u8 = 4;
const FRAME_VERIFY_END: u8 = 5;
const VERIFY_END_LEN: u32 = 16;
/// Bytes of a verify record's head (first pfn, page count).
const VERIFY_HEAD_LEN: usize = 16;
/// Most checksums one verify record carries.
const VERIFY_MAX_RUN: usize = (TARGET_BATCH_PAYLOAD - VERIFY_HEAD_LEN) / 8;
const ROUND_LEN: u32 = 8;
const END_LEN: u32 = 40;
const KIND_DATA: u8 = 1;
const KIND_ZERO: u8 = 2;
const PFN_MASK: u64 = (1 << 56) - 1;
const PAGE: usize = PAGE_SIZE as usize;
/// Bytes of one data record.
pub const DATA_RECORD_LEN: usize = 8 + PAGE;
/// Bytes of one zero-run record.
pub const ZERO_RECORD_LEN: usize = 16;

/// Reply magic, the ASCII bytes `VBRP` read as a little-endian u32.
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"VBRP");
/// Reply size in bytes.
pub const REPLY_LEN: usize = 16;

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Guest RAM size in bytes.
    pub guest_size: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
}

impl Header {
    /// Number of guest pages.
    pub fn pages(&self) -> u64 {
        self.guest_size / PAGE_SIZE
    }

    /// The 40 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.guest_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates 40 header bytes.
    pub fn decode(b: &[u8]) -> Result<Header, StreamError> {
        if b.len() < HEADER_LEN {
            return Err(StreamError::Truncated {
                what: "stream header",
                needed: HEADER_LEN,
                got: b.len(),
            });
        }
        if b[0..8] != MAGIC {
            return Err(StreamError::BadMagic {
                found: le64(b, 0),
                expected: u64::from_le_bytes(MAGIC),
            });
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(StreamError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let stored = le32(b, 36);
        let computed = crc32c(&b[..36]);
        if stored != computed {
            return Err(StreamError::ChecksumMismatch {
                what: "header",
                frame: 0,
                stored,
                computed,
            });
        }
        let page_size = le32(b, 12);
        if u64::from(page_size) != PAGE_SIZE {
            return Err(StreamError::BadPageSize {
                found: page_size,
                expected: PAGE_SIZE as u32,
            });
        }
        let guest_size = le64(b, 16);
        if guest_size == 0 || guest_size % PAGE_SIZE != 0 || guest_size / PAGE_SIZE > PFN_MASK {
            return Err(StreamError::BadGuestSize { size: guest_size });
        }
        let flags = le64(b, 24);
        if flags & !KNOWN_FLAGS != 0 || le32(b, 32) != 0 {
            return Err(StreamError::UnknownFlags {
                flags: flags & !KNOWN_FLAGS,
            });
        }
        Ok(Header { guest_size, flags })
    }
}

/// Totals carried by the end frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Data records sent.
    pub data_pages: u64,
    /// Pages covered by zero runs.
    pub zero_pages: u64,
    /// Frames before the end frame.
    pub frames: u64,
    /// Stream bytes before the end frame, header included.
    pub bytes: u64,
    /// Last round number.
    pub rounds: u32,
    /// CRC-32C over every earlier frame's CRC field.
    pub chain_crc: u32,
}

/// A reply code from destination to source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyCode {
    /// The header is accepted; send pages.
    Accept,
    /// Everything arrived and was applied.
    Done,
    /// The verify trailer was checked (detail: pages that differ).
    Verified,
    /// The destination refused or aborted.
    Reject(RejectReason),
}

impl ReplyCode {
    /// The code's number on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            ReplyCode::Accept => 1,
            ReplyCode::Done => 2,
            ReplyCode::Verified => 3,
            ReplyCode::Reject(RejectReason::TooLarge) => 16,
            ReplyCode::Reject(RejectReason::BadStream) => 17,
            ReplyCode::Reject(RejectReason::Full) => 18,
            ReplyCode::Reject(RejectReason::Failed) => 19,
            ReplyCode::Reject(RejectReason::Unknown(c)) => c,
        }
    }

    fn from_u32(c: u32) -> ReplyCode {
        match c {
            1 => ReplyCode::Accept,
            2 => ReplyCode::Done,
            3 => ReplyCode::Verified,
            16 => ReplyCode::Reject(RejectReason::TooLarge),
            17 => ReplyCode::Reject(RejectReason::BadStream),
            18 => ReplyCode::Reject(RejectReason::Full),
            19 => ReplyCode::Reject(RejectReason::Failed),
            c => ReplyCode::Reject(RejectReason::Unknown(c)),
        }
    }
}

/// Encodes a 16-byte reply.
pub fn encode_reply(code: ReplyCode, detail: u64) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[0..4].copy_from_slice(&REPLY_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&code.to_u32().to_le_bytes());
    b[8..16].copy_from_slice(&detail.to_le_bytes());
    b
}

/// Reads one reply, waiting at most the channel's read timeout.
pub fn read_reply(r: &mut dyn Read, timeout: Duration) -> Result<(ReplyCode, u64), MigrationError> {
    let mut b = [0u8; REPLY_LEN];
    let got = read_full(r, &mut b).map_err(|e| map_io_error("read reply", timeout, e))?;
    if got < REPLY_LEN {
        return Err(MigrationError::ConnectionLost {
            op: "read reply",
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection"),
        });
    }
    let magic = le32(&b, 0);
    let code = le32(&b, 4);
    if magic != REPLY_MAGIC {
        return Err(MigrationError::BadReply { magic, code });
    }
    Ok((ReplyCode::from_u32(code), le64(&b, 8)))
}

/// Where the writer's frames go: any `Write`, or a sink that takes the frame buffer itself.
pub trait Sink {
    /// Sends the whole of `frame`. May swap `frame` for another (empty or not) buffer.
    fn send_frame(&mut self, frame: &mut Vec<u8>) -> io::Result<()>;
    /// Flushes what was sent.
    fn flush_frames(&mut self) -> io::Result<()>;
}

impl<W: Write + ?Sized> Sink for W {
    fn send_frame(&mut self, frame: &mut Vec<u8>) -> io::Result<()> {
        self.write_all(frame)
    }

    fn flush_frames(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Reads until `buf` is full or the reader reports end of file; returns the bytes read.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes a migration stream: header, then batches of page records, round markers, end frame.
///
/// Records are gathered into a batch buffer that is written out (one `write_all`) when full.
#[derive(Debug)]
pub struct StreamWriter {
    buf: Vec<u8>,
    count: u32,
    totals: Totals,
    guest_pages: u64,
    /// Verify trailer: pages checksummed, frames written.
    verify: (u64, u64),
}

impl StreamWriter {
    /// A writer for a guest described by `header`.
    pub fn new(header: &Header) -> StreamWriter {
        let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + TARGET_BATCH_PAYLOAD + PAGE);
        buf.resize(FRAME_HEADER_LEN, 0);
        StreamWriter {
            buf,
            count: 0,
            totals: Totals::default(),
            guest_pages: header.pages(),
            verify: (0, 0),
        }
    }

    /// Writes the header.
    pub fn write_header(&mut self, w: &mut dyn Sink, header: &Header) -> io::Result<()> {
        w.send_frame(&mut header.encode().to_vec())?;
        self.totals.bytes += HEADER_LEN as u64;
        Ok(())
    }

    /// Totals so far (the batch being filled is not counted until it is written).
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Stream bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.totals.bytes
    }

    fn make_room(&mut self, w: &mut dyn Sink, need: usize) -> io::Result<()> {
        if self.buf.len() - FRAME_HEADER_LEN + need > TARGET_BATCH_PAYLOAD
            || self.count >= MAX_BATCH_RECORDS
        {
            self.flush_batch(w)?;
        }
        Ok(())
    }

    /// Appends a data record for `pfn` and returns its 4096-byte slot for the caller to fill.
    ///
    /// `pfn` must be inside the guest (the destination rejects the stream otherwise).
    pub fn data_slot(&mut self, w: &mut dyn Sink, pfn: u64) -> io::Result<&mut [u8]> {
        debug_assert!(pfn < self.guest_pages);
        self.make_room(w, DATA_RECORD_LEN)?;
        let head = (u64::from(KIND_DATA) << 56) | (pfn & PFN_MASK);
        self.buf.extend_from_slice(&head.to_le_bytes());
        let at = self.buf.len();
        self.buf.resize(at + PAGE, 0);
        self.count += 1;
        self.totals.data_pages += 1;
        Ok(&mut self.buf[at..at + PAGE])
    }

    /// Appends a data record for `pfn` with the given contents.
    pub fn data(&mut self, w: &mut dyn Sink, pfn: u64, page: &[u8; PAGE]) -> io::Result<()> {
        self.data_slot(w, pfn)?.copy_from_slice(page);
        Ok(())
    }

    /// Appends a zero run `[first, first + count)` (`count` ≥ 1).
    pub fn zero_run(&mut self, w: &mut dyn Sink, first: u64, count: u64) -> io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        self.make_room(w, ZERO_RECORD_LEN)?;
        let head = (u64::from(KIND_ZERO) << 56) | (first & PFN_MASK);
        self.buf.extend_from_slice(&head.to_le_bytes());
        self.buf.extend_from_slice(&count.to_le_bytes());
        self.count += 1;
        self.totals.zero_pages += count;
        Ok(())
    }

    fn write_frame(&mut self, w: &mut dyn Sink, kind: u8, count: u32) -> io::Result<()> {
        let len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        self.buf[0] = kind;
        self.buf[1..4].fill(0);
        self.buf[4..8].copy_from_slice(&count.to_le_bytes());
        self.buf[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c_append(crc32c(&self.buf[..12]), &self.buf[FRAME_HEADER_LEN..]);
        self.buf[12..16].copy_from_slice(&crc.to_le_bytes());
        let len = self.buf.len() as u64;
        w.send_frame(&mut self.buf)?;
        self.totals.bytes += len;
        self.totals.frames += 1;
        self.totals.chain_crc = crc32c_append(self.totals.chain_crc, &crc.to_le_bytes());
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_LEN, 0);
        self.count = 0;
        Ok(())
    }

    /// Writes out the batch being filled, if it holds any record.
    pub fn flush_batch(&mut self, w: &mut dyn Sink) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let count = self.count;
        self.write_frame(w, FRAME_BATCH, count)
    }

    /// Writes the pending batch, then a round marker for `round`.
    pub fn round(&mut self, w: &mut dyn Sink, round: u32) -> io::Result<()> {
        self.flush_batch(w)?;
        self.buf.extend_from_slice(&round.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.totals.rounds = round;
        self.write_frame(w, FRAME_ROUND, 0)
    }

    /// Writes the pending batch and the end frame, flushes `w`, and returns the totals sent.
    pub fn finish(&mut self, w: &mut dyn Sink) -> io::Result<Totals> {
        self.flush_batch(w)?;
        let t = self.totals;
        for v in [t.data_pages, t.zero_pages, t.frames, t.bytes] {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.buf.extend_from_slice(&t.rounds.to_le_bytes());
        self.buf.extend_from_slice(&t.chain_crc.to_le_bytes());
        self.write_frame(w, FRAME_END, 0)?;
        w.flush_frames()?;
        Ok(t)
    }

    /// Appends verify records for pages `first, first + 1, ...` with checksums `sums` (after
    /// [`finish`](Self::finish), in a stream with [`FLAG_VERIFY`]).
    pub fn verify_pages(&mut self, w: &mut dyn Sink, first: u64, sums: &[u64]) -> io::Result<()> {
        let mut at = first;
        for part in sums.chunks(VERIFY_MAX_RUN) {
            if self.buf.len() - FRAME_HEADER_LEN + VERIFY_HEAD_LEN + 8 * part.len()
                > TARGET_BATCH_PAYLOAD
            {
                self.flush_verify(w)?;
            }
            self.buf.extend_from_slice(&at.to_le_bytes());
            self.buf
                .extend_from_slice(&(part.len() as u64).to_le_bytes());
            for s in part {
                self.buf.extend_from_slice(&s.to_le_bytes());
            }
            self.count += 1;
            self.verify.0 += part.len() as u64;
            at += part.len() as u64;
        }
        Ok(())
    }

    fn flush_verify(&mut self, w: &mut dyn Sink) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let count = self.count;
        self.write_frame(w, FRAME_VERIFY, count)?;
        self.verify.1 += 1;
        Ok(())
    }

    /// Writes the pending verify records and the verify end frame, flushes `w`, and returns
    /// (pages checksummed, verify frames before the end).
    pub fn finish_verify(&mut self, w: &mut dyn Sink) -> io::Result<(u64, u64)> {
        self.flush_verify(w)?;
        let (pages, frames) = self.verify;
        self.buf.extend_from_slice(&pages.to_le_bytes());
        self.buf.extend_from_slice(&frames.to_le_bytes());
        self.write_frame(w, FRAME_VERIFY_END, 0)?;
        w.flush_frames()?;
        Ok((pages, frames))
    }
}

/// One record of a batch, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A page's contents.
    Data {
        /// The page.
        pfn: u64,
        /// Its 4096 bytes.
        bytes: &'a [u8],
    },
    /// Pages `[first, first + count)` are zero.
    Zero {
        /// First page.
        first: u64,
        /// Number of pages (≥ 1).
        count: u64,
    },
}

/// The records of one batch, already validated.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    payload: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The records in stream order.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let p = self.payload;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= p.len() {
                return None;
            }
            let head = le64(p, at);
            let pfn = head & PFN_MASK;
            // The reader checked every record before handing the batch out.
            if (head >> 56) as u8 == KIND_DATA {
                let bytes = &p[at + 8..at + DATA_RECORD_LEN];
                at += DATA_RECORD_LEN;
                Some(Record::Data { pfn, bytes })
            } else {
                let count = le64(p, at + 8);
                at += ZERO_RECORD_LEN;
                Some(Record::Zero { first: pfn, count })
            }
        })
    }
}

/// Checksums of consecutive pages, from a verify frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyRun<'a> {
    /// First page.
    pub first: u64,
    sums: &'a [u8],
}

impl VerifyRun<'_> {
    /// Number of pages.
    pub fn len(&self) -> u64 {
        (self.sums.len() / 8) as u64
    }

    /// Whether the run is empty (never, in a validated frame).
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// (page, checksum) for each page of the run.
    pub fn pages(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.first;
        self.sums
            .chunks_exact(8)
            .enumerate()
            .map(move |(i, c)| (first + i as u64, le64(c, 0)))
    }
}

/// The records of one verify frame, already validated.
#[derive(Clone, Debug)]
pub struct VerifyBatch<'a> {
    payload: &'a [u8],
}

impl<'a> VerifyBatch<'a> {
    /// The runs in stream order.
    pub fn runs(&self) -> impl Iterator<Item = VerifyRun<'a>> + 'a {
        let p = self.payload;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= p.len() {
                return None;
            }
            let first = le64(p, at);
            let n = le64(p, at + 8) as usize;
            let sums = &p[at + VERIFY_HEAD_LEN..at + VERIFY_HEAD_LEN + 8 * n];
            at += VERIFY_HEAD_LEN + 8 * n;
            Some(VerifyRun { first, sums })
        })
    }
}

/// One frame as the reader hands it out.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A batch of page records.
    Batch(Batch<'a>),
    /// The start of round `n`.
    Round(u32),
    /// The end of the stream, with its (verified) totals.
    End(Totals),
    /// Checksums of used pages (verify trailer).
    Verify(VerifyBatch<'a>),
    /// The end of the verify trailer: pages checksummed (checked against the records).
    VerifyEnd(u64),
}

/// Reads and validates a migration stream frame by frame.
#[derive(Debug)]
pub struct StreamReader {
    header: Header,
    buf: Vec<u8>,
    received: Totals,
    timeout: Duration,
    ended: bool,
    /// Verify trailer: pages and frames received, and whether its end frame came.
    verify: (u64, u64, bool),
}

impl StreamReader {
    /// Reads and validates the header. `timeout` is only used to label timeout errors.
    pub fn start(r: &mut dyn Read, timeout: Duration) -> Result<StreamReader, MigrationError> {
        let mut b = [0u8; HEADER_LEN];
        let got = read_full(r, &mut b).map_err(|e| map_io_error("read header", timeout, e))?;
        let header = Header::decode(&b[..got])?;
        Ok(StreamReader {
            header,
            buf: Vec::new(),
            received: Totals {
                bytes: HEADER_LEN as u64,
                ..Totals::default()
            },
            timeout,
            ended: false,
            verify: (0, 0, false),
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Totals received so far.
    pub fn received(&self) -> Totals {
        self.received
    }

    fn fill(
        &mut self,
        r: &mut dyn Read,
        len: usize,
        what: &'static str,
    ) -> Result<(), MigrationError> {
        // Grow only: zeroing a megabyte per frame would cost more than the CRC.
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let got =
            read_full(r, &mut self.buf[..len]).map_err(|e| map_io_error(what, self.timeout, e))?;
        if got < len {
            return Err(StreamError::Truncated {
                what,
                needed: len,
                got,
            }
            .into());
        }
        Ok(())
    }

    /// Reads the next frame, checking its CRC and (for batches) every record.
    pub fn next_frame(&mut self, r: &mut dyn Read) -> Result<Frame<'_>, MigrationError> {
        let frame = self.received.frames;
        self.fill(r, FRAME_HEADER_LEN, "frame header")?;
        let kind = self.buf[0];
        let count = le32(&self.buf, 4);
        let len = le32(&self.buf, 8);
        let stored = le32(&self.buf, 12);
        let trailer = self.ended && self.header.flags & FLAG_VERIFY != 0 && !self.verify.2;
        let (min, max) = match kind {
            FRAME_BATCH if !self.ended => (ZERO_RECORD_LEN as u32, MAX_BATCH_PAYLOAD),
            FRAME_ROUND if !self.ended => (ROUND_LEN, ROUND_LEN),
            FRAME_END if !self.ended => (END_LEN, END_LEN),
            FRAME_VERIFY if trailer => (VERIFY_HEAD_LEN as u32 + 8, MAX_BATCH_PAYLOAD),
            FRAME_VERIFY_END if trailer => (VERIFY_END_LEN, VERIFY_END_LEN),
            _ => return Err(StreamError::UnknownFrame { kind, frame }.into()),
        };
        if self.buf[1..4] != [0, 0, 0] {
            return Err(StreamError::ReservedNotZero { frame }.into());
        }
        if len < min || len > max {
            return Err(StreamError::BadFrameLength {
                frame,
                len,
                min,
                max,
            }
            .into());
        }
        let head_crc = crc32c(&self.buf[..12]);
        self.fill(r, len as usize, "frame payload")?;
        let payload = &self.buf[..len as usize];
        let computed = crc32c_append(head_crc, payload);
        if stored != computed {
            return Err(StreamError::ChecksumMismatch {
                what: "frame",
                frame,
                stored,
                computed,
            }
            .into());
        }
        let before = self.received;
        self.received.bytes += (FRAME_HEADER_LEN + len as usize) as u64;
        self.received.frames += 1;
        self.received.chain_crc = crc32c_append(self.received.chain_crc, &stored.to_le_bytes());
        match kind {
            FRAME_BATCH => {
                let (data, zero) = validate_batch(payload, count, frame, self.header.pages())?;
                self.received.data_pages += data;
                self.received.zero_pages += zero;
                Ok(Frame::Batch(Batch { payload }))
            }
            FRAME_ROUND => {
                let round = le32(payload, 0);
                let expected = before.rounds + 1;
                if round != expected || le32(payload, 4) != 0 {
                    return Err(StreamError::RoundOutOfOrder {
                        found: round,
                        expected,
                    }
                    .into());
                }
                self.received.rounds = round;
                Ok(Frame::Round(round))
            }
            FRAME_END => {
                let b = payload;
                let stored = Totals {
                    data_pages: le64(b, 0),
                    zero_pages: le64(b, 8),
                    frames: le64(b, 16),
                    bytes: le64(b, 24),
                    rounds: le32(b, 32),
                    chain_crc: le32(b, 36),
                };
                check_totals(&stored, &before)?;
                self.ended = true;
                Ok(Frame::End(stored))
            }
            FRAME_VERIFY => {
                let pages = validate_verify(payload, count, frame, self.header.pages())?;
                self.verify.0 += pages;
                self.verify.1 += 1;
                Ok(Frame::Verify(VerifyBatch { payload }))
            }
            _ => {
                let (pages, frames) = (le64(payload, 0), le64(payload, 8));
                for (field, stored, received) in [
                    ("verified pages", pages, self.verify.0),
                    ("verify frames", frames, self.verify.1),
                ] {
                    if stored != received {
                        return Err(StreamError::TotalsMismatch {
                            field,
                            stored,
                            received,
                        }
                        .into());
                    }
                }
                self.verify.2 = true;
                Ok(Frame::VerifyEnd(pages))
            }
        }
    }

    /// Checks that nothing follows the end frame (reads one byte; EOF expected).
    pub fn expect_eof(&mut self, r: &mut dyn Read) -> Result<(), MigrationError> {
        let mut b = [0u8; 1];
        match read_full(r, &mut b).map_err(|e| map_io_error("read after end", self.timeout, e))? {
            0 => Ok(()),
            _ => Err(StreamError::TrailingBytes.into()),
        }
    }
}

/// Walks a verify payload once, checking record lengths, counts and page bounds; returns the
/// pages it covers.
fn validate_verify(
    p: &[u8],
    declared: u32,
    frame: u64,
    guest_pages: u64,
) -> Result<u64, StreamError> {
    let (mut at, mut found, mut pages) = (0usize, 0u32, 0u64);
    while at < p.len() {
        let left = p.len() - at;
        if left < VERIFY_HEAD_LEN {
            return Err(StreamError::Truncated {
                what: "verify record",
                needed: VERIFY_HEAD_LEN,
                got: left,
            });
        }
        let (first, n) = (le64(p, at), le64(p, at + 8));
        if n == 0 {
            return Err(StreamError::EmptyVerifyRun { pfn: first });
        }
        // `n` is at most `left / 8` here, so the multiplication cannot overflow.
        if n > ((left - VERIFY_HEAD_LEN) / 8) as u64 {
            return Err(StreamError::Truncated {
                what: "verify record",
                needed: VERIFY_HEAD_LEN.saturating_add((n as usize).saturating_mul(8)),
                got: left,
            });
        }
        if first.checked_add(n).is_none_or(|end| end > guest_pages) {
            return Err(StreamError::PfnOutOfRange {
                pfn: first,
                count: n,
                guest_pages,
            });
        }
        at += VERIFY_HEAD_LEN + 8 * n as usize;
        pages += n;
        found += 1;
    }
    if found != declared {
        return Err(StreamError::RecordCountMismatch {
            frame,
            declared,
            found,
        });
    }
    Ok(pages)
}

fn check_totals(stored: &Totals, got: &Totals) -> Result<(), StreamError> {
    let fields = [
        ("data pages", stored.data_pages, got.data_pages),
        ("zero pages", stored.zero_pages, got.zero_pages),
        ("frames", stored.frames, got.frames),
        ("bytes", stored.bytes, got.bytes),
        ("rounds", u64::from(stored.rounds), u64::from(got.rounds)),
    ];
    for (field, s, r) in fields {
        if s != r {
            return Err(StreamError::TotalsMismatch {
                field,
                stored: s,
                received: r,
            });
        }
    }
    if stored.chain_crc != got.chain_crc {
        return Err(StreamError::ChecksumMismatch {
            what: "stream chain",
            frame: got.frames,
            stored: stored.chain_crc,
            computed: got.chain_crc,
        });
    }
    Ok(())
}

/// Walks a batch payload once, checking kinds, lengths, counts and page bounds.
///
/// Returns (data pages, zero pages). Everything here comes from the wire: nothing is trusted.
fn validate_batch(
    p: &[u8],
    declared: u32,
    frame: u64,
    guest_pages: u64,
) -> Result<(u64, u64), StreamError> {
    if declared > MAX_BATCH_RECORDS {
        return Err(StreamError::RecordCountMismatch {
            frame,
            declared,
            found: 0,
        });
    }
    let (mut at, mut found, mut data, mut zero) = (0usize, 0u32, 0u64, 0u64);
    while at < p.len() {
        let trunc = |needed| StreamError::Truncated {
            what: "batch record",
            needed,
            got: p.len() - at,
        };
        if p.len() - at < 8 {
            return Err(trunc(8));
        }
        let head = le64(p, at);
        let pfn = head & PFN_MASK;
        let kind = (head >> 56) as u8;
        let count = match kind {
            KIND_DATA => {
                if p.len() - at < DATA_RECORD_LEN {
                    return Err(trunc(DATA_RECORD_LEN));
                }
                at += DATA_RECORD_LEN;
                data += 1;
                1
            }
            KIND_ZERO => {
                if p.len() - at < ZERO_RECORD_LEN {
                    return Err(trunc(ZERO_RECORD_LEN));
                }
                let count = le64(p, at + 8);
                if count == 0 {
                    return Err(StreamError::EmptyZeroRun { pfn });
                }
                at += ZERO_RECORD_LEN;
                zero += count;
                count
            }
            _ => {
                return Err(StreamError::BadRecordKind {
                    kind,
                    frame,
                    offset: at,
                })
            }
        };
        if pfn.checked_add(count).is_none_or(|end| end > guest_pages) {
            return Err(StreamError::PfnOutOfRange {
                pfn,
                count,
                guest_pages,
            });
        }
        found += 1;
    }
    if found != declared {
        return Err(StreamError::RecordCountMismatch {
            frame,
            declared,
            found,
        });
    }
    Ok((data, zero))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> [u8; PAGE] {
        [b; PAGE]
    }

    fn sample() -> Vec<u8> {
        let h = Header {
            guest_size: 64 * PAGE_SIZE,
            flags: FLAG_HINTED,
        };
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&h);
        w.write_header(&mut out, &h).unwrap();
        w.round(&mut out, 1).unwrap();
        w.data(&mut out, 3, &page(0xaa)).unwrap();
        w.zero_run(&mut out, 4, 60).unwrap();
        w.round(&mut out, 2).unwrap();
        w.data(&mut out, 63, &page(1)).unwrap();
        let t = w.finish(&mut out).unwrap();
        assert_eq!(t.bytes + (FRAME_HEADER_LEN as u64 + 40), out.len() as u64);
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Vec<String>, MigrationError> {
        let r: &mut dyn Read = &mut bytes;
        let mut s = StreamReader::start(r, Duration::from_secs(1))?;
        let mut log = Vec::new();
        loop {
            match s.next_frame(r)? {
                Frame::Batch(b) => {
                    for rec in b.records() {
                        log.push(match rec {
                            Record::Data { pfn, bytes } => format!("d{pfn}:{}", bytes[0]),
                            Record::Zero { first, count } => format!("z{first}+{count}"),
                        })
                    }
                }
                Frame::Round(n) => log.push(format!("r{n}")),
                Frame::End(t) => {
                    log.push(format!("end{}", t.data_pages));
                    if s.header().flags & FLAG_VERIFY == 0 {
                        s.expect_eof(r)?;
                        return Ok(log);
                    }
                }
                Frame::Verify(b) => {
                    for run in b.runs() {
                        for (pfn, sum) in run.pages() {
                            log.push(format!("v{pfn}:{sum}"));
                        }
                    }
                }
                Frame::VerifyEnd(n) => {
                    log.push(format!("vend{n}"));
                    s.expect_eof(r)?;
                    return Ok(log);
                }
            }
        }
    }

    #[test]
    fn test_round_trip() {
        assert_eq!(
            decode(&sample()).unwrap(),
            ["r1", "d3:170", "z4+60", "r2", "d63:1", "end2"]
        );
    }

    fn stream_err(bytes: &[u8]) -> StreamError {
        match decode(bytes) {
            Err(MigrationError::Stream(e)) => e,
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    #[test]
    fn test_decoder_rejects_bad_input() {
        let good = sample();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(stream_err(&b), StreamError::BadMagic { .. }));
        let mut b = good.clone();
        b[8] = 2;
        assert!(matches!(
            stream_err(&b),
            StreamError::UnsupportedVersion { found: 2, .. }
        ));
        // A page size of 8192 with a recomputed header CRC.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&8192u32.to_le_bytes());
        let crc = crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            stream_err(&b),
            StreamError::BadPageSize { found: 8192, .. }
        ));
        // One flipped bit in the first data page.
        let mut b = good.clone();
        b[HEADER_LEN + 24 + FRAME_HEADER_LEN + 100] ^= 4;
        assert!(matches!(
            stream_err(&b),
            StreamError::ChecksumMismatch {
                what: "frame",
                frame: 1,
                ..
            }
        ));
        // Cut short anywhere: always a truncation, never a panic.
        for cut in [
            0,
            10,
            HEADER_LEN,
            HEADER_LEN + 5,
            HEADER_LEN + 30,
            good.len() - 1,
        ] {
            assert!(
                matches!(stream_err(&good[..cut]), StreamError::Truncated { .. }),
                "cut at {cut}"
            );
        }
        // Trailing garbage.
        let mut b = good.clone();
        b.push(0);
        assert_eq!(stream_err(&b), StreamError::TrailingBytes);
    }

    #[test]
    fn test_decoder_rejects_pfn_outside_guest() {
        let h = Header {
            guest_size: 64 * PAGE_SIZE,
            flags: 0,
        };
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&h);
        w.write_header(&mut out, &h).unwrap();
        w.round(&mut out, 1).unwrap();
        w.zero_run(&mut out, 60, 5).unwrap();
        w.finish(&mut out).unwrap();
        assert_eq!(
            stream_err(&out),
            StreamError::PfnOutOfRange {
                pfn: 60,
                count: 5,
                guest_pages: 64
            }
        );
    }

    fn with_trailer(flags: u64, sums: &[(u64, Vec<u64>)], forge: Option<(u64, u64)>) -> Vec<u8> {
        let h = Header {
            guest_size: 64 * PAGE_SIZE,
            flags,
        };
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&h);
        w.write_header(&mut out, &h).unwrap();
        w.round(&mut out, 1).unwrap();
        w.zero_run(&mut out, 0, 64).unwrap();
        w.finish(&mut out).unwrap();
        for (first, s) in sums {
            w.verify_pages(&mut out, *first, s).unwrap();
        }
        if let Some(v) = forge {
            w.verify = v;
        }
        w.finish_verify(&mut out).unwrap();
        out
    }

    #[test]
    fn test_verify_trailer_round_trip_and_rejections() {
        let sums = [(3, vec![7, 8]), (60, vec![9; 4])];
        let good = with_trailer(FLAG_VERIFY, &sums, None);
        assert_eq!(
            decode(&good).unwrap(),
            ["r1", "z0+64", "end0", "v3:7", "v4:8", "v60:9", "v61:9", "v62:9", "v63:9", "vend6"]
        );
        // Without the flag nothing may follow the end frame.
        let e = stream_err(&with_trailer(0, &sums, None));
        assert_eq!(e, StreamError::TrailingBytes);
        // Pages past the guest, and an end frame that miscounts.
        let e = stream_err(&with_trailer(FLAG_VERIFY, &[(62, vec![1; 3])], None));
        assert!(
            matches!(
                e,
                StreamError::PfnOutOfRange {
                    pfn: 62,
                    count: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = stream_err(&with_trailer(FLAG_VERIFY, &sums, Some((5, 1))));
        assert!(matches!(e, StreamError::TotalsMismatch { .. }), "{e:?}");
        // Long runs are cut into records that fit a batch.
        let long = vec![(0, (0..64).collect::<Vec<u64>>())];
        assert_eq!(
            decode(&with_trailer(FLAG_VERIFY, &long, None))
                .unwrap()
                .len(),
            68
        );
    }

    #[test]
    fn test_dropped_frame_is_caught_by_the_totals() {
        let good = sample();
        // Remove the second round marker (frame 2) entirely; each frame is still intact.
        let start = HEADER_LEN + 24 + FRAME_HEADER_LEN + DATA_RECORD_LEN + ZERO_RECORD_LEN;
        let mut b = good[..start].to_vec();
        b.extend_from_slice(&good[start + 24..]);
        let e = stream_err(&b);
        assert!(matches!(e, StreamError::TotalsMismatch { .. }), "{e:?}");
    }
}
