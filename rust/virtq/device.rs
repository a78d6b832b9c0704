//! The device side of a split virtqueue: what a VMM does (§2.7.12, §2.7.14 from the other end).
//!
//! Everything read from guest memory is hostile. A protocol violation returns its own
//! [`VirtqError`] variant and marks the queue as needing reset (DEVICE_NEEDS_RESET, §2.1.2);
//! from then on every operation returns [`VirtqError::NeedsReset`] until [`DeviceQueue::reset`].
//! No access ever leaves guest RAM: the rings are checked at construction, every buffer at pop.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{GuestAddress, GuestMemory};

use super::chain::{DescriptorChain, Segment};
use super::defs::{
    has_feature, DESC_SIZE, MAX_CHAIN_BYTES, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
};
use super::desc::Descriptor;
use super::error::{Result, VirtqError};
use super::event_idx::PeerRequest;
use super::layout::QueueLayout;
use super::notify::Notifier;
use super::write_log::{WriteLog, WriteLogSlot};

/// The device end of one split virtqueue in guest memory.
#[derive(Debug)]
pub struct DeviceQueue {
    mem: Arc<GuestMemory>,
    layout: QueueLayout,
    features: u64,
    event_idx: bool,
    indirect: bool,
    /// Next available ring entry to read.
    next_avail: Wrapping<u16>,
    /// Last `avail.idx` read: entries up to it are known published, saving an atomic load.
    avail_shadow: Wrapping<u16>,
    /// Next used ring entry to write (and the `used.idx` last published).
    next_used: Wrapping<u16>,
    /// `next_used` when the interrupt decision was last taken.
    signalled_used: Wrapping<u16>,
    broken: bool,
    kick: Notifier,
    interrupt: Notifier,
    /// Where the device's writes into guest RAM are logged (a migration's dirty log).
    write_log: WriteLogSlot,
}

impl DeviceQueue {
    /// The device end of the queue at `layout` in `mem`, with the negotiated `features`
    /// (only VIRTIO_F_INDIRECT_DESC and VIRTIO_F_EVENT_IDX matter here; rings are always
    /// little-endian as with VIRTIO_F_VERSION_1).
    ///
    /// Reads nothing yet: the driver owns ring initialisation. Notifiers start as unconnected
    /// polling counters; see [`DeviceQueue::set_notifiers`].
    pub fn new(mem: Arc<GuestMemory>, layout: QueueLayout, features: u64) -> Result<DeviceQueue> {
        layout.check_memory(&mem)?;
        Ok(DeviceQueue {
            mem,
            layout,
            features,
            event_idx: has_feature(features, VIRTIO_F_EVENT_IDX),
            indirect: has_feature(features, VIRTIO_F_INDIRECT_DESC),
            next_avail: Wrapping(0),
            avail_shadow: Wrapping(0),
            next_used: Wrapping(0),
            signalled_used: Wrapping(0),
            broken: false,
            kick: Notifier::polling(),
            interrupt: Notifier::polling(),
            write_log: WriteLogSlot::default(),
        })
    }

    /// Sets where this end logs every byte it writes into guest RAM (used elements, `used.idx`,
    /// `used.flags`, `avail_event`), on success and error paths alike; `None` logs nothing.
    pub fn set_write_log(&mut self, log: Option<WriteLog>) {
        self.write_log = WriteLogSlot(log);
    }

    super::accessors::queue_end_accessors!();

    /// Whether a driver error put the queue in needs-reset (virtio DEVICE_NEEDS_RESET, 0x40).
    pub fn needs_reset(&self) -> bool {
        self.broken
    }

    /// Next available ring index the device will read.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Next used ring index the device will write (the last `used.idx` published).
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Restores ring positions, e.g. on a migration destination or after a device reset that
    /// the driver resumes from.
    pub fn set_indices(&mut self, next_avail: u16, next_used: u16) {
        self.next_avail = Wrapping(next_avail);
        self.avail_shadow = Wrapping(next_avail);
        self.next_used = Wrapping(next_used);
        self.signalled_used = Wrapping(next_used);
    }

