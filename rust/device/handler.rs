//! One protocol handler per queue (virtio 1.2 §5.5.6), each a state machine with no I/O of
//! its own: given a popped chain and guest memory it reads the chain's buffers (and writes a
//! reply into a guest buffer, through the memory API), then says what to do: the used length,
//! the runs to inflate, deflate or discard and the hints to pass on ([`Effects`]). The serve
//! loop (`serve.rs`) pops, applies those effects, adds used entries and interrupts.

use super::hints::{HintEvent, SharedHintCounters};
use crate::abi::StatsSample;
use crate::device::counters::SharedCounters;
use crate::device::error::BalloonError;
use crate::device::role::QueueRole;
use crate::memory::{GuestAddress, GuestMemory, PageRange};
use crate::pages::Encoding;
use crate::virtq::DescriptorChain;

use super::free_page::FreePageHandler;
use super::misc::MiscHandler;
use super::pages_handler::PagesHandler;
use super::reporting::ReportingHandler;
use super::stats_queue::StatsHandler;

/// What a handler may read while it serves a batch.
pub(crate) struct Cx<'a> {
    /// Guest RAM (handlers use only its bounds-checked API).
    pub(crate) mem: &'a GuestMemory,
    /// The negotiated inflate/deflate encoding.
    pub(crate) encoding: Encoding,
    /// The device's counters (atomics another thread reads).
    pub(crate) counters: &'a SharedCounters,
    /// The hint queues' counters.
    pub(crate) hints: &'a SharedHintCounters,
    /// The guest poisons free pages with a non-zero `poison_val`: reported pages are kept.
    pub(crate) poisoned: bool,
}

/// What a handler asks of the device; the serve loop implements it over the discard backend,
/// the hint sink, the write log and the error log.
pub(crate) trait Effects {
    /// Inflates (`QueueRole::Inflate`: discards) or deflates `runs`, sorted and disjoint;
    /// returns the pages that moved in or out of the balloon.
    fn pages(&mut self, role: QueueRole, runs: &[PageRange]) -> u64;
    /// Discards reported free pages (sorted, disjoint runs) without ballooning them.
    fn discard_reported(&mut self, runs: &[PageRange]);
    /// Passes hinted pages on to the hint sink.
    fn hint(&mut self, event: HintEvent);
    /// Logs a device write of `[addr, addr + len)` into guest RAM (dirty tracking).
    fn wrote(&mut self, addr: GuestAddress, len: u64);
    /// Logs a refused buffer or other per-buffer error.
    fn refuse(&mut self, e: BalloonError);
    /// The stats sample the device keeps, for the stats handler to update.
    fn sample(&mut self) -> &mut StatsSample;
}

/// A handler's answer for one chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Add the chain to the used ring with this length; `None`: the handler holds it.
    pub(crate) used: Option<u32>,
    /// A buffer the handler held until now, to return with length 0 first.
    pub(crate) give_back: Option<u16>,
    /// Pages moved or hinted.
    pub(crate) pages: u64,
    /// The buffer was refused (the error went to [`Effects::refuse`]).
    pub(crate) bad: bool,
}

impl Step {
    /// Used at once with length 0, `pages` moved.
    pub(crate) fn done(pages: u64) -> Step {
        Step {
            used: Some(0),
            pages,
            ..Step::default()
        }
    }

    /// Refused: used at once with length 0.
    pub(crate) fn refused() -> Step {
        Step {
            used: Some(0),
            bad: true,
            ..Step::default()
        }
    }
}

/// What a handler does at the end of a batch (or on a host request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Finish {
    /// Pages applied now (the rest of a batch's runs).
    pub(crate) pages: u64,
    /// A held buffer to use now: (head, bytes written into it).
    pub(crate) reply: Option<(u16, u32)>,
}

/// A queue's protocol: what to do with each popped chain, and at the end of a batch.
pub(crate) trait QueueHandler {
    /// Handles one popped chain.
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step;

