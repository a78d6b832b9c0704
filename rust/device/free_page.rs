//! Upstream free page hinting, host side (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`, Linux 4.20;
//! protocol.md §2.5, QEMU's state machine §4.2).
//!
//! The host writes a new command id into config space (`free_page_hint_cmd_id`, offset 8) and
//! sends a config interrupt. The guest answers with an out-buffer holding that id (the start
//! ack), then sends free blocks of order 10 as device-writable in-buffers, and an out-buffer
//! holding STOP (0) when it has no more. The device uses every buffer with length 0.
//!
//! | status | config reads | on the guest's ack `id` | on the guest's STOP | blocks |
//! |---|---|---|---|---|
//! | `Requested(id)` | id | → `Start(id)` | ignored | ignored |
//! | `Start(id)` | id | (duplicate, ignored) | → `Stop`, [`HintEvent::Finished`] | hints |
//! | `Stop` | 0 | ignored | ignored | ignored |
//! | `Done` | 1 | ignored | ignored | ignored |
//!
//! Spec rules kept here: pages under an id that is not current are ignored; an id is not
//! issued again before the driver's STOP for it; the device never writes a hinted block; DONE
//! tells the guest to reuse the blocks it holds.

use super::handler::{read_chain, refuse_hint, Cx, Effects, Handler, QueueHandler, Step};
use super::hints::{remember, FreePageStatus, HintError, HintEvent};
use super::BalloonDevice;
use crate::abi::{
    CONFIG_FREE_PAGE_HINT_CMD_ID, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_MIN,
};
use crate::device::counters::add;
use crate::device::role::QueueRole;
use crate::device::BalloonError;
use crate::pages::hint::{decode_block, decode_cmd_id, CMD_ID_LEN, CMD_ID_STOP};
use crate::pages::HintBlock;
use crate::virtq::DescriptorChain;

const QUEUE: QueueRole = QueueRole::FreePage;

/// The free page queue's handler: the hinting status and the id rules.
#[derive(Debug, Default)]
pub(crate) struct FreePageHandler {
    status: FreePageStatus,
    /// The last id issued and whether the driver has sent STOP since (the reuse rule).
    last_id: Option<u32>,
    stop_seen: bool,
    /// Ids issued before `last_id` (their late buffers are quietly ignored).
    retired: Vec<u32>,
    scratch: Vec<u8>,
}

impl QueueHandler for FreePageHandler {
    /// One buffer: a command id (out-buffer) or free blocks (in-buffers); used with length 0.
    fn handle(&mut self, cx: &Cx, chain: &DescriptorChain, fx: &mut impl Effects) -> Step {
        let (readable, writable) = (chain.readable(), chain.writable());
        let outcome = match (readable.first(), writable.first()) {
            (Some(_), None) => self.cmd(cx, chain, fx).map(|()| 0),
            (None, Some(_)) => self.blocks(cx, chain, fx),
            (Some(r), Some(_)) => Err(HintError::Direction {
                queue: QUEUE,
                addr: r.addr.raw(),
                len: r.len,
                found: "mixed",
                expected: "a command id out-buffer or block in-buffers",
            }
            .into()),
            (None, None) => Ok(0),
        };
        match outcome {
            Ok(pages) => Step::done(pages),
            Err(e) => refuse_hint(cx, fx, e),
        }
    }
}

impl FreePageHandler {
    /// Issues `cmd_id` (≥ 2; not again before the driver's STOP for it).
    fn start(&mut self, cmd_id: u32) -> Result<(), HintError> {
        let reused = self.last_id == Some(cmd_id) && !self.stop_seen;
        if cmd_id < VIRTIO_BALLOON_CMD_ID_MIN || reused {
            return Err(HintError::CmdIdNotAllowed { cmd_id });
        }
        if let Some(old) = self.last_id.replace(cmd_id) {
            if old != cmd_id {
                remember(&mut self.retired, old);
            }
        }
        self.stop_seen = false;
        self.status = FreePageStatus::Requested(cmd_id);
        Ok(())
    }

    /// A command id out-buffer: the guest's start ack or its STOP.
    fn cmd(
        &mut self,
        cx: &Cx,
        chain: &DescriptorChain,
        fx: &mut impl Effects,
    ) -> Result<(), BalloonError> {
        let len = chain.readable_len();
        // Refuse anything but 4 bytes before reading a byte of it.
        if len != CMD_ID_LEN as u64 {
            let source = crate::pages::PagesError::CmdIdLength {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                expected: CMD_ID_LEN,
            };
            return Err(HintError::BadCmdId { source }.into());
        }
        read_chain(cx.mem, chain, QUEUE, &mut self.scratch)?;
        let cmd_id = decode_cmd_id(&[self.scratch.as_slice()])
            .map_err(|source| HintError::BadCmdId { source })?;
        let c = cx.hints;
        match self.status {
            FreePageStatus::Requested(id) if cmd_id == id => {
                self.status = FreePageStatus::Start(id);
                add(&c.cmd_id_acks, 1);
                Ok(())
            }
            FreePageStatus::Start(id) if cmd_id == CMD_ID_STOP => {
                self.status = FreePageStatus::Stop;
                self.stop_seen = true;
                add(&c.guest_stops, 1);
                fx.hint(HintEvent::Finished { id: u64::from(id) });
                Ok(())
            }
            _ if cmd_id == CMD_ID_STOP => {
                // The guest's STOP after the host stopped (or for an older id): the driver is
                // done with whatever it was answering.
                self.stop_seen = true;
                add(&c.guest_stops, 1);
                Ok(())
            }
            status => {
                add(&c.stale_cmd_ids, 1);
                if self.last_id == Some(cmd_id) || self.retired.contains(&cmd_id) {
                    // An ack that crossed the host's STOP or a newer id: expected.
                    Ok(())
                } else {
                    Err(HintError::UnknownCmdId { cmd_id, status }.into())
                }
            }
        }
    }

