//! The seed's misc queue, host side (v3 patches 6-7/7; protocol.md §1.3).
//!
//! The guest keeps one 16-byte in-buffer posted; the device holds it until the host asks. To
//! ask, the device writes `struct balloon_req_hdr` (`GET_UNUSED_PAGES`, `param` = request id)
//! into it and uses it. The guest walks its free lists once and answers window by window: each
//! answer is an out-buffer on the same queue, a 32-byte `balloon_bmap_hdr` (`req_id` echoed,
//! flag CONT, DONE on the last) and up to 32 bitmap pieces. The device uses each answer (the
//! guest waits for that ack before the next window), and the guest posts its request buffer
//! again when it is done.
//!
//! Every reply is copied out of guest RAM and decoded in full (page_shift, flag, bmap_len
//! against the bytes that follow, every set bit inside guest RAM) before its request id is
//! even compared, so a reply either counts whole or not at all.

use super::hints::{add, remember, HintError, HintEvent};
use super::BalloonDevice;
use crate::device::BalloonError;
use crate::memory::PageRange;
use crate::pages::bitmap::{self, ReqHeader, BMAP_HEADER_LEN, MAX_BMAP_LEN, REQ_HEADER_LEN};

const QUEUE: &str = "misc";

impl BalloonDevice {
    /// Asks the guest which pages are unused, replies to carry `req_id` (seed v3 §1.3).
    ///
    /// Returns `true` if the request went out now, `false` if the guest's request buffer is not
    /// posted yet (it still answers an earlier request): the request goes out when it is. A
    /// request replaces the current one: late replies to the old id are dropped.
    pub fn request_unused_pages(&mut self, req_id: u64) -> Result<bool, BalloonError> {
        self.follow_driver();
        let Some(index) = self.features.and_then(|f| f.queues().misc) else {
            return Err(HintError::NotNegotiated { feature: "MISC_VQ" }.into());
        };
        self.retire_unused_request();
        self.hints.misc.current = Some(req_id);
        self.hints.misc.pending = Some(req_id);
        self.send_unused_request(index)
    }

    /// Gives up on the current unused-page request: replies to it are dropped from now on
    /// (the host stops hinting before it syncs its dirty log, protocol.md §4.2).
    pub fn cancel_unused_pages(&mut self) {
        self.retire_unused_request();
    }

    /// The unused-page request the device waits for replies to, if any.
    pub fn unused_request(&self) -> Option<u64> {
        self.hints.misc.current
    }

    /// Whether the device holds the guest's request buffer (it can ask now).
    pub fn holds_misc_request_buffer(&self) -> bool {
        self.hints.misc.held.is_some()
    }

    fn retire_unused_request(&mut self) {
        let m = &mut self.hints.misc;
        m.pending = None;
        if let Some(old) = m.current.take() {
            remember(&mut m.retired, old);
        }
    }

    /// Writes the pending request into the held buffer and uses it.
    fn send_unused_request(&mut self, index: u16) -> Result<bool, BalloonError> {
        let (Some(req_id), Some((head, addr))) = (self.hints.misc.pending, self.hints.misc.held)
        else {
            return Ok(false);
        };
        let broken = |source| BalloonError::Queue {
            queue: QUEUE,
            source,
        };
        let bytes = ReqHeader::get_unused_pages(req_id).to_bytes();
        // The address was checked to lie in guest RAM when the buffer was popped.
        self.mem.write(addr, &bytes)?;
        self.hints.wrote(addr, REQ_HEADER_LEN as u64);
        self.hints.misc.held = None;
        self.hints.misc.pending = None;
        self.queue(index)
            .add_used(head, REQ_HEADER_LEN as u32)
            .map_err(broken)?;
        self.signal_hint_queue(index, QUEUE)?;
        add(&self.hints.counters.unused_requests, 1);
        Ok(true)
    }

