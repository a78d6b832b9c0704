//! The driver side of a split virtqueue: what a guest kernel does (§2.7.13, §2.7.14).
//!
//! Free descriptors are tracked in a host-side shadow of the `next` links (never read back from
//! the table, which the device could scribble on). Indirect tables need guest memory of their
//! own: the driver reserves one fixed-size table slot per descriptor, in an area the caller sets
//! with [`DriverQueue::set_indirect_area`]. A chain that goes indirect uses exactly one table
//! descriptor, its head, so the head index picks the slot and no allocator is needed.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{GuestAddress, GuestMemory};

use super::chain::Segment;
use super::defs::{
    has_feature, DESC_SIZE, DESC_TABLE_ALIGN, MAX_CHAIN_BYTES, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};
use super::desc::Descriptor;
use super::error::{Result, VirtqError};
use super::event_idx::PeerRequest;
use super::layout::{avail_ring_bytes, desc_table_bytes, used_ring_bytes, QueueLayout};
use super::notify::Notifier;

/// Guest memory reserved for the driver's indirect tables: one slot of `entries_per_chain`
/// descriptors per queue entry, `size * entries_per_chain * 16` bytes from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndirectArea {
    /// Guest address of slot 0 (16-byte aligned).
    pub base: GuestAddress,
    /// Descriptors per slot: the longest chain that can go indirect.
    pub entries_per_chain: u16,
}

impl IndirectArea {
    /// Bytes the area needs for a queue of `size` entries.
    pub fn bytes(size: u16, entries_per_chain: u16) -> u64 {
        u64::from(size) * u64::from(entries_per_chain) * DESC_SIZE
    }
}

/// A chain the device returned (§2.7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index `add` returned for the chain.
    pub head: u16,
    /// Bytes the device says it wrote into the writable buffers.
    pub len: u32,
}

/// The driver end of one split virtqueue in guest memory.
#[derive(Debug)]
pub struct DriverQueue {
    mem: Arc<GuestMemory>,
    layout: QueueLayout,
    features: u64,
    event_idx: bool,
    indirect: Option<IndirectArea>,
    /// Shadow `next` links: the free list, and the links of chains in flight.
    desc_next: Vec<u16>,
    /// Per head: table descriptors the chain holds (0: not an outstanding head).
    chain_descs: Vec<u16>,
    free_head: u16,
    num_free: u16,
    in_flight: usize,
    /// The `avail.idx` published last.
    avail_idx: Wrapping<u16>,
    /// Chains published since the last kick decision.
    num_added: u32,
    /// Next used ring entry to read.
    last_used: Wrapping<u16>,
    /// Last `used.idx` read.
    used_shadow: Wrapping<u16>,
    interrupts_enabled: bool,
    kick: Notifier,
    interrupt: Notifier,
}

impl DriverQueue {
    /// The driver end of the queue at `layout` in `mem`, with the negotiated `features`.
    ///
    /// Initialises the rings as a driver does at queue setup: zeroes the descriptor table and
    /// both rings (flags, indices and event fields 0, §2.7.8.3) and builds the free list.
    pub fn new(mem: Arc<GuestMemory>, layout: QueueLayout, features: u64) -> Result<DriverQueue> {
        layout.check_memory(&mem)?;
        let size = layout.size();
        mem.fill(layout.desc_table(), desc_table_bytes(size), 0)?;
        mem.fill(layout.avail_ring(), avail_ring_bytes(size), 0)?;
        mem.fill(layout.used_ring(), used_ring_bytes(size), 0)?;
        // Slot i links to i + 1; the last links to `size`, an out-of-range end marker.
        let desc_next = (1..=size).collect();
        Ok(DriverQueue {
            mem,
            layout,
            features,
            event_idx: has_feature(features, VIRTIO_F_EVENT_IDX),
            indirect: None,
            desc_next,
            chain_descs: vec![0; usize::from(size)],
            free_head: 0,
            num_free: size,
            in_flight: 0,
            avail_idx: Wrapping(0),
            num_added: 0,
            last_used: Wrapping(0),
            used_shadow: Wrapping(0),
            interrupts_enabled: true,
            kick: Notifier::polling(),
            interrupt: Notifier::polling(),
        })
    }

