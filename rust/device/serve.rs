//! The one serve loop every queue shares (virtio 1.2 §2.7.13, §2.7.14): pop a bounded number of
//! chains, let the queue's handler decide, apply its effects, add used entries, interrupt if the
//! driver wants one; a broken ring puts the device in needs-reset (§2.1.2).

use std::sync::Arc;

use super::handler::{Cx, Effects, Handler};
use super::hints::HintEvent;
use super::BalloonDevice;
use crate::abi::StatsSample;
use crate::abi::CONFIG_POISON_VAL;
use crate::device::counters::add;
use crate::device::error::BalloonError;
use crate::device::role::QueueRole;
use crate::memory::{DiscardMode, GuestAddress, PageRange, PAGE_SIZE};
use crate::virtq::{DeviceQueue, VirtqError};

/// What one run of a queue handler did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Buffers popped.
    pub buffers: u64,
    /// Buffers refused (returned used with length 0).
    pub bad_buffers: u64,
    /// Pages moved in or out of the balloon (or hinted, reported).
    pub pages: u64,
    /// Whether an interrupt was sent.
    pub interrupted: bool,
}

/// One present queue: its role, its device end and its handler.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) role: QueueRole,
    pub(super) queue: DeviceQueue,
    pub(super) handler: Handler,
}

impl Effects for BalloonDevice {
    fn pages(&mut self, role: QueueRole, runs: &[PageRange]) -> u64 {
        match role {
            QueueRole::Inflate => self.inflate(runs),
            _ => self.deflate(runs),
        }
    }

    fn discard_reported(&mut self, runs: &[PageRange]) {
        // Inside guest RAM: checked by the handler, and again by the memory layer's discard,
        // the same backend inflate uses.
        self.discard(runs, DiscardMode::PerRun);
        for r in runs {
            // The pages now read as zeros: logged like a device write.
            self.hints.wrote(r.first().addr(), r.len * PAGE_SIZE);
        }
    }

    fn hint(&mut self, event: HintEvent) {
        self.hints.emit(event);
    }

    fn wrote(&mut self, addr: GuestAddress, len: u64) {
        self.hints.wrote(addr, len);
    }

    fn refuse(&mut self, e: BalloonError) {
        self.log(e);
    }

    fn sample(&mut self) -> &mut StatsSample {
        &mut self.stats
    }
}

impl BalloonDevice {
    /// Serves every queue whose kick notifier fired since the last call; returns the number
    /// of queues served. This is what a kick does in synchronous mode.
    pub fn process_kicked(&mut self) -> Result<u32, BalloonError> {
        self.follow_driver();
        let mut served = 0;
        for i in 0..self.num_queues() {
            let kicked = match &self.slots[usize::from(i)] {
                Some(s) => {
                    s.queue
                        .kick_notifier()
                        .take()
                        .map_err(|source| BalloonError::Queue {
                            queue: s.role,
                            source,
                        })?
                }
                None => 0,
            };
            if kicked > 0 {
                self.process_queue(i)?;
                served += 1;
            }
        }
        Ok(served)
    }

    /// Serves queue `index`: pops every available buffer and handles it by the queue's role.
    ///
    /// Bad buffers are logged ([`BalloonDevice::errors`]) and returned used with length 0; the
    /// call still succeeds. If the ring itself is broken the queue goes to needs-reset, the
    /// device logs the cause, sets DEVICE_NEEDS_RESET and returns [`BalloonError::NeedsReset`].
    pub fn process_queue(&mut self, index: u16) -> Result<QueueRun, BalloonError> {
        self.follow_driver();
        add(&self.counters.queue_runs, 1);
        self.with_slot(index, |dev, slot| {
            dev.with_cx(slot.role, |cx, dev| dev.serve(cx, slot))
        })
    }

