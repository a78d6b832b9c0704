//! The inflate and deflate queues' handler (virtio 1.2 §5.5.6.1): decode each buffer into runs,
//! coalesce them across the buffers of a batch, and hand them to the device to apply, in host
//! memory bounded independently of guest and queue size.
//!
//! Decoded runs go into a run buffer of at most [`BATCH_RUNS`] entries. When it fills, it is
//! merged; if merging left it more than half full, it is applied (discarded or deflated) and
//! emptied, so a guest naming millions of one-page runs (alternating-bit bitmaps in every
//! buffer) costs the host one run buffer, not gigabytes. A batch of long runs never fills it and
//! is coalesced across all its buffers.

use std::time::{Duration, Instant};

use super::handler::{read_chain, refuse_writable, Cx, Effects, Finish, QueueHandler, Step};
use super::runs::merge_runs;
use crate::abi::max_message_len;
use crate::device::counters::{add, nanos};
use crate::device::error::BalloonError;
use crate::device::role::QueueRole;
use crate::memory::PageRange;
use crate::pages::{decode, PageSink};
use crate::virtq::DescriptorChain;

/// Most runs one batch holds before applying them: 64 Ki runs, 1 MiB of host memory.
pub const BATCH_RUNS: usize = 1 << 16;

/// What one batch did so far (counted once, at its end).
#[derive(Debug, Default)]
struct Tally {
    buffers: u64,
    bad: u64,
    started: Option<Instant>,
    /// Time spent applying (so the batch's decode time can leave it out).
    applying: Duration,
}

/// The handler of inflateq or deflateq.
#[derive(Debug)]
pub(crate) struct PagesHandler {
    role: QueueRole,
    runs: Vec<PageRange>,
    scratch: Vec<u8>,
    tally: Tally,
}

/// Where one message's runs go: the handler's run buffer, applied whenever it fills.
struct ChunkSink<'a, F> {
    fx: &'a mut F,
    runs: &'a mut Vec<PageRange>,
    role: QueueRole,
    /// Pages moved in or out of the balloon by the chunks applied so far.
    pages: u64,
    applying: &'a mut Duration,
}

impl<F: Effects> ChunkSink<'_, F> {
    /// Merges the buffer and applies it if it is still more than half full.
    fn make_room(&mut self) {
        merge_runs(self.runs);
        if self.runs.len() > BATCH_RUNS / 2 {
            self.apply();
        }
    }

    /// Applies and empties the run buffer.
    fn apply(&mut self) {
        let t0 = Instant::now();
        merge_runs(self.runs);
        self.pages += self.fx.pages(self.role, self.runs);
        self.runs.clear();
        *self.applying += t0.elapsed();
    }
}

impl<F: Effects> PageSink for ChunkSink<'_, F> {
    fn run(&mut self, start: u64, len: u64) {
        if self.runs.len() >= BATCH_RUNS {
            self.make_room();
        }
        self.runs.push(PageRange::new(start, len));
    }
}

impl QueueHandler for PagesHandler {
    /// Decodes one buffer into the batch's run buffer (applying it whenever it fills).
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step {
        if self.tally.started.is_none() {
            self.tally.started = Some(Instant::now());
            self.runs.clear();
            // Never keep more than one run buffer between batches.
            self.runs.shrink_to(BATCH_RUNS);
        }
        self.tally.buffers += 1;
        let (role, enc) = (self.role, cx.encoding);
        let read = self.read_message(cx, chain);
        let mut sink = ChunkSink {
            fx,
            runs: &mut self.runs,
            role,
            pages: 0,
            applying: &mut self.tally.applying,
        };
        // The decoder checks the whole message before the sink sees a page, so a bad message
        // adds nothing and a chunk is only ever applied from valid messages.
        let decoded = read.and_then(|()| {
            decode(enc, &[self.scratch.as_slice()], cx.mem.pages(), &mut sink).map_err(
                |source| BalloonError::Decode {
                    queue: role,
                    encoding: enc.name(),
                    source,
                },
            )?;
            Ok(())
        });
        let pages = sink.pages;
        match decoded {
            Ok(()) => Step::done(pages),
            Err(e) => {
                self.tally.bad += 1;
                fx.refuse(e);
                Step {
                    pages,
                    ..Step::refused()
                }
            }
        }
    }
}

impl PagesHandler {
    /// A handler for `role` (inflate or deflate).
    pub(crate) fn new(role: QueueRole) -> PagesHandler {
        PagesHandler {
            role,
            runs: Vec::new(),
            scratch: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Ends the batch: applies the runs left (even if the ring broke after them: those buffers
    /// were valid) and counts it.
    pub(crate) fn finish(&mut self, cx: &Cx, fx: &mut impl Effects) -> Finish {
        let Some(started) = self.tally.started.take() else {
            return Finish::default();
        };
        let t = std::mem::take(&mut self.tally);
        let decode_time = started.elapsed().saturating_sub(t.applying);
        let mut applying = Duration::ZERO;
        let mut sink = ChunkSink {
            fx,
            runs: &mut self.runs,
            role: self.role,
            pages: 0,
            applying: &mut applying,
        };
        if !sink.runs.is_empty() {
            sink.apply();
        }
        let c = cx.counters;
        add(&c.decode_ns, nanos(decode_time));
        add(&c.buffers, t.buffers);
        add(&c.bad_buffers, t.bad);
        let per_role = if self.role == QueueRole::Inflate {
            &c.inflate_buffers
        } else {
            &c.deflate_buffers
        };
        add(per_role, t.buffers);
        Finish {
            pages: sink.pages,
            reply: None,
        }
    }

    /// Copies one inflate/deflate chain's message into the scratch buffer after checking its
    /// shape: device-readable only (§5.5.6), no longer than the encoding allows.
    fn read_message(&mut self, cx: &Cx, chain: &DescriptorChain) -> Result<(), BalloonError> {
        refuse_writable(chain, self.role)?;
        let len = chain.readable_len();
        let max = max_message_len(cx.encoding);
        if usize::try_from(len).map_or(true, |l| l > max) {
            return Err(BalloonError::MessageTooLong {
                queue: self.role,
                encoding: cx.encoding.name(),
                len,
                max,
            });
        }
        read_chain(cx.mem, chain, self.role, &mut self.scratch)?;
        add(&cx.counters.bytes, len);
        Ok(())
    }
}