    /// Reserves `area` for indirect tables. Chains of 2..=`entries_per_chain` buffers then go
    /// through a table when VIRTIO_F_INDIRECT_DESC was negotiated; without the feature the area
    /// is ignored. The area must not overlap the rings or any buffer (not checked).
    pub fn set_indirect_area(&mut self, area: IndirectArea) -> Result<()> {
        if !area.base.is_aligned(DESC_TABLE_ALIGN) {
            return Err(VirtqError::MisalignedRing {
                part: "indirect area",
                addr: area.base.raw(),
                align: DESC_TABLE_ALIGN,
            });
        }
        let len = IndirectArea::bytes(self.layout.size(), area.entries_per_chain);
        if !self.mem.contains(area.base, len) {
            return Err(VirtqError::RingOutsideMemory {
                part: "indirect area",
                addr: area.base.raw(),
                len,
            });
        }
        self.indirect = Some(area).filter(|a| {
            a.entries_per_chain > 1 && has_feature(self.features, VIRTIO_F_INDIRECT_DESC)
        });
        Ok(())
    }

    super::accessors::queue_end_accessors!();

    /// The indirect area in use, if chains can go indirect.
    pub fn indirect_area(&self) -> Option<IndirectArea> {
        self.indirect
    }

    /// Free descriptors in the table.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet returned by `pop_used`.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Adds a chain of device-readable `readable` buffers followed by device-writable `writable`
    /// ones, each `(address, length)`, and publishes it; returns its head index.
    pub fn add_chain(
        &mut self,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
    ) -> Result<u16> {
        let r = readable.len();
        self.add_with(r + writable.len(), |i| {
            if i < r {
                Segment::readable(readable[i].0, readable[i].1)
            } else {
                Segment::writable(writable[i - r].0, writable[i - r].1)
            }
        })
    }

    /// Adds a chain of `segments` (readable ones first, §2.7.4.2) and publishes it; returns its
    /// head index.
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16> {
        self.add_with(segments.len(), |i| segments[i])
    }