    /// Runs `f` on queue `index`'s slot, taken out of the device meanwhile (so the handler and
    /// the device, which applies its effects, can both be borrowed); a broken ring sets
    /// DEVICE_NEEDS_RESET.
    fn with_slot<T>(
        &mut self,
        index: u16,
        f: impl FnOnce(&mut BalloonDevice, &mut Slot) -> Result<T, BalloonError>,
    ) -> Result<T, BalloonError> {
        let Some(mut slot) = self
            .slots
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return Err(BalloonError::NotReady {
                reason: format!("no queue {index}"),
            });
        };
        let result = f(self, &mut slot);
        let role = slot.role;
        self.slots[usize::from(index)] = Some(slot);
        match result {
            Err(e) if e.is_queue_broken() => {
                // Log the cause once; later calls on the dead queue only say it needs reset.
                let first = !matches!(
                    e,
                    BalloonError::Queue {
                        source: VirtqError::NeedsReset,
                        ..
                    }
                );
                if first {
                    add(&self.counters.queue_errors, 1);
                    self.log(e);
                    self.transport.set_needs_reset()?;
                }
                Err(BalloonError::NeedsReset { queue: role })
            }
            r => r,
        }
    }

    /// Runs `f` with what handlers read while they serve: guest RAM, the encoding, the
    /// counters and, for the reporting queue, whether the guest poisons free pages.
    fn with_cx<R>(
        &mut self,
        role: QueueRole,
        f: impl FnOnce(&Cx<'_>, &mut BalloonDevice) -> R,
    ) -> R {
        // Only the reporting handler needs `poison_val` (poisoned free pages are kept).
        let poisoned = role == QueueRole::Reporting
            && self.features.is_some_and(|f| f.page_poison())
            && self
                .transport
                .read_config_u32(CONFIG_POISON_VAL)
                .unwrap_or(0)
                != 0;
        let mem = Arc::clone(&self.mem);
        let (counters, hints) = (Arc::clone(&self.counters), Arc::clone(&self.hints.counters));
        let cx = Cx {
            mem: &mem,
            encoding: self.encoding,
            counters: &counters,
            hints: &hints,
            poisoned,
        };
        f(&cx, self)
    }

    /// The generic loop: at most a queue's worth of pops (a guest that keeps adding cannot keep
    /// the device), each chain handed to the handler, then the used entries and one interrupt.
    fn serve(&mut self, cx: &Cx, slot: &mut Slot) -> Result<QueueRun, BalloonError> {
        let role = slot.role;
        let mut chain = std::mem::take(&mut self.chain);
        let mut used = std::mem::take(&mut self.used);
        used.clear();
        let mut run = QueueRun::default();
        let budget = u64::from(slot.queue.size());
        let popped = loop {
            if run.buffers >= budget {
                break Ok(());
            }
            match slot.queue.pop_into(&mut chain) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
            run.buffers += 1;
            let step = slot.handler.handle(cx, &chain, self);
            run.pages += step.pages;
            run.bad_buffers += u64::from(step.bad);
            used.extend(step.give_back.map(|h| (h, 0)));
            used.extend(step.used.map(|len| (chain.head(), len)));
        };
        self.chain = chain;
        // Apply what decoded even if the ring broke after it: those buffers were valid.
        let fin = slot.handler.finish(cx, self, popped.is_ok());
        run.pages += fin.pages;
        used.extend(fin.reply);
        let broken = |source| BalloonError::Queue {
            queue: role,
            source,
        };
        let result = popped.map_err(broken).and_then(|()| {
            // Every buffer goes back only after its effects were applied.
            for &(head, len) in &used {
                slot.queue.add_used(head, len).map_err(broken)?;
            }
            if !used.is_empty() {
                run.interrupted = self.signal(&mut slot.queue, role)?;
            }
            Ok(run)
        });
        self.used = used;
        result
    }

    /// Interrupts for used buffers if the driver wants one (§2.7.10); counts it.
    fn signal(&self, queue: &mut DeviceQueue, role: QueueRole) -> Result<bool, BalloonError> {
        let sent = queue.signal_used().map_err(|source| BalloonError::Queue {
            queue: role,
            source,
        })?;
        if sent {
            add(&self.counters.interrupts, 1);
        }
        Ok(sent)
    }

    /// A host request on queue `index` (return the stats buffer, send an unused-page request):
    /// `f` asks the handler for a held buffer to use, which goes back with one interrupt.
    /// Returns whether a buffer went back.
    pub(super) fn host_reply(
        &mut self,
        index: u16,
        f: impl FnOnce(&mut Handler, &Cx<'_>, &mut BalloonDevice) -> Option<(u16, u32)>,
    ) -> Result<bool, BalloonError> {
        self.with_slot(index, |dev, slot| {
            let role = slot.role;
            let reply = dev.with_cx(role, |cx, dev| f(&mut slot.handler, cx, dev));
            let Some((head, len)) = reply else {
                return Ok(false);
            };
            slot.queue
                .add_used(head, len)
                .map_err(|source| BalloonError::Queue {
                    queue: role,
                    source,
                })?;
            dev.signal(&mut slot.queue, role)?;
            Ok(true)
        })
    }

    /// The handler of the queue with `role`, if present.
    pub(super) fn handler(&self, role: QueueRole) -> Option<&Handler> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.role == role)
            .map(|s| &s.handler)
    }

    /// The handler of the queue with `role`, if present, to change.
    pub(super) fn handler_mut(&mut self, role: QueueRole) -> Option<&mut Handler> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|s| s.role == role)
            .map(|s| &mut s.handler)
    }
}
