//! The writer side of the stream: what the source sends.

use std::io;

use super::*;

/// Writes a migration stream: header, then batches of page records, round markers, end frame.
///
/// Records are gathered into a batch buffer that is written out (one `write_all`) when full.
#[derive(Debug)]
pub struct StreamWriter {
    buf: Vec<u8>,
    count: u32,
    totals: Totals,
    guest_pages: u64,
    /// Verify trailer written so far.
    pub(super) verify: VerifyTotals,
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
            verify: VerifyTotals::default(),
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

    /// Appends a zero run for the pages `run` (nothing if it is empty).
    pub fn zero_run(&mut self, w: &mut dyn Sink, run: PageRange) -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        self.make_room(w, ZERO_RECORD_LEN)?;
        let head = (u64::from(KIND_ZERO) << 56) | (run.start & PFN_MASK);
        self.buf.extend_from_slice(&head.to_le_bytes());
        self.buf.extend_from_slice(&run.len.to_le_bytes());
        self.count += 1;
        self.totals.zero_pages = self.totals.zero_pages.wrapping_add(run.len);
        Ok(())
    }

    fn write_frame(&mut self, w: &mut dyn Sink, ty: FrameType, count: u32) -> io::Result<()> {
        let head = frame_header(ty as u8, count, &self.buf[FRAME_HEADER_LEN..])?;
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&head);
        let len = self.buf.len() as u64;
        w.send_frame(&mut self.buf)?;
        self.totals.bytes += len;
        self.totals.frames += 1;
        self.totals.chain_crc = crc32c_append(self.totals.chain_crc, &head[12..16]);
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
        self.write_frame(w, FrameType::Batch, count)
    }

    /// Writes the pending batch, then a round marker for `round`.
    pub fn round(&mut self, w: &mut dyn Sink, round: u32) -> io::Result<()> {
        self.flush_batch(w)?;
        self.buf.extend_from_slice(&round.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.totals.rounds = round;
        self.write_frame(w, FrameType::Round, 0)
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
        self.write_frame(w, FrameType::End, 0)?;
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
            self.verify.pages += part.len() as u64;
            at += part.len() as u64;
        }
        Ok(())
    }

    fn flush_verify(&mut self, w: &mut dyn Sink) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let count = self.count;
        self.write_frame(w, FrameType::Verify, count)?;
        self.verify.frames += 1;
        Ok(())
    }

    /// Writes the pending verify records and the verify end frame, flushes `w`, and returns
    /// the totals the end frame carries.
    pub fn finish_verify(&mut self, w: &mut dyn Sink) -> io::Result<VerifyTotals> {
        self.flush_verify(w)?;
        let t = self.verify;
        self.buf.extend_from_slice(&t.pages.to_le_bytes());
        self.buf.extend_from_slice(&t.frames.to_le_bytes());
        self.write_frame(w, FrameType::VerifyEnd, 0)?;
        w.flush_frames()?;
        Ok(t)
    }
}