    fn add_with(&mut self, n: usize, seg: impl Fn(usize) -> Segment) -> Result<u16> {
        if n == 0 {
            return Err(VirtqError::EmptyChain);
        }
        // The driver rules of §2.7.5.2 and §2.7.4.2, checked so we never publish a chain a
        // strict device would reject.
        let mut total = 0u64;
        let mut seen_writable = false;
        for i in 0..n {
            let s = seg(i);
            if s.addr.raw().checked_add(u64::from(s.len)).is_none() {
                return Err(VirtqError::BufferAddressOverflow {
                    addr: s.addr.raw(),
                    len: s.len,
                });
            }
            if !self.mem.contains(s.addr, u64::from(s.len)) {
                return Err(VirtqError::BufferOutsideMemory {
                    addr: s.addr.raw(),
                    len: s.len,
                });
            }
            total += u64::from(s.len);
            if total > MAX_CHAIN_BYTES {
                return Err(VirtqError::ChainBytesOverflow { total });
            }
            if s.writable {
                seen_writable = true;
            } else if seen_writable {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                return Err(VirtqError::WritableBeforeReadable { index });
            }
        }
        let size = self.layout.size();
        // Indirect or not, no chain may be longer than the queue size (§2.7.5.3.1).
        let too_many = || VirtqError::TooManySegments {
            segments: n,
            limit: usize::from(size),
        };
        let n16 = u16::try_from(n)
            .ok()
            .filter(|&n16| n16 <= size)
            .ok_or_else(too_many)?;
        let indirect = self
            .indirect
            .filter(|a| n > 1 && n <= usize::from(a.entries_per_chain));
        let needed = if indirect.is_some() { 1 } else { n16 };
        if needed > self.num_free {
            return Err(VirtqError::QueueFull {
                needed: u32::from(needed),
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let flags = |s: &Segment| if s.writable { VIRTQ_DESC_F_WRITE } else { 0 };
        if let Some(area) = indirect {
            let table = GuestAddress(
                area.base.raw() + IndirectArea::bytes(1, area.entries_per_chain) * u64::from(head),
            );
            for i in 0..n {
                let s = seg(i);
                let last = i + 1 == n;
                // i < n <= the queue size (32768), so the next index fits.
                #[allow(clippy::cast_possible_truncation)]
                let next = if last { 0 } else { i as u16 + 1 };
                let d = Descriptor::new(
                    s.addr.raw(),
                    s.len,
                    flags(&s) | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                    next,
                );
                d.write_to(&self.mem, GuestAddress(table.raw() + DESC_SIZE * i as u64))?;
            }
            // At most 32768 descriptors of 16 bytes: 512 KiB.
            #[allow(clippy::cast_possible_truncation)]
            let table_len = (u64::from(n16) * DESC_SIZE) as u32;
            let d = Descriptor::new(table.raw(), table_len, VIRTQ_DESC_F_INDIRECT, 0);
            d.write_to(&self.mem, self.layout.desc(head))?;
            self.free_head = self.desc_next[usize::from(head)];
        } else {
            let mut idx = head;
            for i in 0..n {
                let s = seg(i);
                let next = self.desc_next[usize::from(idx)];
                let last = i + 1 == n;
                let d = Descriptor::new(
                    s.addr.raw(),
                    s.len,
                    flags(&s) | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                    if last { 0 } else { next },
                );
                d.write_to(&self.mem, self.layout.desc(idx))?;
                idx = next;
            }
            self.free_head = idx;
        }
        self.num_free -= needed;
        self.chain_descs[usize::from(head)] = needed;
        self.in_flight += 1;
        self.publish(head)?;
        Ok(head)
    }

    /// Puts `head` in the available ring and publishes the new index (§2.7.13.2, §2.7.13.3).
    fn publish(&mut self, head: u16) -> Result<()> {
        let slot = self.avail_idx.0 & (self.layout.size() - 1);
        self.mem
            .store_u16(self.layout.avail_entry(slot), head, Ordering::Relaxed)?;
        self.avail_idx += Wrapping(1);
        // Release: the descriptors and ring entry must be visible before the device can see
        // the new index (§2.7.13.3.1).
        self.mem
            .store_u16(self.layout.avail_idx(), self.avail_idx.0, Ordering::Release)?;
        self.num_added += 1;
        Ok(())
    }

    /// Whether the device wants a kick for the chains published since the last call
    /// (§2.7.13.4): with EVENT_IDX, whether `avail_event` was passed; otherwise whether
    /// `used.flags` lacks NO_NOTIFY. False if nothing was published since the last call.
    pub fn should_kick(&mut self) -> Result<bool> {
        // Our avail.idx store must be visible before we read the device's suppression fields
        // (store-load: a full fence), or both sides could wait on each other.
        fence(Ordering::SeqCst);
        let added = std::mem::replace(&mut self.num_added, 0);
        if added == 0 {
            return Ok(false);
        }
        if self.event_idx && added > u32::from(u16::MAX) {
            // The window wrapped: the event index was certainly passed.
            return Ok(true);
        }
        let new = self.avail_idx;
        // At most u16::MAX with EVENT_IDX (checked just above); unused without.
        #[allow(clippy::cast_possible_truncation)]
        let old = new - Wrapping(added as u16);
        let device = PeerRequest {
            event_idx: self.event_idx.then(|| self.layout.avail_event()),
            flags: self.layout.used_flags(),
            decline: VIRTQ_USED_F_NO_NOTIFY,
        };
        Ok(device.wants(&self.mem, new.0, old.0)?)
    }

    /// Kicks the device if [`DriverQueue::should_kick`]; returns whether it did.
    pub fn kick(&mut self) -> Result<bool> {
        let needed = self.should_kick()?;
        self.kick.notify_if(needed)
    }

    /// Takes the next chain the device returned, freeing its descriptors; `Ok(None)` if none.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>> {
        let size = self.layout.size();
        if self.last_used == self.used_shadow {
            // Acquire: pairs with the device's Release store of used.idx, so the element and
            // the bytes it wrote into our buffers are visible (§2.7.14).
            let idx = Wrapping(
                self.mem
                    .load_u16(self.layout.used_idx(), Ordering::Acquire)?,
            );
            if (idx - self.last_used).0 > size {
                return Err(VirtqError::UsedIndexAhead {
                    used_idx: idx.0,
                    last_used: self.last_used.0,
                    size,
                });
            }
            self.used_shadow = idx;
            if idx == self.last_used {
                return Ok(None);
            }
        }
        let slot = self.last_used.0 & (size - 1);
        let mut elem = [0u8; 8];
        self.mem.read(self.layout.used_elem(slot), &mut elem)?;
        let [i0, i1, i2, i3, l0, l1, l2, l3] = elem;
        let id = u32::from_le_bytes([i0, i1, i2, i3]);
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        // The device is outside our trust too: only outstanding heads may come back.
        let head = match u16::try_from(id) {
            Ok(h) if h < size && self.chain_descs[usize::from(h)] != 0 => h,
            _ => return Err(VirtqError::UsedIdInvalid { id }),
        };
        self.free_chain(head);
        self.last_used += Wrapping(1);
        if self.event_idx && self.interrupts_enabled {
            // Ask for an interrupt at the next used entry; SeqCst so this store is ordered
            // before our next read of used.idx.
            self.mem
                .store_u16(self.layout.used_event(), self.last_used.0, Ordering::SeqCst)?;
        }
        Ok(Some(UsedElem { head, len }))
    }

    fn free_chain(&mut self, head: u16) {
        let n = std::mem::replace(&mut self.chain_descs[usize::from(head)], 0);
        let mut tail = head;
        for _ in 1..n {
            tail = self.desc_next[usize::from(tail)];
        }
        self.desc_next[usize::from(tail)] = self.free_head;
        self.free_head = head;
        self.num_free += n;
        self.in_flight -= 1;
    }

    /// Asks the device not to interrupt (§2.7.7): sets `avail.flags` NO_INTERRUPT, or with
    /// EVENT_IDX moves `used_event` just behind the ring so it is not passed for 65535 entries.
    pub fn disable_interrupts(&mut self) -> Result<()> {
        self.interrupts_enabled = false;
        if self.event_idx {
            let behind = self.last_used - Wrapping(1);
            self.mem
                .store_u16(self.layout.used_event(), behind.0, Ordering::Relaxed)?;
        } else {
            self.mem.store_u16(
                self.layout.avail_flags(),
                VIRTQ_AVAIL_F_NO_INTERRUPT,
                Ordering::Relaxed,
            )?;
        }
        Ok(())
    }

    /// Asks the device to interrupt for the next used buffer (§2.7.7) and returns whether used
    /// buffers arrived meanwhile, in which case the caller must pop them instead of sleeping.
    pub fn enable_interrupts(&mut self) -> Result<bool> {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.mem.store_u16(
                self.layout.used_event(),
                self.last_used.0,
                Ordering::Relaxed,
            )?;
        } else {
            self.mem
                .store_u16(self.layout.avail_flags(), 0, Ordering::Relaxed)?;
        }
        // Store-load: the device must see our request before we decide nothing is pending.
        fence(Ordering::SeqCst);
        let idx = self
            .mem
            .load_u16(self.layout.used_idx(), Ordering::Acquire)?;
        Ok(idx != self.last_used.0)
    }

    /// Waits for an interrupt up to `timeout` (`None`: forever); returns the count taken (0 on
    /// timeout).
    pub fn wait_interrupt(&self, timeout: Option<Duration>) -> Result<u64> {
        self.interrupt.wait(timeout)
    }
}
