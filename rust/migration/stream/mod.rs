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
//!   [`hash64`](crate::util::hash64) of its 4096 bytes.
//! - **Verify end** (type 5, `len` = 16, last frame): u64 pages checksummed, u64 verify frames
//!   before this one.
//!
//! Frames of type 4 and 5 are invalid before the end frame or without the flag.
//!
//! ## Replies (destination to source, 16 bytes each)
//! u32 magic `"VBRP"` ([`REPLY_MAGIC`]), u32 code ([`ReplyCode`]), u64 detail. The destination
//! answers the header with ACCEPT (1, detail 0) or a rejection, the end frame with DONE (2;
//! detail: data pages applied) or a rejection, and a verify end frame with VERIFIED (3; detail:
//! pages whose checksum differs); on any error it sends a rejection if it still can (codes
//! 16-21, [`RejectReason`]). With a key, all of this travels inside the authenticated records of
//! [`AuthChannel`](super::AuthChannel).

use std::io::{self, Read, Write};
use std::time::Duration;

use super::crc::{crc32c, crc32c_append};
use super::error::{MigrationError, RejectReason, StreamError};
use super::transport::map_io_error;
use super::{PAGE, PAGE_U32};
use crate::memory::{PageRange, Pfn, PAGE_SIZE};

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

/// Bytes of a verify record's head (first pfn, page count).
const VERIFY_HEAD_LEN: usize = 16;
/// Most checksums one verify record carries.
const VERIFY_MAX_RUN: usize = (TARGET_BATCH_PAYLOAD - VERIFY_HEAD_LEN) / 8;
/// Record kinds, the top byte of a record's first u64: a page's contents, a zero run.
const KIND_DATA: u8 = 1;
const KIND_ZERO: u8 = 2;
/// The low 56 bits of a record's first u64: its page frame number.
const PFN_MASK: u64 = (1 << 56) - 1;
/// Bytes of one data record.
pub const DATA_RECORD_LEN: usize = 8 + PAGE;
/// Bytes of one zero-run record.
pub const ZERO_RECORD_LEN: usize = 16;

/// The type byte of a frame (offset 0 of its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum FrameType {
    /// Page records.
    Batch = 1,
    /// The start of a round.
    Round = 2,
    /// The end of the pages, with the stream's totals.
    End = 3,
    /// Checksums of used pages (verify trailer).
    Verify = 4,
    /// The end of the verify trailer, with its totals.
    VerifyEnd = 5,
}

impl FrameType {
    fn from_u8(kind: u8) -> Option<FrameType> {
        [
            Self::Batch,
            Self::Round,
            Self::End,
            Self::Verify,
            Self::VerifyEnd,
        ]
        .into_iter()
        .find(|t| *t as u8 == kind)
    }

    /// The smallest and largest payload a frame of this type may have.
    fn payload_bounds(self) -> (u32, u32) {
        match self {
            // One zero-run record at least.
            Self::Batch => (16, MAX_BATCH_PAYLOAD),
            Self::Round => (8, 8),
            Self::End => (40, 40),
            // One record of one checksum at least.
            Self::Verify => (24, MAX_BATCH_PAYLOAD),
            Self::VerifyEnd => (16, 16),
        }
    }
}

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
        b[12..16].copy_from_slice(&PAGE_U32.to_le_bytes());
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
                expected: PAGE_U32,
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

/// Totals carried by the verify end frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyTotals {
    /// Pages checksummed.
    pub pages: u64,
    /// Verify frames before the verify end frame.
    pub frames: u64,
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
            ReplyCode::Reject(RejectReason::Unauthenticated) => 20,
            ReplyCode::Reject(RejectReason::SizeMismatch) => 21,
            ReplyCode::Reject(RejectReason::Unknown(c)) => c,
        }
    }

    /// The code for its number on the wire.
    pub fn from_u32(c: u32) -> ReplyCode {
        match c {
            1 => ReplyCode::Accept,
            2 => ReplyCode::Done,
            3 => ReplyCode::Verified,
            16 => ReplyCode::Reject(RejectReason::TooLarge),
            17 => ReplyCode::Reject(RejectReason::BadStream),
            18 => ReplyCode::Reject(RejectReason::Full),
            19 => ReplyCode::Reject(RejectReason::Failed),
            20 => ReplyCode::Reject(RejectReason::Unauthenticated),
            21 => ReplyCode::Reject(RejectReason::SizeMismatch),
            c => ReplyCode::Reject(RejectReason::Unknown(c)),
        }
    }
}

/// The 16-byte header of a frame of type `kind` carrying `payload` (`count` records), CRC
/// included; an error if the payload does not fit the u32 length field.
pub(crate) fn frame_header(
    kind: u8,
    count: u32,
    payload: &[u8],
) -> io::Result<[u8; FRAME_HEADER_LEN]> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other(format!("frame payload of {} bytes", payload.len())))?;
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = kind;
    h[4..8].copy_from_slice(&count.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c_append(crc32c(&h[..12]), payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
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

mod reader;
mod records;
mod writer;

pub use reader::StreamReader;
pub use records::{Batch, Frame, Record, VerifyBatch, VerifyRun};
pub use writer::StreamWriter;

#[cfg(test)]
mod tests;
