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

use super::handler::{read_chain, refuse_hint, Cx, Effects, Finish, Handler, QueueHandler, Step};
use super::hints::{remember, HintError, HintEvent};
use super::BalloonDevice;
use crate::device::counters::add;
use crate::device::role::QueueRole;
use crate::device::BalloonError;
use crate::memory::{GuestAddress, PageRange};
use crate::pages::bitmap::{self, ReqHeader, BMAP_HEADER_LEN, MAX_BMAP_LEN, REQ_HEADER_LEN};
use crate::virtq::DescriptorChain;

const QUEUE: QueueRole = QueueRole::Misc;

/// The request header's length as a used length (16 bytes).
#[allow(clippy::cast_possible_truncation)]
const REQ_LEN: u32 = REQ_HEADER_LEN as u32;

/// The misc queue's handler: the request buffer it holds and the request state.
#[derive(Debug, Default)]
pub(crate) struct MiscHandler {
    /// The guest's 16-byte request buffer, while the device holds it.
    held: Option<(u16, GuestAddress)>,
    /// The request the device waits for replies to.
    current: Option<u64>,
    /// A request to write as soon as the guest posts its buffer.
    pending: Option<u64>,
    /// Ids of requests the host gave up on, newest last (their late replies are quietly
    /// dropped rather than logged as errors).
    retired: Vec<u64>,
    scratch: Vec<u8>,
    runs: Vec<PageRange>,
}

impl QueueHandler for MiscHandler {
    /// One buffer: the guest's request buffer (held), or a reply (checked, applied, used).
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step {
        let (readable, writable) = (chain.readable(), chain.writable());
        if readable.is_empty() {
            // An in-buffer: the guest's request buffer.
            let len = chain.writable_len();
            if writable.len() != 1 || len != REQ_HEADER_LEN as u64 {
                let e = HintError::RequestBufferLength {
                    len,
                    expected: REQ_HEADER_LEN,
                };
                return refuse_hint(cx, fx, e.into());
            }
            let head = chain.head();
            let give_back = self
                .held
                .replace((head, writable[0].addr))
                .map(|(held, _)| held);
            if let Some(held) = give_back {
                // One buffer at a time; give the old one back, lose nothing.
                add(&cx.hints.bad_buffers, 1);
                fx.refuse(HintError::RequestBufferAlreadyHeld { held, head }.into());
            }
            return Step {
                used: None,
                give_back,
                ..Step::default()
            };
        }
        if let Some(&s) = writable.first() {
            let e = HintError::Direction {
                queue: QUEUE,
                addr: s.addr.raw(),
                len: s.len,
                found: "mixed",
                expected: "device-readable (a reply) or device-writable (the request buffer)",
            };
            return refuse_hint(cx, fx, e.into());
        }
        add(&cx.hints.unused_replies, 1);
        // Replies go back at once (len 0: nothing written).
        match self.apply_reply(cx, chain, fx) {
            Ok(pages) => Step::done(pages),
            Err(e) => refuse_hint(cx, fx, e),
        }
    }
}

impl MiscHandler {
    /// Ends a batch: a request may have waited for the buffer just posted.
    pub(crate) fn finish(&mut self, cx: &Cx, fx: &mut impl Effects) -> Finish {
        Finish {
            pages: 0,
            reply: self.send(cx, fx),
        }
    }

    /// Makes `req_id` the current request (replacing any) and sends it if a buffer is held.
    pub(crate) fn request(
        &mut self,
        req_id: u64,
        cx: &Cx,
        fx: &mut impl Effects,
    ) -> Option<(u16, u32)> {
        self.retire();
        self.current = Some(req_id);
        self.pending = Some(req_id);
        self.send(cx, fx)
    }

    fn retire(&mut self) {
        self.pending = None;
        if let Some(old) = self.current.take() {
            remember(&mut self.retired, old);
        }
    }

    /// Writes the pending request into the held buffer; returns it to use (head, length).
    fn send(&mut self, cx: &Cx, fx: &mut impl Effects) -> Option<(u16, u32)> {
        let (Some(req_id), Some((head, addr))) = (self.pending, self.held) else {
            return None;
        };
        self.held = None;
        self.pending = None;
        let bytes = ReqHeader::get_unused_pages(req_id).to_bytes();
        // The address was checked to lie in guest RAM when the buffer was popped.
        if let Err(e) = cx.mem.write(addr, &bytes) {
            fx.refuse(e.into());
            return Some((head, 0));
        }
        fx.wrote(addr, bytes.len() as u64);
        add(&cx.hints.unused_requests, 1);
        Some((head, REQ_LEN))
    }

    /// Copies one reply out of guest RAM, decodes all of it, and passes its pages on if it
    /// answers the current request; returns the pages passed on.
    fn apply_reply(
        &mut self,
        cx: &Cx,
        chain: &DescriptorChain,
        fx: &mut impl Effects,
    ) -> Result<u64, BalloonError> {
        let len = chain.readable_len();
        let max = BMAP_HEADER_LEN as u64 + MAX_BMAP_LEN;
        if len > max {
            return Err(HintError::ReplyTooLong { len, max }.into());
        }
        read_chain(cx.mem, chain, QUEUE, &mut self.scratch)?;
        let runs = &mut self.runs;
        runs.clear();
        let mut sink = |s, l| runs.push(PageRange::new(s, l));
        let h = bitmap::decode(&[self.scratch.as_slice()], cx.mem.pages(), &mut sink)
            .map_err(|source| HintError::BadReply { source })?;
        if self.current != Some(h.req_id) {
            add(&cx.hints.stale_replies, 1);
            if self.retired.contains(&h.req_id) {
                // A late answer to a request the host gave up on: expected, not an error.
                return Ok(0);
            }
            return Err(HintError::StaleReply {
                req_id: h.req_id,
                current: self.current,
            }
            .into());
        }
        let mut pages = 0;
        for r in &self.runs {
            pages += r.len;
            fx.hint(HintEvent::Pages {
                id: h.req_id,
                pfn: r.start,
                npages: r.len,
            });
        }
        add(&cx.hints.unused_pages, pages);
        if h.is_done() {
            add(&cx.hints.unused_done, 1);
            fx.hint(HintEvent::Finished { id: h.req_id });
            self.current = None;
            remember(&mut self.retired, h.req_id);
        }
        Ok(pages)
    }
}

impl BalloonDevice {
    fn misc(&self) -> Option<&MiscHandler> {
        match self.handler(QUEUE) {
            Some(Handler::Misc(m)) => Some(m),
            _ => None,
        }
    }

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
        self.host_reply(index, |h, cx, fx| match h {
            Handler::Misc(m) => m.request(req_id, cx, fx),
            _ => None,
        })
    }

    /// Gives up on the current unused-page request: replies to it are dropped from now on
    /// (the host stops hinting before it syncs its dirty log, protocol.md §4.2).
    pub fn cancel_unused_pages(&mut self) {
        if let Some(Handler::Misc(m)) = self.handler_mut(QUEUE) {
            m.retire();
        }
    }

    /// The unused-page request the device waits for replies to, if any.
    pub fn unused_request(&self) -> Option<u64> {
        self.misc().and_then(|m| m.current)
    }

    /// Whether the device holds the guest's request buffer (it can ask now).
    pub fn holds_misc_request_buffer(&self) -> bool {
        self.misc().is_some_and(|m| m.held.is_some())
    }
}