    /// Ends a batch (the ring may have broken after it: nothing is sent then, `Handler`
    /// checks); by default there is nothing left to do.
    fn finish(&mut self, _cx: &Cx, _fx: &mut impl Effects) -> Finish {
        Finish::default()
    }
}

/// The handler of one queue, by role.
#[derive(Debug)]
pub(crate) enum Handler {
    /// inflateq and deflateq.
    Pages(PagesHandler),
    /// statsq.
    Stats(StatsHandler),
    /// The seed's misc queue.
    Misc(MiscHandler),
    /// free_page_vq.
    FreePage(FreePageHandler),
    /// reporting_vq.
    Reporting(ReportingHandler),
}

impl Handler {
    /// A fresh handler (the state of a new negotiation) for a queue of `role`.
    pub(crate) fn for_role(role: QueueRole) -> Handler {
        match role {
            QueueRole::Inflate | QueueRole::Deflate => Handler::Pages(PagesHandler::new(role)),
            QueueRole::Stats => Handler::Stats(StatsHandler::default()),
            QueueRole::Misc => Handler::Misc(MiscHandler::default()),
            QueueRole::FreePage => Handler::FreePage(FreePageHandler::default()),
            QueueRole::Reporting => Handler::Reporting(ReportingHandler::default()),
        }
    }

    /// Handles one popped chain.
    pub(crate) fn handle(
        &mut self,
        cx: &Cx,
        chain: &DescriptorChain,
        fx: &mut impl Effects,
    ) -> Step {
        match self {
            Handler::Pages(h) => h.handle(cx, chain, fx),
            Handler::Stats(h) => h.handle(cx, chain, fx),
            Handler::Misc(h) => h.handle(cx, chain, fx),
            Handler::FreePage(h) => h.handle(cx, chain, fx),
            Handler::Reporting(h) => h.handle(cx, chain, fx),
        }
    }

    /// Ends a batch: applies what is left, and (if the ring is still sound) sends what
    /// waited for a buffer.
    pub(crate) fn finish(&mut self, cx: &Cx, fx: &mut impl Effects, ring_ok: bool) -> Finish {
        match self {
            Handler::Pages(h) => h.finish(cx, fx),
            Handler::Misc(h) if ring_ok => h.finish(cx, fx),
            Handler::Misc(_) => Finish::default(),
            Handler::Stats(h) => h.finish(cx, fx),
            Handler::FreePage(h) => h.finish(cx, fx),
            Handler::Reporting(h) => h.finish(cx, fx),
        }
    }
}

/// A chain's first device-writable segment, as a refusal for a queue the device only reads
/// (§5.5.6: inflate, deflate and stats buffers are device-readable).
pub(crate) fn refuse_writable(
    chain: &DescriptorChain,
    queue: QueueRole,
) -> Result<(), BalloonError> {
    match chain.writable().first() {
        Some(s) => Err(BalloonError::WritableSegment {
            queue,
            addr: s.addr.raw(),
            len: s.len,
        }),
        None => Ok(()),
    }
}

/// Copies a chain's readable bytes into `scratch` (copy first, then validate the copy: the
/// guest cannot change a message under the device).
pub(crate) fn read_chain(
    mem: &GuestMemory,
    chain: &DescriptorChain,
    queue: QueueRole,
    scratch: &mut Vec<u8>,
) -> Result<(), BalloonError> {
    scratch.clear();
    chain
        .read_into(mem, scratch)
        .map_err(|source| BalloonError::Queue { queue, source })
}

/// Refuses a hint-queue buffer: counted with the hint counters, logged, used with length 0.
pub(crate) fn refuse_hint(cx: &Cx, fx: &mut impl Effects, e: BalloonError) -> Step {
    crate::device::counters::add(&cx.hints.bad_buffers, 1);
    fx.refuse(e);
    Step::refused()
}
