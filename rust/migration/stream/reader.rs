//! The reader side of the stream: every number from the wire is checked before use.

use std::io::Read;
use std::time::Duration;

use super::*;

/// Reads and validates a migration stream frame by frame.
#[derive(Debug)]
pub struct StreamReader {
    header: Header,
    buf: Vec<u8>,
    received: Totals,
    timeout: Duration,
    ended: bool,
    /// Verify trailer received so far.
    verify: VerifyTotals,
    /// Whether the verify end frame came.
    verify_ended: bool,
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
            verify: VerifyTotals::default(),
            verify_ended: false,
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
        let trailer = self.ended && self.header.flags & FLAG_VERIFY != 0 && !self.verify_ended;
        // Pages before the end frame, checksums after it (with the flag), nothing else.
        let Some(ty) = FrameType::from_u8(kind).filter(|t| match t {
            FrameType::Batch | FrameType::Round | FrameType::End => !self.ended,
            FrameType::Verify | FrameType::VerifyEnd => trailer,
        }) else {
            return Err(StreamError::UnknownFrame { kind, frame }.into());
        };
        let (min, max) = ty.payload_bounds();
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
        // Bytes and frames are counted as they arrive: they cannot outgrow a u64.
        self.received.bytes += (FRAME_HEADER_LEN + len as usize) as u64;
        self.received.frames += 1;
        self.received.chain_crc = crc32c_append(self.received.chain_crc, &stored.to_le_bytes());
        match ty {
            FrameType::Batch => {
                let (data, zero) = validate_batch(payload, count, frame, self.header.pages())?;
                let over = |field| StreamError::CountOverflow { field, frame };
                self.received.data_pages = before
                    .data_pages
                    .checked_add(data)
                    .ok_or(over("data pages"))?;
                self.received.zero_pages = before
                    .zero_pages
                    .checked_add(zero)
                    .ok_or(over("zero pages"))?;
                Ok(Frame::Batch(Batch { payload }))
            }
            FrameType::Round => {
                let round = le32(payload, 0);
                let expected = before
                    .rounds
                    .checked_add(1)
                    .ok_or(StreamError::CountOverflow {
                        field: "rounds",
                        frame,
                    })?;
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
            FrameType::End => {
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
            FrameType::Verify => {
                let pages = validate_verify(payload, count, frame, self.header.pages())?;
                // At most a frame's bytes / 8 pages per frame, counted as frames arrive.
                self.verify.pages = self.verify.pages.saturating_add(pages);
                self.verify.frames += 1;
                Ok(Frame::Verify(VerifyBatch { payload }))
            }
            FrameType::VerifyEnd => {
                let (pages, frames) = (le64(payload, 0), le64(payload, 8));
                for (field, stored, received) in [
                    ("verified pages", pages, self.verify.pages),
                    ("verify frames", frames, self.verify.frames),
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
                self.verify_ended = true;
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
        // A count the payload cannot hold is a truncated record (and `8 * n` cannot overflow).
        let Some(sums) = usize::try_from(n)
            .ok()
            .filter(|&n| n <= (left - VERIFY_HEAD_LEN) / 8)
        else {
            return Err(StreamError::Truncated {
                what: "verify record",
                needed: usize::try_from(n).map_or(usize::MAX, |n| {
                    VERIFY_HEAD_LEN.saturating_add(n.saturating_mul(8))
                }),
                got: left,
            });
        };
        if first.checked_add(n).is_none_or(|end| end > guest_pages) {
            return Err(StreamError::PfnOutOfRange {
                pfn: first,
                count: n,
                guest_pages,
            });
        }
        at += VERIFY_HEAD_LEN + 8 * sums;
        pages += n;
        found += 1;
    }
    check_count(frame, declared, found)?;
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
                // Each run is inside the guest (< 2^52 pages), but 65536 of them can overflow.
                zero = zero.checked_add(count).ok_or(StreamError::CountOverflow {
                    field: "zero pages",
                    frame,
                })?;
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
    check_count(frame, declared, found)?;
    Ok((data, zero))
}

/// The records a frame's header declares must be the records its payload holds.
fn check_count(frame: u64, declared: u32, found: u32) -> Result<(), StreamError> {
    if found != declared {
        return Err(StreamError::RecordCountMismatch {
            frame,
            declared,
            found,
        });
    }
    Ok(())
}