    /// Serves the misc queue: holds the request buffer, checks and applies replies.
    pub(super) fn process_misc(&mut self, index: u16) -> Result<super::QueueRun, BalloonError> {
        let broken = |source| BalloonError::Queue {
            queue: QUEUE,
            source,
        };
        let mut run = super::QueueRun::default();
        let mut chain = std::mem::take(&mut self.chain);
        let mut used = 0u32;
        let res = loop {
            match self.pop_bounded(index, run.buffers, &mut chain) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(broken(e)),
            }
            run.buffers += 1;
            let head = chain.head();
            let (readable, writable) = (chain.readable(), chain.writable());
            if readable.is_empty() {
                // An in-buffer: the guest's request buffer.
                let len = chain.writable_len();
                if writable.len() != 1 || len != REQ_HEADER_LEN as u64 {
                    run.bad_buffers += 1;
                    self.hint_error(HintError::RequestBufferLength {
                        len,
                        expected: REQ_HEADER_LEN,
                    });
                } else {
                    let addr = writable[0].addr;
                    if let Some((held, _)) = self.hints.misc.held.replace((head, addr)) {
                        // One buffer at a time; give the old one back, lose nothing.
                        self.hint_error(HintError::RequestBufferAlreadyHeld { held, head });
                        if let Err(e) = self.queue(index).add_used(held, 0) {
                            break Err(broken(e));
                        }
                        used += 1;
                    }
                    continue;
                }
            } else if !writable.is_empty() {
                run.bad_buffers += 1;
                let s = writable[0];
                self.hint_error(HintError::Direction {
                    queue: QUEUE,
                    addr: s.addr.raw(),
                    len: s.len,
                    found: "mixed",
                    expected: "device-readable (a reply) or device-writable (the request buffer)",
                });
            } else {
                add(&self.hints.counters.unused_replies, 1);
                match self.apply_reply(&chain) {
                    Ok(pages) => run.pages += pages,
                    Err(e) => {
                        run.bad_buffers += 1;
                        self.hint_refused(e);
                    }
                }
            }
            // Replies and refused buffers go back at once (len 0: nothing written).
            if let Err(e) = self.queue(index).add_used(head, 0) {
                break Err(broken(e));
            }
            used += 1;
        };
        self.chain = chain;
        res?;
        if used > 0 {
            run.interrupted = self.signal_hint_queue(index, QUEUE)?;
        }
        // A request may have waited for the buffer just posted.
        self.send_unused_request(index)?;
        Ok(run)
    }

    /// Copies one reply out of guest RAM, decodes all of it, and passes its pages on if it
    /// answers the current request; returns the pages passed on.
    fn apply_reply(&mut self, chain: &crate::virtq::DescriptorChain) -> Result<u64, BalloonError> {
        let len = chain.readable_len();
        let max = BMAP_HEADER_LEN as u64 + MAX_BMAP_LEN;
        if len > max {
            return Err(HintError::ReplyTooLong { len, max }.into());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let read = chain.read_into(&self.mem, &mut scratch);
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        let decoded = read.map_err(|source| BalloonError::Queue {
            queue: QUEUE,
            source,
        });
        let decoded = decoded.and_then(|()| {
            let mut sink = |start, len| runs.push(PageRange::new(start, len));
            bitmap::decode(&[scratch.as_slice()], self.mem.pages(), &mut sink)
                .map_err(|source| HintError::BadReply { source }.into())
        });
        self.scratch = scratch;
        let result = decoded.and_then(|h| self.accept_reply(h, &runs));
        self.runs = runs;
        result
    }

    fn accept_reply(
        &mut self,
        h: bitmap::BmapHeader,
        runs: &[PageRange],
    ) -> Result<u64, BalloonError> {
        let m = &self.hints.misc;
        if m.current != Some(h.req_id) {
            add(&self.hints.counters.stale_replies, 1);
            if m.retired.contains(&h.req_id) {
                // A late answer to a request the host gave up on: expected, not an error.
                return Ok(0);
            }
            return Err(HintError::StaleReply {
                req_id: h.req_id,
                current: m.current,
            }
            .into());
        }
        let mut pages = 0;
        for &PageRange {
            start: pfn,
            len: npages,
        } in runs
        {
            pages += npages;
            self.hints.emit(HintEvent::Pages {
                id: h.req_id,
                pfn,
                npages,
            });
        }
        add(&self.hints.counters.unused_pages, pages);
        if h.is_done() {
            add(&self.hints.counters.unused_done, 1);
            self.hints.emit(HintEvent::Finished { id: h.req_id });
            let m = &mut self.hints.misc;
            m.current = None;
            remember(&mut m.retired, h.req_id);
        }
        Ok(pages)
    }

    /// Logs a refused hint buffer.
    pub(super) fn hint_error(&mut self, e: HintError) {
        self.hint_refused(e.into());
    }

    /// Logs a refused hint buffer (any device error).
    pub(super) fn hint_refused(&mut self, e: BalloonError) {
        add(&self.hints.counters.bad_buffers, 1);
        self.log(e);
    }

    /// Interrupts for used buffers of hint queue `index` and logs the used ring as written.
    pub(super) fn signal_hint_queue(
        &mut self,
        index: u16,
        queue: &'static str,
    ) -> Result<bool, BalloonError> {
        let q = self.queue(index);
        let layout = *q.layout();
        let sent = q
            .signal_used()
            .map_err(|source| BalloonError::Queue { queue, source })?;
        self.hints.wrote(
            layout.used_ring(),
            crate::virtq::used_ring_bytes(layout.size()),
        );
        if sent {
            add(&self.counters.interrupts, 1);
        }
        Ok(sent)
    }
}
