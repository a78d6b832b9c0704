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

use super::hints::{add, remember, FreePageStatus, HintError, HintEvent};
use crate::abi::{
    CONFIG_FREE_PAGE_HINT_CMD_ID, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_MIN,
};
use crate::device::BalloonError;
use crate::memory::PageRange;
use crate::pages::hint::{decode_block, decode_cmd_id, CMD_ID_LEN, CMD_ID_STOP};
use crate::pages::HintBlock;

use super::BalloonDevice;

const QUEUE: &str = "free-page";

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

    fn write_cmd_id(&mut self, id: u32, status: FreePageStatus) -> Result<(), BalloonError> {
        self.hints.free_page.status = status;
        self.transport
            .device_write_config_u32(CONFIG_FREE_PAGE_HINT_CMD_ID, id)?;
        Ok(())
    }

    /// Asks the guest for free page hints under `cmd_id` (≥ 2): writes it into config space
    /// and sends a config interrupt. Blocks count once the guest acknowledges the id.
    ///
    /// An id may be issued again only after the driver sent STOP for it (spec).
    pub fn start_free_page_hint(&mut self, cmd_id: u32) -> Result<(), BalloonError> {
        self.free_page_queue()?;
        let fp = &self.hints.free_page;
        let reused = fp.last_id == Some(cmd_id) && !fp.stop_seen;
        if cmd_id < VIRTIO_BALLOON_CMD_ID_MIN || reused {
            return Err(HintError::CmdIdNotAllowed { cmd_id }.into());
        }
        let fp = &mut self.hints.free_page;
        if let Some(old) = fp.last_id.replace(cmd_id) {
            if old != cmd_id {
                remember(&mut fp.retired, old);
            }
        }
        fp.stop_seen = false;
        add(&self.hints.counters.cmd_ids_issued, 1);
        self.write_cmd_id(cmd_id, FreePageStatus::Requested(cmd_id))
    }

    /// Stops hinting (config reads STOP): blocks arriving from now on are ignored. QEMU does
    /// this before every dirty-log sync (protocol.md §4.2).
    pub fn stop_free_page_hint(&mut self) -> Result<(), BalloonError> {
        self.free_page_queue()?;
        self.write_cmd_id(CMD_ID_STOP, FreePageStatus::Stop)
    }

    /// The host no longer needs hints (config reads DONE): the guest may reuse its blocks.
    /// Sent at the end of a migration, whether it succeeded, failed or was cancelled.
    pub fn free_page_hint_done(&mut self) -> Result<(), BalloonError> {
        self.free_page_queue()?;
        self.write_cmd_id(VIRTIO_BALLOON_CMD_ID_DONE, FreePageStatus::Done)
    }

    /// The free page hinting status.
    pub fn free_page_status(&self) -> FreePageStatus {
        self.hints.free_page.status
    }

    /// Serves the free page queue: command ids and blocks, each buffer used with length 0.
    pub(super) fn process_free_page(
        &mut self,
        index: u16,
    ) -> Result<super::QueueRun, BalloonError> {
        let broken = |source| BalloonError::Queue {
            queue: QUEUE,
            source,
        };
        let mut run = super::QueueRun::default();
        let mut chain = std::mem::take(&mut self.chain);
        let mut blocks: Vec<HintBlock> = Vec::new();
        let res = loop {
            match self.pop_bounded(index, run.buffers, &mut chain) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(broken(e)),
            }
            run.buffers += 1;
            let (readable, writable) = (chain.readable(), chain.writable());
            let outcome = match (readable.first(), writable.first()) {
                (Some(_), None) => self.free_page_cmd(&chain),
                (None, Some(_)) => {
                    blocks.clear();
                    blocks.extend(writable.iter().map(|s| HintBlock {
                        addr: s.addr.raw(),
                        len: u64::from(s.len),
                    }));
                    self.free_page_blocks(&blocks).map(|n| run.pages += n)
                }
                (Some(r), Some(_)) => Err(HintError::Direction {
                    queue: QUEUE,
                    addr: r.addr.raw(),
                    len: r.len,
                    found: "mixed",
                    expected: "a command id out-buffer or block in-buffers",
                }
                .into()),
                (None, None) => Ok(()),
            };
            if let Err(e) = outcome {
                run.bad_buffers += 1;
                self.hint_refused(e);
            }
            if let Err(e) = self.queue(index).add_used(chain.head(), 0) {
                break Err(broken(e));
            }
        };
        self.chain = chain;
        res?;
        if run.buffers > 0 {
            run.interrupted = self.signal_hint_queue(index, QUEUE)?;
        }
        Ok(run)
    }

    /// A command id out-buffer: the guest's start ack or its STOP.
    fn free_page_cmd(&mut self, chain: &crate::virtq::DescriptorChain) -> Result<(), BalloonError> {
        let len = chain.readable_len();
        // Refuse anything but 4 bytes before reading a byte of it.
        if len != CMD_ID_LEN as u64 {
            let source = crate::pages::PagesError::CmdIdLength {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                expected: CMD_ID_LEN,
            };
            return Err(HintError::BadCmdId { source }.into());
        }
        self.scratch.clear();
        chain
            .read_into(&self.mem, &mut self.scratch)
            .map_err(|source| BalloonError::Queue {
                queue: QUEUE,
                source,
            })?;
        let b = &self.scratch;
        let cmd_id =
            decode_cmd_id(&[b.as_slice()]).map_err(|source| HintError::BadCmdId { source })?;
        let c = &self.hints.counters;
        let fp = &mut self.hints.free_page;
        match fp.status {
            FreePageStatus::Requested(id) if cmd_id == id => {
                fp.status = FreePageStatus::Start(id);
                add(&c.cmd_id_acks, 1);
                Ok(())
            }
            FreePageStatus::Start(id) if cmd_id == CMD_ID_STOP => {
                fp.status = FreePageStatus::Stop;
                fp.stop_seen = true;
                add(&c.guest_stops, 1);
                self.hints.emit(HintEvent::Finished { id: u64::from(id) });
                Ok(())
            }
            _ if cmd_id == CMD_ID_STOP => {
                // The guest's STOP after the host stopped (or for an older id): the driver is
                // done with whatever it was answering.
                fp.stop_seen = true;
                add(&c.guest_stops, 1);
                Ok(())
            }
            status => {
                add(&c.stale_cmd_ids, 1);
                if fp.last_id == Some(cmd_id) || fp.retired.contains(&cmd_id) {
                    // An ack that crossed the host's STOP or a newer id: expected.
                    Ok(())
                } else {
                    Err(HintError::UnknownCmdId { cmd_id, status }.into())
                }
            }
        }
    }

    /// Block in-buffers: all checked first; hints only while an id is started.
    fn free_page_blocks(&mut self, blocks: &[HintBlock]) -> Result<u64, BalloonError> {
        let max_pfn = self.mem.pages();
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        let checked = blocks.iter().try_for_each(|&b| {
            let r = decode_block(b, max_pfn).map_err(|source| HintError::BadBlock {
                queue: QUEUE,
                source,
            })?;
            runs.push(r);
            Ok::<(), HintError>(())
        });
        let res = checked.map_err(BalloonError::from).map(|()| {
            let c = &self.hints.counters;
            let FreePageStatus::Start(id) = self.hints.free_page.status else {
                add(&c.stale_blocks, blocks.len() as u64);
                return 0;
            };
            let mut pages = 0;
            for &PageRange {
                start: pfn,
                len: npages,
            } in &runs
            {
                pages += npages;
                self.hints.emit(HintEvent::Pages {
                    id: u64::from(id),
                    pfn,
                    npages,
                });
            }
            add(&c.hint_blocks, blocks.len() as u64);
            add(&c.hint_pages, pages);
            pages
        });
        self.runs = runs;
        res
    }
}
