//! The stats queue (virtio 1.2 §5.5.6.3): the device holds the driver's buffer until it wants
//! a sample, then returns it; the driver refills it and adds it again.

use super::handler::{read_chain, refuse_writable, Cx, Effects, QueueHandler, Step};
use super::BalloonDevice;
use crate::abi::STATS_ENTRY_SIZE;
use crate::abi::{parse_stats_into, StatsSample, STATS_MAX_LEN};
use crate::device::counters::add;
use crate::device::error::BalloonError;
use crate::device::role::QueueRole;
use crate::virtq::DescriptorChain;

/// The stats queue's handler: the buffer it holds (QEMU's model) and a scratch copy.
#[derive(Debug, Default)]
pub(crate) struct StatsHandler {
    held: Option<u16>,
    scratch: Vec<u8>,
}

impl QueueHandler for StatsHandler {
    /// Holds the new buffer (returning one held before) and parses the sample in it.
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step {
        add(&cx.counters.stats_buffers, 1);
        let head = chain.head();
        let give_back = self.held.replace(head);
        if let Some(held) = give_back {
            // One buffer is outstanding at a time; give the old one back, lose nothing.
            fx.refuse(BalloonError::StatsBufferAlreadyHeld { held, head });
        }
        let bad = match self.parse(cx, chain, fx) {
            Ok(()) => false,
            Err(e) => {
                fx.refuse(e);
                true
            }
        };
        Step {
            used: None,
            give_back,
            pages: 0,
            bad,
        }
    }
}

impl StatsHandler {
    fn parse(
        &mut self,
        cx: &Cx,
        chain: &DescriptorChain,
        fx: &mut impl Effects,
    ) -> Result<(), BalloonError> {
        refuse_writable(chain, QueueRole::Stats)?;
        let len = chain.readable_len();
        if usize::try_from(len).map_or(true, |l| l > STATS_MAX_LEN) {
            return Err(BalloonError::StatsTooLong {
                len,
                max: STATS_MAX_LEN,
            });
        }
        if len % STATS_ENTRY_SIZE as u64 != 0 {
            return Err(BalloonError::StatsLength { len });
        }
        read_chain(cx.mem, chain, QueueRole::Stats, &mut self.scratch)?;
        let unknown = parse_stats_into(&self.scratch, fx.sample());
        add(&cx.counters.stats_unknown_tags, unknown);
        Ok(())
    }

    /// Gives up the held buffer, to return it (the host wants a sample).
    pub(crate) fn take_held(&mut self) -> Option<u16> {
        self.held.take()
    }

    /// Whether a buffer is held.
    pub(crate) fn holds(&self) -> bool {
        self.held.is_some()
    }
}

impl BalloonDevice {
    /// Asks the guest for fresh statistics by returning the buffer the device holds; returns
    /// whether it held one. The driver refills it and adds it again; the next
    /// [`BalloonDevice::process_queue`] on the stats queue parses it.
    pub fn request_stats(&mut self) -> Result<bool, BalloonError> {
        self.follow_driver();
        let Some(index) = self.features.and_then(|f| f.queues().stats) else {
            return Ok(false);
        };
        let sent = self.host_reply(index, |h, _, _| match h {
            super::handler::Handler::Stats(s) => s.take_held().map(|head| (head, 0)),
            _ => None,
        })?;
        if sent {
            add(&self.counters.stats_requests, 1);
        }
        Ok(sent)
    }

    /// The guest's statistics as last received.
    pub fn stats(&self) -> &StatsSample {
        &self.stats
    }

    /// Whether the device holds a stats buffer (it can ask for a sample).
    pub fn holds_stats_buffer(&self) -> bool {
        matches!(self.handler(QueueRole::Stats), Some(super::handler::Handler::Stats(s)) if s.holds())
    }
}
