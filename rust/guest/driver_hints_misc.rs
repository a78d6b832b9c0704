//! The driver's misc queue (the seed's v3 unused-page requests): answer each with the free pages.

use super::*;

impl BalloonDriver {
    // ---- misc queue ----

    pub(super) fn service_misc(&mut self, guest: &mut Guest) -> Result<HintStep, DriverError> {
        let (Some(m), Some(area)) = (&mut self.hints.misc, self.hints.area) else {
            return Ok(HintStep::Idle);
        };
        let qi = m.queue;
        let q = serviced(&mut self.queues, &mut self.counters, qi)?;
        let mut step = HintStep::Idle;
        let mut request = None;
        while let Some(used) = q.pop_used()? {
            step = HintStep::Progress;
            if m.req_head == Some(used.head) {
                m.req_head = None;
                // v3 ignores the buffer unless the device wrote all 16 bytes.
                let mut b = [0u8; REQ_HEADER_LEN];
                if used.len as usize == REQ_HEADER_LEN {
                    self.mem
                        .read(area.at(REQ_OFFSET), &mut b)
                        .map_err(GuestError::from)?;
                    match ReqHeader::parse(&[&b[..]]) {
                        Ok(h) if h.cmd == BALLOON_GET_UNUSED_PAGES => request = Some(h.param),
                        _ => {}
                    }
                }
            } else if m
                .reply
                .as_ref()
                .and_then(|r| r.in_flight)
                .is_some_and(|(h, _)| h == used.head)
            {
                if let Some(r) = &mut m.reply {
                    r.in_flight = None;
                }
            } else if !m.orphans.remove(&used.head) {
                return Err(DriverError::UnexpectedUsed {
                    queue: qi,
                    head: used.head,
                });
            }
        }
        if let Some(req_id) = request {
            self.start_reply(guest, req_id)?;
        }
        let Some(m) = &mut self.hints.misc else {
            return Ok(step);
        };
        let Some(reply) = &mut m.reply else {
            if m.req_head.is_none() {
                self.post_request_buffer(guest)?;
                return Ok(HintStep::Progress);
            }
            return Ok(step);
        };
        if let Some((head, sent)) = reply.in_flight {
            let timeout = self.hints.opts.reply_timeout;
            if sent.elapsed() > timeout {
                m.orphans.insert(head);
                m.reply = None;
                self.hints.counters.reply_timeouts += 1;
                self.post_request_buffer(guest)?;
                return Err(DriverError::Timeout {
                    queue: qi,
                    millis: timeout.as_millis() as u64,
                });
            }
            return Ok(step.max(HintStep::Waiting));
        }
        match reply.messages.pop_front() {
            Some(msg) => {
                let head = self.send_reply(guest, qi, area, &msg)?;
                if let Some(Some(r)) = self.hints.misc.as_mut().map(|m| m.reply.as_mut()) {
                    r.in_flight = Some((head, Instant::now()));
                }
                Ok(HintStep::Progress)
            }
            None => {
                // DONE was acknowledged: ready for the next request.
                m.reply = None;
                self.post_request_buffer(guest)?;
                Ok(HintStep::Progress)
            }
        }
    }

    /// Walks the free lists once and prepares the reply windows.
    fn start_reply(&mut self, guest: &Guest, req_id: u64) -> Result<(), DriverError> {
        let mut free = PageSet::new(guest.memory().pages());
        guest.allocator().for_each_free_block(|pfn, order| {
            free.insert_range(pfn.0, 1 << order);
        });
        let messages = encode_unused_reply(&free, req_id)?;
        let c = &mut self.hints.counters;
        c.unused_requests += 1;
        c.free_list_walks += 1;
        c.unused_pages += free.count();
        if let Some(m) = &mut self.hints.misc {
            m.reply = Some(Reply {
                req_id,
                messages: messages.into(),
                in_flight: None,
            });
        }
        Ok(())
    }

    /// Copies one window into the hint area and adds it as an out-buffer.
    fn send_reply(
        &mut self,
        guest: &Guest,
        queue: u16,
        area: HintArea,
        msg: &Message,
    ) -> Result<u16, DriverError> {
        let mut segs = Vec::with_capacity(msg.segments.len());
        for (i, s) in msg.segments.iter().enumerate() {
            let addr = if i == 0 {
                if s.len() != BMAP_HEADER_LEN {
                    return Err(DriverError::SegmentTooLarge { len: s.len() });
                }
                area.at(REPLY_HEADER_OFFSET)
            } else {
                // The encoder cuts bitmaps in 32 KiB pieces, and the area holds a window's.
                if s.len() > BALLOON_BMAP_SIZE || i > area.pieces {
                    return Err(DriverError::SegmentTooLarge { len: s.len() });
                }
                area.piece(i - 1)
            };
            self.mem.write(addr, s).map_err(GuestError::from)?;
            segs.push(Segment::readable(addr, s.len() as u32));
        }
        guest.mark_dirty(area.pfn, area.pages);
        let q = &mut self.queues[usize::from(queue)];
        let head = q.add(&segs)?;
        if q.kick()? {
            self.counters.kicks += 1;
        }
        self.mark_hint_writes(guest, queue);
        self.hints.counters.unused_replies += 1;
        Ok(head)
    }
}