    /// Back to the state after construction: indices 0, needs-reset cleared (the driver must
    /// re-initialise the rings, §2.1.2).
    pub fn reset(&mut self) {
        self.set_indices(0, 0);
        self.broken = false;
    }

    fn fail<T>(&mut self, e: VirtqError) -> Result<T> {
        self.broken = true;
        Err(e)
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(VirtqError::NeedsReset);
        }
        Ok(())
    }

    /// Reads `avail.idx` and checks it against `next_avail`.
    fn load_avail_idx(&mut self) -> Result<Wrapping<u16>> {
        // Acquire: pairs with the driver's Release store of avail.idx, so the ring entries and
        // descriptors it wrote before are visible to the reads that follow (§2.7.13.3).
        let idx = Wrapping(
            self.mem
                .load_u16(self.layout.avail_idx(), Ordering::Acquire)?,
        );
        // The driver can only be at most a queue's worth of entries ahead (§2.7.13.3).
        if (idx - self.next_avail).0 > self.layout.size() {
            return self.fail(VirtqError::AvailIndexAhead {
                avail_idx: idx.0,
                next_avail: self.next_avail.0,
                size: self.layout.size(),
            });
        }
        self.avail_shadow = idx;
        Ok(idx)
    }

    /// Available chains not yet popped.
    pub fn pending(&mut self) -> Result<u16> {
        self.check_usable()?;
        Ok((self.load_avail_idx()? - self.next_avail).0)
    }

    /// Pops the next available chain into `chain` (reusing its storage); `Ok(false)` if the
    /// driver has published nothing new.
    pub fn pop_into(&mut self, chain: &mut DescriptorChain) -> Result<bool> {
        self.check_usable()?;
        if self.next_avail == self.avail_shadow && self.load_avail_idx()? == self.next_avail {
            return Ok(false);
        }
        let size = self.layout.size();
        // Size is a power of two, so the mask is the modulo (§2.7.6).
        let slot = self.next_avail.0 & (size - 1);
        // Ordered after the Acquire load of avail.idx above; alignment was checked at setup.
        let head = self
            .mem
            .load_u16(self.layout.avail_entry(slot), Ordering::Relaxed)?;
        if head >= size {
            return self.fail(VirtqError::HeadOutOfRange { head, size });
        }
        if let Err(e) = self.walk(head, chain) {
            return self.fail(e);
        }
        self.next_avail += Wrapping(1);
        Ok(true)
    }

    /// Pops the next available chain, validated; `Ok(None)` if there is none.
    pub fn pop(&mut self) -> Result<Option<DescriptorChain>> {
        let mut chain = DescriptorChain::new();
        Ok(self.pop_into(&mut chain)?.then_some(chain))
    }

    /// Pops the next chain of a queue whose requests the device only reads (e.g. the balloon's
    /// inflate and deflate queues): a device-writable buffer is a driver error
    /// ([`VirtqError::UnexpectedWritable`]) that puts the queue in needs-reset.
    pub fn pop_readable_only(&mut self) -> Result<Option<DescriptorChain>> {
        let chain = self.pop()?;
        if let Some(c) = &chain {
            if let Err(e) = c.require_readable_only() {
                return self.fail(e);
            }
        }
        Ok(chain)
    }

    /// Steps back over the last popped chain so the next pop returns it again (for a device that
    /// popped a request it cannot serve yet). Only valid right after a successful pop.
    pub fn undo_pop(&mut self) {
        self.next_avail -= Wrapping(1);
    }

    /// Walks the chain at `head`, following NEXT and at most one indirect table.
    fn walk(&self, head: u16, chain: &mut DescriptorChain) -> Result<()> {
        let size = self.layout.size();
        chain.reset(head);
        let mut total = 0u64;
        let mut index = head;
        // A chain in the main table visits each descriptor at most once; more means a loop
        // (§2.7.5.2).
        let mut visited = 0u16;
        loop {
            if visited == size {
                return Err(VirtqError::ChainTooLong {
                    limit: u32::from(size),
                });
            }
            visited += 1;
            let d = Descriptor::read_from(&self.mem, self.layout.desc(index))?;
            if d.is_indirect() {
                if !self.indirect {
                    return Err(VirtqError::IndirectNotNegotiated { index });
                }
                if d.has_next() {
                    return Err(VirtqError::IndirectWithNext { index });
                }
                // The WRITE flag of the table's own descriptor is ignored (§2.7.5.3.2).
                return self.walk_indirect(&d, chain, &mut total);
            }
            self.push(chain, &d, &mut total)?;
            if !d.has_next() {
                return Ok(());
            }
            if d.next >= size {
                return Err(VirtqError::NextOutOfRange {
                    next: d.next,
                    limit: u32::from(size),
                });
            }
            index = d.next;
        }
    }

    fn walk_indirect(
        &self,
        table: &Descriptor,
        chain: &mut DescriptorChain,
        total: &mut u64,
    ) -> Result<()> {
        if table.len == 0 {
            return Err(VirtqError::IndirectTableEmpty { addr: table.addr });
        }
        if u64::from(table.len) % DESC_SIZE != 0 {
            return Err(VirtqError::IndirectTableLength { len: table.len });
        }
        self.check_buffer(table.addr, table.len)?;
        let entries = u64::from(table.len) / DESC_SIZE;
        // The table starts at entry 0 (§2.7.5.3).
        let mut i = 0u16;
        loop {
            // In range: `i < entries` and the whole table lies in guest RAM (checked above).
            let at = GuestAddress(table.addr + DESC_SIZE * u64::from(i));
            let d = Descriptor::read_from(&self.mem, at)?;
            if d.is_indirect() {
                return Err(VirtqError::NestedIndirect { index: i });
            }
            // `push` bounds the chain at the queue size, which also stops loops in the table.
            self.push(chain, &d, total)?;
            if !d.has_next() {
                return Ok(());
            }
            if u64::from(d.next) >= entries {
                return Err(VirtqError::NextOutOfRange {
                    next: d.next,
                    limit: u32::try_from(entries).unwrap_or(u32::MAX),
                });
            }
            i = d.next;
        }
    }

    /// Checks that `[addr, addr + len)` is addressable and inside guest RAM.
    #[inline]
    fn check_buffer(&self, addr: u64, len: u32) -> Result<()> {
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(VirtqError::BufferAddressOverflow { addr, len });
        }
        if !self.mem.contains(GuestAddress(addr), u64::from(len)) {
            return Err(VirtqError::BufferOutsideMemory { addr, len });
        }
        Ok(())
    }

    /// Validates one data descriptor and appends it to the chain.
    #[inline]
    fn push(&self, chain: &mut DescriptorChain, d: &Descriptor, total: &mut u64) -> Result<()> {
        let size = self.layout.size();
        if chain.len() >= usize::from(size) {
            return Err(VirtqError::ChainTooLong {
                limit: u32::from(size),
            });
        }
        self.check_buffer(d.addr, d.len)?;
        *total += u64::from(d.len);
        if *total > MAX_CHAIN_BYTES {
            return Err(VirtqError::ChainBytesOverflow { total: *total });
        }
        let writable = d.is_write_only();
        // Readable buffers must all come before writable ones (§2.7.4.2).
        if !writable && chain.has_writable() {
            // < size <= 32768, so it never saturates.
            let index = u16::try_from(chain.len()).unwrap_or(u16::MAX);
            return Err(VirtqError::WritableBeforeReadable { index });
        }
        chain.push(Segment {
            addr: GuestAddress(d.addr),
            len: d.len,
            writable,
        });
        Ok(())
    }

    /// Returns chain `head` to the driver with `len` bytes written into its writable buffers
    /// (§2.7.8): writes the used element, then publishes it with a Release store of `used.idx`.
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<()> {
        self.check_usable()?;
        let size = self.layout.size();
        if head >= size {
            return Err(VirtqError::UsedHeadOutOfRange { head, size });
        }
        let slot = self.next_used.0 & (size - 1);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = self.layout.used_elem(slot);
        let written = self.mem.write(at, &elem);
        // Logged even if the write failed part-way: a page logged in vain is only re-sent.
        self.write_log.wrote(at, elem.len() as u64);
        written?;
        self.next_used += Wrapping(1);
        // Release: the element (and the bytes written into the buffers) must be visible before
        // the driver sees the new index (§2.7.8.2: len is set before idx).
        let stored =
            self.mem
                .store_u16(self.layout.used_idx(), self.next_used.0, Ordering::Release);
        self.write_log.wrote(self.layout.used_idx(), 2);
        stored?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the buffers used since the last call
    /// (§2.7.7.2): with EVENT_IDX, whether `used_event` was passed; otherwise whether
    /// `avail.flags` lacks NO_INTERRUPT. False if nothing was used since the last call.
    pub fn needs_interrupt(&mut self) -> Result<bool> {
        self.check_usable()?;
        // The used.idx store must be visible before we read the driver's suppression fields,
        // or we could both decide the other one will act (store-load: a full fence).
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return Ok(false);
        }
        let driver = PeerRequest {
            event_idx: self.event_idx.then(|| self.layout.used_event()),
            flags: self.layout.avail_flags(),
            decline: VIRTQ_AVAIL_F_NO_INTERRUPT,
        };
        Ok(driver.wants(&self.mem, new.0, old.0)?)
    }

    /// Signals the interrupt notifier if [`DeviceQueue::needs_interrupt`]; returns whether it did.
    pub fn signal_used(&mut self) -> Result<bool> {
        let needed = self.needs_interrupt()?;
        self.interrupt.notify_if(needed)
    }

    /// Asks the driver to kick again for new buffers (§2.7.10) and returns whether buffers
    /// arrived meanwhile, in which case the caller must pop them instead of sleeping.
    pub fn enable_notifications(&mut self) -> Result<bool> {
        self.check_usable()?;
        if self.event_idx {
            // "Kick me when you publish the entry at next_avail."
            let at = self.layout.avail_event();
            let stored = self.mem.store_u16(at, self.next_avail.0, Ordering::Relaxed);
            self.write_log.wrote(at, 2);
            stored?;
        } else {
            let at = self.layout.used_flags();
            let stored = self.mem.store_u16(at, 0, Ordering::Relaxed);
            self.write_log.wrote(at, 2);
            stored?;
        }
        // Our store must be visible before we re-read avail.idx; otherwise a driver that added
        // a buffer just before could skip its kick while we go to sleep (store-load: full fence).
        fence(Ordering::SeqCst);
        let idx = self
            .mem
            .load_u16(self.layout.avail_idx(), Ordering::Acquire)?;
        Ok(idx != self.next_avail.0)
    }

    /// Tells the driver not to kick (§2.7.10): sets `used.flags` NO_NOTIFY. With EVENT_IDX,
    /// `avail_event` is simply left behind the ring, which has the same effect.
    pub fn disable_notifications(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.event_idx {
            let at = self.layout.used_flags();
            let stored = self
                .mem
                .store_u16(at, VIRTQ_USED_F_NO_NOTIFY, Ordering::Relaxed);
            self.write_log.wrote(at, 2);
            stored?;
        }
        Ok(())
    }

    /// Waits for a kick up to `timeout` (`None`: forever); returns the count taken (0 on timeout).
    pub fn wait_kick(&self, timeout: Option<Duration>) -> Result<u64> {
        self.kick.wait(timeout)
    }
}
