//! Free page reporting, host side (`VIRTIO_BALLOON_F_REPORTING`, Linux 5.7; protocol.md §2.6).
//!
//! The guest isolates free blocks of order ≥ 9 and posts up to 32 of them as the in-buffers of
//! one request, with no host request. The device discards each block on the backend (QEMU:
//! `ram_block_discard_range`) and uses the buffer; the guest then puts the blocks back on its
//! free lists marked reported. A reported page faults back in, zeroed, on its next touch.
//!
//! As QEMU, the device does not discard when the guest poisons free pages with a non-zero
//! `poison_val` (a discarded page would read back as zeros, not the pattern).

use super::free_page::decode_segment;
use super::handler::{refuse_hint, Cx, Effects, QueueHandler, Step};
use super::hints::HintError;
use super::runs::{merge_runs, total_pages};
use crate::device::counters::add;
use crate::device::role::QueueRole;
use crate::memory::PageRange;
use crate::virtq::DescriptorChain;

const QUEUE: QueueRole = QueueRole::Reporting;

/// The reporting queue's handler (stateless but for its run buffer).
#[derive(Debug, Default)]
pub(crate) struct ReportingHandler {
    runs: Vec<PageRange>,
}

impl QueueHandler for ReportingHandler {
    /// One report: checks every block, asks for them to be discarded, used with length 0.
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step {
        let h = cx.hints;
        add(&h.reports, 1);
        self.runs.clear();
        if let Err(e) = self.check(chain, cx.mem.pages()) {
            return refuse_hint(cx, fx, e.into());
        }
        let blocks = self.runs.len() as u64;
        merge_runs(&mut self.runs);
        let pages = total_pages(&self.runs);
        if !cx.poisoned {
            add(&h.report_discards, self.runs.len() as u64);
            fx.discard_reported(&self.runs);
        }
        add(&h.reported_blocks, blocks);
        add(&h.reported_pages, pages);
        Step::done(pages)
    }
}

impl ReportingHandler {
    /// Every buffer of a report must be device-writable, whole pages, inside guest RAM.
    fn check(&mut self, chain: &DescriptorChain, max_pfn: u64) -> Result<(), HintError> {
        if let Some(s) = chain.readable().first() {
            return Err(HintError::Direction {
                queue: QUEUE,
                addr: s.addr.raw(),
                len: s.len,
                found: "device-readable",
                expected: "device-writable (reported blocks are in-buffers)",
            });
        }
        for s in chain.writable() {
            self.runs.push(decode_segment(s, max_pfn, QUEUE)?);
        }
        Ok(())
    }
}
