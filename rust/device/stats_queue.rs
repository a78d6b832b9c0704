//! The stats queue (virtio 1.2 §5.5.6.3): the device holds the driver's buffer until it wants
//! a sample, then returns it; the driver refills it and adds it again.

use super::{BalloonDevice, QueueRun};
use crate::abi::STATS_ENTRY_SIZE;
use crate::abi::{parse_stats_into, StatsSample, STATS_MAX_LEN};
use crate::device::counters::add;
use crate::device::error::BalloonError;
use crate::virtq::DescriptorChain;

impl BalloonDevice {
    pub(super) fn process_stats(&mut self, index: u16) -> Result<QueueRun, BalloonError> {
        let broken = |source| BalloonError::Queue {
            queue: "stats",
            source,
        };
        let mut run = QueueRun::default();
        let mut returned = 0u32;
        let mut chain = std::mem::take(&mut self.chain);
        loop {
            match self.pop_bounded(index, run.buffers, &mut chain) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    self.chain = chain;
                    return Err(broken(e));
                }
            }
            run.buffers += 1;
            add(&self.counters.stats_buffers, 1);
            let head = chain.head();
            if let Some(held) = self.stats.held.replace(head) {
                // One buffer is outstanding at a time; give the old one back, lose nothing.
                self.log(BalloonError::StatsBufferAlreadyHeld { held, head });
                if let Err(e) = self.queue(index).add_used(held, 0) {
                    self.chain = chain;
                    return Err(broken(e));
                }
                returned += 1;
            }
            if let Err(e) = self.parse_stats(&chain) {
                run.bad_buffers += 1;
                self.log(e);
            }
        }
        self.chain = chain;
        if returned > 0 {
            run.interrupted = self.queue(index).signal_used().map_err(broken)?;
            if run.interrupted {
                add(&self.counters.interrupts, 1);
            }
        }
        Ok(run)
    }

    fn parse_stats(&mut self, chain: &DescriptorChain) -> Result<(), BalloonError> {
        if let Some(s) = chain.writable().first() {
            return Err(BalloonError::WritableSegment {
                queue: "stats",
                addr: s.addr.raw(),
                len: s.len,
            });
        }
        let len = chain.readable_len();
        if len > STATS_MAX_LEN as u64 {
            return Err(BalloonError::StatsTooLong {
                len,
                max: STATS_MAX_LEN,
            });
        }
        if len % STATS_ENTRY_SIZE as u64 != 0 {
            return Err(BalloonError::StatsLength { len });
        }
        self.scratch.clear();
        chain
            .read_into(&self.mem, &mut self.scratch)
            .map_err(|source| BalloonError::Queue {
                queue: "stats",
                source,
            })?;
        let unknown = parse_stats_into(&self.scratch, &mut self.stats.sample);
        add(&self.counters.stats_unknown_tags, unknown);
        Ok(())
    }

    /// Asks the guest for fresh statistics by returning the buffer the device holds; returns
    /// whether it held one. The driver refills it and adds it again; the next
    /// [`BalloonDevice::process_queue`] on the stats queue parses it.
    pub fn request_stats(&mut self) -> Result<bool, BalloonError> {
        self.follow_driver();
        let Some(index) = self.features.and_then(|f| f.queues().stats) else {
            return Ok(false);
        };
        let Some(head) = self.stats.held.take() else {
            return Ok(false);
        };
        add(&self.counters.stats_requests, 1);
        let broken = |source| BalloonError::Queue {
            queue: "stats",
            source,
        };
        self.queue(index).add_used(head, 0).map_err(broken)?;
        if self.queue(index).signal_used().map_err(broken)? {
            add(&self.counters.interrupts, 1);
        }
        Ok(true)
    }

    /// The guest's statistics as last received.
    pub fn stats(&self) -> &StatsSample {
        &self.stats.sample
    }

    /// Whether the device holds a stats buffer (it can ask for a sample).
    pub fn holds_stats_buffer(&self) -> bool {
        self.stats.held.is_some()
    }
}