    /// Block in-buffers: all checked first; hints only while an id is started. Returns the
    /// pages hinted.
    fn blocks(
        &mut self,
        cx: &Cx,
        chain: &DescriptorChain,
        fx: &mut impl Effects,
    ) -> Result<u64, BalloonError> {
        let max_pfn = cx.mem.pages();
        let blocks = chain.writable();
        for s in blocks {
            decode_segment(s, max_pfn, QUEUE)?;
        }
        let c = cx.hints;
        let nblocks = blocks.len() as u64;
        let FreePageStatus::Start(id) = self.status else {
            add(&c.stale_blocks, nblocks);
            return Ok(0);
        };
        let mut pages = 0;
        for s in blocks {
            let r = decode_segment(s, max_pfn, QUEUE)?;
            pages += r.len;
            fx.hint(HintEvent::Pages {
                id: u64::from(id),
                pfn: r.start,
                npages: r.len,
            });
        }
        add(&c.hint_blocks, nblocks);
        add(&c.hint_pages, pages);
        Ok(pages)
    }
}

/// One device-writable segment as a block of whole pages inside guest RAM.
pub(crate) fn decode_segment(
    s: &crate::virtq::Segment,
    max_pfn: u64,
    queue: QueueRole,
) -> Result<crate::memory::PageRange, HintError> {
    let block = HintBlock {
        addr: s.addr.raw(),
        len: u64::from(s.len),
    };
    decode_block(block, max_pfn).map_err(|source| HintError::BadBlock { queue, source })
}

impl BalloonDevice {
    fn free_page_queue(&self) -> Result<u16, BalloonError> {
        self.features
            .and_then(|f| f.queues().free_page)
            .ok_or_else(|| {
                HintError::NotNegotiated {
                    feature: "FREE_PAGE_HINT",
                }
                .into()
            })
    }

    fn free_page_handler(&mut self) -> Result<&mut FreePageHandler, BalloonError> {
        self.free_page_queue()?;
        match self.handler_mut(QUEUE) {
            Some(Handler::FreePage(h)) => Ok(h),
            _ => Err(BalloonError::NotReady {
                reason: format!("no {QUEUE} queue"),
            }),
        }
    }

    fn write_cmd_id(&mut self, id: u32, status: FreePageStatus) -> Result<(), BalloonError> {
        self.free_page_handler()?.status = status;
        self.transport
            .device_write_config_u32(CONFIG_FREE_PAGE_HINT_CMD_ID, id)?;
        Ok(())
    }

    /// Asks the guest for free page hints under `cmd_id` (≥ 2): writes it into config space
    /// and sends a config interrupt. Blocks count once the guest acknowledges the id.
    ///
    /// An id may be issued again only after the driver sent STOP for it (spec).
    pub fn start_free_page_hint(&mut self, cmd_id: u32) -> Result<(), BalloonError> {
        self.free_page_handler()?.start(cmd_id)?;
        add(&self.hints.counters.cmd_ids_issued, 1);
        self.write_cmd_id(cmd_id, FreePageStatus::Requested(cmd_id))
    }

    /// Stops hinting (config reads STOP): blocks arriving from now on are ignored. QEMU does
    /// this before every dirty-log sync (protocol.md §4.2).
    pub fn stop_free_page_hint(&mut self) -> Result<(), BalloonError> {
        self.write_cmd_id(CMD_ID_STOP, FreePageStatus::Stop)
    }

    /// The host no longer needs hints (config reads DONE): the guest may reuse its blocks.
    /// Sent at the end of a migration, whether it succeeded, failed or was cancelled.
    pub fn free_page_hint_done(&mut self) -> Result<(), BalloonError> {
        self.write_cmd_id(VIRTIO_BALLOON_CMD_ID_DONE, FreePageStatus::Done)
    }

    /// The free page hinting status.
    pub fn free_page_status(&self) -> FreePageStatus {
        match self.handler(QUEUE) {
            Some(Handler::FreePage(h)) => h.status,
            _ => FreePageStatus::default(),
        }
    }
}
