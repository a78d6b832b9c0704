//! One inflate or deflate batch: pop the buffers a kick made available, decode each into runs,
//! coalesce them and apply them, in host memory bounded independently of guest and queue size.
//!
//! Decoded runs go into a run buffer of at most [`BATCH_RUNS`] entries. When it fills, it is
//! merged; if merging left it more than half full, it is applied (discarded or deflated) and
//! emptied, so a guest naming millions of one-page runs (alternating-bit bitmaps in every
//! buffer) costs the host one run buffer, not gigabytes. A batch of long runs never fills it and
//! is coalesced across all its buffers, as before.

use std::time::{Duration, Instant};

use super::{BalloonDevice, QueueRole, QueueRun};
use crate::device::counters::{add, SharedCounters};
use crate::device::error::BalloonError;
use crate::memory::{GuestMemory, PageRange};
use crate::pages::{decode, Encoding, PageSink};
use crate::transport::wire::max_message_len;
use crate::virtq::DescriptorChain;

/// Most runs one batch holds before applying them: 64 Ki runs, 1 MiB of host memory.
pub const BATCH_RUNS: usize = 1 << 16;

/// Where one message's runs go: the device's run buffer, applied whenever it fills.
struct ChunkSink<'a> {
    dev: &'a mut BalloonDevice,
    runs: &'a mut Vec<PageRange>,
    role: QueueRole,
    /// Pages moved in or out of the balloon by the chunks applied so far.
    pages: u64,
    /// Time spent applying (so the batch's decode time can leave it out).
    applying: Duration,
}

impl ChunkSink<'_> {
    /// Merges the buffer and applies it if it is still more than half full.
    fn make_room(&mut self) {
        super::merge_runs(self.runs);
        if self.runs.len() > BATCH_RUNS / 2 {
            self.apply();
        }
    }

    /// Applies and empties the run buffer.
    fn apply(&mut self) {
        let t0 = Instant::now();
        super::merge_runs(self.runs);
        self.pages += match self.role {
            QueueRole::Inflate => self.dev.inflate(&self.runs[..]),
            _ => self.dev.deflate(&self.runs[..]),
        };
        self.runs.clear();
        self.applying += t0.elapsed();
    }
}

impl PageSink for ChunkSink<'_> {
    fn run(&mut self, start: u64, len: u64) {
        if self.runs.len() >= BATCH_RUNS {
            self.make_room();
        }
        self.runs.push(PageRange::new(start, len));
    }
}

impl BalloonDevice {
    /// Inflate or deflate: pop every buffer, decode each, coalesce the runs of the batch (in
    /// chunks of at most [`BATCH_RUNS`]), apply them, then return every buffer and interrupt
    /// once.
    pub(super) fn process_pages(
        &mut self,
        index: u16,
        role: QueueRole,
    ) -> Result<QueueRun, BalloonError> {
        let qname = role.name();
        let enc = self.encoding;
        let max_len = max_message_len(enc);
        let max_pfn = self.mem.pages();
        let broken = |source| BalloonError::Queue {
            queue: qname,
            source,
        };
        let mut run = QueueRun::default();
        self.heads.clear();
        let mut chain = std::mem::take(&mut self.chain);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        // Never keep more than one run buffer between batches.
        runs.shrink_to(BATCH_RUNS);
        let mut applied = (0u64, Duration::ZERO);
        let t0 = Instant::now();
        let popped = loop {
            match self.pop_bounded(index, self.heads.len() as u64, &mut chain) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(broken(e)),
            }
            run.buffers += 1;
            self.heads.push(chain.head());
            let read = Self::read_message(
                &self.mem,
                &chain,
                qname,
                enc,
                max_len,
                &mut scratch,
                &self.counters,
            );
            let mut sink = ChunkSink {
                dev: self,
                runs: &mut runs,
                role,
                pages: 0,
                applying: Duration::ZERO,
            };
            // The decoder checks the whole message before the sink sees a page, so a bad
            // message adds nothing and a chunk is only ever applied from valid messages.
            let decoded = read.and_then(|()| {
                decode(enc, &[scratch.as_slice()], max_pfn, &mut sink).map_err(|source| {
                    BalloonError::Decode {
                        queue: qname,
                        encoding: enc.name(),
                        source,
                    }
                })
            });
            applied.0 += sink.pages;
            applied.1 += sink.applying;
            if let Err(e) = decoded {
                run.bad_buffers += 1;
                self.log(e);
            }
        };
        let decode_time = t0.elapsed().saturating_sub(applied.1);
        add(&self.counters.decode_ns, decode_time.as_nanos() as u64);
        self.chain = chain;
        self.scratch = scratch;
        // Apply what decoded even if the ring broke after it: those buffers were valid.
        let mut sink = ChunkSink {
            dev: self,
            runs: &mut runs,
            role,
            pages: applied.0,
            applying: Duration::ZERO,
        };
        if !sink.runs.is_empty() {
            sink.apply();
        }
        run.pages = sink.pages;
        self.runs = runs;
        let c = &self.counters;
        add(&c.buffers, run.buffers);
        add(&c.bad_buffers, run.bad_buffers);
        let per_role = if role == QueueRole::Inflate {
            &c.inflate_buffers
        } else {
            &c.deflate_buffers
        };
        add(per_role, run.buffers);
        popped?;
        // Every buffer goes back, good or bad (len 0: the device wrote nothing).
        for i in 0..self.heads.len() {
            let head = self.heads[i];
            self.queue(index).add_used(head, 0).map_err(broken)?;
        }
        if run.buffers > 0 {
            run.interrupted = self.queue(index).signal_used().map_err(broken)?;
            if run.interrupted {
                add(&self.counters.interrupts, 1);
            }
        }
        Ok(run)
    }

    /// Copies one inflate/deflate chain's message into `scratch` after checking its shape.
    fn read_message(
        mem: &GuestMemory,
        chain: &DescriptorChain,
        queue: &'static str,
        enc: Encoding,
        max_len: usize,
        scratch: &mut Vec<u8>,
        counters: &SharedCounters,
    ) -> Result<(), BalloonError> {
        // §5.5.6: the driver's inflate and deflate requests are device-readable only. A
        // writable buffer is refused like any other bad message (the ring itself is fine).
        if let Some(s) = chain.writable().first() {
            return Err(BalloonError::WritableSegment {
                queue,
                addr: s.addr.raw(),
                len: s.len,
            });
        }
        let len = chain.readable_len();
        if len > max_len as u64 {
            return Err(BalloonError::MessageTooLong {
                queue,
                encoding: enc.name(),
                len,
                max: max_len,
            });
        }
        scratch.clear();
        // Copy first, then validate the copy: the guest cannot change a message under us.
        chain
            .read_into(mem, scratch)
            .map_err(|source| BalloonError::Queue { queue, source })?;
        add(&counters.bytes, len);
        Ok(())
    }
}
