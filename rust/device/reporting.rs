//! Free page reporting, host side (`VIRTIO_BALLOON_F_REPORTING`, Linux 5.7; protocol.md §2.6).
//!
//! The guest isolates free blocks of order ≥ 9 and posts up to 32 of them as the in-buffers of
//! one request, with no host request. The device discards each block on the backend (QEMU:
//! `ram_block_discard_range`) and uses the buffer; the guest then puts the blocks back on its
//! free lists marked reported. A reported page faults back in, zeroed, on its next touch.
//!
//! As QEMU, the device does not discard when the guest poisons free pages with a non-zero
//! `poison_val` (a discarded page would read back as zeros, not the pattern).

use super::hints::{add, HintError};
use crate::abi::CONFIG_POISON_VAL;
use crate::device::{merge_runs, BalloonError};
use crate::memory::{DiscardMode, PageRange, PAGE_SIZE};
use crate::pages::hint::decode_block;
use crate::pages::HintBlock;

use super::BalloonDevice;

const QUEUE: &str = "reporting";

impl BalloonDevice {
    /// Serves the reporting queue: checks every block of a request, discards them, uses it.
    pub(super) fn process_reporting(
        &mut self,
        index: u16,
    ) -> Result<super::QueueRun, BalloonError> {
        let broken = |source| BalloonError::Queue {
            queue: QUEUE,
            source,
        };
        let poisoned = self.features.is_some_and(|f| f.page_poison())
            && self.transport.read_config_u32(CONFIG_POISON_VAL)? != 0;
        let mut run = super::QueueRun::default();
        let mut chain = std::mem::take(&mut self.chain);
        let mut runs = std::mem::take(&mut self.runs);
        let res = loop {
            match self.pop_bounded(index, run.buffers, &mut chain) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(broken(e)),
            }
            run.buffers += 1;
            add(&self.hints.counters.reports, 1);
            runs.clear();
            match Self::check_report(&chain, self.mem.pages(), &mut runs) {
                Ok(()) => {
                    let blocks = runs.len() as u64;
                    merge_runs(&mut runs);
                    let pages: u64 = runs.iter().map(|r| r.len).sum();
                    if !poisoned {
                        // Inside guest RAM: checked by `check_report`, and again by the memory
                        // layer's discard, the same backend inflate uses.
                        add(&self.hints.counters.report_discards, runs.len() as u64);
                        self.discard(&runs, DiscardMode::PerRun);
                        for r in &runs {
                            // The pages now read as zeros: logged like a device write.
                            self.hints.wrote(r.first().addr(), r.len * PAGE_SIZE);
                        }
                    }
                    add(&self.hints.counters.reported_blocks, blocks);
                    add(&self.hints.counters.reported_pages, pages);
                    run.pages += pages;
                }
                Err(e) => {
                    run.bad_buffers += 1;
                    self.hint_error(e);
                }
            }
            if let Err(e) = self.queue(index).add_used(chain.head(), 0) {
                break Err(broken(e));
            }
        };
        self.chain = chain;
        self.runs = runs;
        res?;
        if run.buffers > 0 {
            run.interrupted = self.signal_hint_queue(index, QUEUE)?;
        }
        Ok(run)
    }

    /// Every buffer of a report must be device-writable, whole pages, inside guest RAM.
    fn check_report(
        chain: &crate::virtq::DescriptorChain,
        max_pfn: u64,
        runs: &mut Vec<PageRange>,
    ) -> Result<(), HintError> {
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
            let block = HintBlock {
                addr: s.addr.raw(),
                len: u64::from(s.len),
            };
            let r = decode_block(block, max_pfn).map_err(|source| HintError::BadBlock {
                queue: QUEUE,
                source,
            })?;
            runs.push(r);
        }
        Ok(())
    }
}
