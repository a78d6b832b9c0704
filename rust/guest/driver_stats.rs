//! The balloon driver's stats queue (virtio 1.2 §5.5.6.3): answer each request with a fresh sample.

use super::*;

impl BalloonDriver {
    // ---- stats (§5.5.6.3) ----

    pub(super) fn send_stats(&mut self, guest: &Guest) -> Result<(), DriverError> {
        let Some(q) = self.indexes.stats else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(100);
        crate::abi::encode_stats(&guest.stats().entries(), &mut bytes);
        let addr = self.area.stats;
        self.mem.write(addr, &bytes).map_err(GuestError::from)?;
        guest.mark_dirty(addr.pfn(), 1);
        let queue = &mut self.queues[usize::from(q)];
        let head = queue.add(&[Segment::readable(addr, bytes.len() as u32)])?;
        self.stats_in_flight = Some(head);
        if queue.kick()? {
            self.counters.kicks += 1;
        }
        self.counters.stats_sent += 1;
        Ok(())
    }

    /// The device returned the stats buffer: it wants a sample. Refill and send it back.
    pub(super) fn service_stats(&mut self, guest: &Guest) -> Result<(), DriverError> {
        let Some(q) = self.indexes.stats else {
            return Ok(());
        };
        let queue = serviced(&mut self.queues, &mut self.counters, q)?;
        let Some(used) = queue.pop_used()? else {
            return Ok(());
        };
        if self.stats_in_flight != Some(used.head) {
            return Err(DriverError::UnexpectedUsed {
                queue: q,
                head: used.head,
            });
        }
        self.stats_in_flight = None;
        self.send_stats(guest)
    }
}
