//! The driver's free page hint queue (virtio 1.2 §5.5.6.7): on each command id, hint free 4 MiB
//! blocks and hold them until the device says done.

use super::*;
use crate::memory::GuestMemory;
use crate::virtq::DriverQueue;

impl BalloonDriver {
    // ---- free page hint queue ----

    pub(super) fn service_free_page(&mut self, guest: &mut Guest) -> Result<HintStep, DriverError> {
        let (Some(f), Some(area)) = (&mut self.hints.free_page, self.hints.area) else {
            return Ok(HintStep::Idle);
        };
        let qi = f.queue;
        let q = serviced(&mut self.queues, &mut self.counters, qi)?;
        let mut step = HintStep::Idle;
        while let Some(used) = q.pop_used()? {
            step = HintStep::Progress;
            if !f.cmd_heads.remove(&used.head) && !f.block_heads.remove(&used.head) {
                return Err(DriverError::UnexpectedUsed {
                    queue: qi,
                    head: used.head,
                });
            }
        }
        let c = &mut self.hints.counters;
        let received = self
            .transport
            .read_config_u32(CONFIG_FREE_PAGE_HINT_CMD_ID)?;
        let done = received == VIRTIO_BALLOON_CMD_ID_DONE;
        match received {
            // The host stopped (STOP) or is done (DONE): end the request if still running.
            VIRTIO_BALLOON_CMD_ID_DONE | VIRTIO_BALLOON_CMD_ID_STOP if f.hinting => {
                f.hinting = false;
                f.pending.push_back(VIRTIO_BALLOON_CMD_ID_STOP);
                c.stops += 1;
            }
            VIRTIO_BALLOON_CMD_ID_DONE | VIRTIO_BALLOON_CMD_ID_STOP => {}
            id if id != f.active => {
                // A new request: end the old one (if still running), then acknowledge.
                if f.hinting {
                    f.pending.push_back(VIRTIO_BALLOON_CMD_ID_STOP);
                    c.stops += 1;
                }
                f.pending.push_back(id);
                f.active = id;
                f.hinting = true;
                c.cmd_ids += 1;
            }
            _ => {}
        }
        // Command ids first, in order: a start ack must precede its blocks.
        let mut sent = false;
        while q.num_free() >= 1 {
            let Some(&id) = f.pending.front() else { break };
            f.post_cmd_id(q, &self.mem, &area, id)?;
            f.pending.pop_front();
            sent = true;
        }
        if sent {
            guest.mark_dirty(area.pfn, 1);
        }
        let mut blocks = 0;
        if f.hinting && f.pending.is_empty() {
            // Keep one descriptor free so a command id can always be sent.
            while q.num_free() > 1 && blocks < self.hints.opts.max_blocks_per_step {
                match guest.allocator_mut().alloc(HINT_ORDER) {
                    Ok(pfn) => {
                        lock(&self.hints.held).blocks.push(pfn);
                        let head = q.add(&[Segment::writable(pfn.addr(), HINT_BYTES as u32)])?;
                        f.block_heads.insert(head);
                        blocks += 1;
                    }
                    Err(GuestError::OutOfMemory { .. }) => {
                        // No block left: tell the host this request is finished.
                        f.hinting = false;
                        c.stops += 1;
                        f.post_cmd_id(q, &self.mem, &area, VIRTIO_BALLOON_CMD_ID_STOP)?;
                        sent = true;
                        guest.mark_dirty(area.pfn, 1);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            c.hint_blocks += blocks as u64;
        }
        if sent || blocks > 0 {
            if q.kick()? {
                self.counters.kicks += 1;
            }
            step = HintStep::Progress;
        }
        let busy = !f.cmd_heads.is_empty() || !f.block_heads.is_empty();
        if sent || blocks > 0 {
            self.mark_hint_writes(guest, qi);
        }
        if done && !lock(&self.hints.held).blocks.is_empty() {
            self.return_hinted_blocks(guest)?;
            step = HintStep::Progress;
        }
        Ok(if step == HintStep::Idle && busy {
            HintStep::Waiting
        } else {
            step
        })
    }
}

impl FreePageSide {
    /// Posts command id `id` (a start ack or STOP) from the next slot of the command id ring.
    fn post_cmd_id(
        &mut self,
        q: &mut DriverQueue,
        mem: &GuestMemory,
        area: &HintArea,
        id: u32,
    ) -> Result<(), DriverError> {
        let addr = area.at(CMD_OFFSET + (self.next_slot * 8) as u64);
        self.next_slot = (self.next_slot + 1) % CMD_SLOTS;
        mem.write(addr, &encode_cmd_id(id))
            .map_err(GuestError::from)?;
        let head = q.add(&[Segment::readable(addr, CMD_ID_LEN as u32)])?;
        self.cmd_heads.insert(head);
        Ok(())
    }
}
