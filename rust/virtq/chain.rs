//! A validated descriptor chain as the device sees it: an ordered list of guest buffers.

use crate::memory::{GuestAddress, GuestMemory};

use super::error::{Result, VirtqError};

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device write-only (`VIRTQ_DESC_F_WRITE`); otherwise device read-only.
    pub writable: bool,
}

impl Segment {
    /// A device-readable buffer.
    pub const fn readable(addr: GuestAddress, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(addr: GuestAddress, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: true,
        }
    }
}

/// Segments kept inline before a chain spills to the heap: enough for typical requests, so the
/// device's hot path allocates nothing.
pub const INLINE_SEGMENTS: usize = 8;

/// A descriptor chain popped and validated by the device side (§2.7.5, §2.7.4).
///
/// Every buffer lies inside guest RAM, the total is at most 2^32 bytes, and the readable
/// buffers come before the writable ones. Indirect tables are already flattened. The chain holds
/// guest addresses only; pass the queue's [`GuestMemory`] to read or write its bytes.
#[derive(Clone, Debug)]
pub struct DescriptorChain {
    head: u16,
    len: usize,
    readable: usize,
    inline: [Segment; INLINE_SEGMENTS],
    spill: Vec<Segment>,
}

impl Default for DescriptorChain {
    fn default() -> Self {
        DescriptorChain::new()
    }
}

impl PartialEq for DescriptorChain {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.segments() == other.segments()
    }
}

impl Eq for DescriptorChain {}

impl DescriptorChain {
    /// An empty chain, to be filled by `DeviceQueue::pop_into`.
    pub fn new() -> DescriptorChain {
        DescriptorChain {
            head: 0,
            len: 0,
            readable: 0,
            inline: [Segment::default(); INLINE_SEGMENTS],
            spill: Vec::new(),
        }
    }

    /// Empties the chain, keeping any heap capacity, and sets its head.
    #[inline]
    pub(crate) fn reset(&mut self, head: u16) {
        self.head = head;
        self.len = 0;
        self.readable = 0;
        self.spill.clear();
    }

    /// Appends a segment; the caller has already checked the readable-before-writable order.
    #[inline]
    pub(crate) fn push(&mut self, seg: Segment) {
        if !seg.writable {
            self.readable += 1;
        }
        if self.len < INLINE_SEGMENTS {
            self.inline[self.len] = seg;
        } else {
            if self.len == INLINE_SEGMENTS {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(seg);
        }
        self.len += 1;
    }

    /// Whether a writable segment was pushed already.
    #[inline]
    pub(crate) fn has_writable(&self) -> bool {
        self.readable != self.len
    }

    /// Head descriptor index: the id to give back in `add_used`.
    #[inline]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// All buffers in chain order.
    #[inline]
    pub fn segments(&self) -> &[Segment] {
        if self.len <= INLINE_SEGMENTS {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    /// The device-readable buffers (they come first).
    pub fn readable(&self) -> &[Segment] {
        &self.segments()[..self.readable]
    }

    /// The device-writable buffers (they come last).
    pub fn writable(&self) -> &[Segment] {
        &self.segments()[self.readable..]
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chain has no buffers (only a fresh [`DescriptorChain::new`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable().iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable().iter().map(|s| u64::from(s.len)).sum()
    }

    /// Fails with [`VirtqError::UnexpectedWritable`] if any buffer is device-writable, for
    /// queues whose requests the device only reads (e.g. the balloon's inflate and deflate).
    ///
    /// `DeviceQueue::pop_readable_only` runs this and also puts the queue in needs-reset.
    pub fn require_readable_only(&self) -> Result<()> {
        match self.writable().first() {
            Some(s) => Err(VirtqError::UnexpectedWritable {
                addr: s.addr.raw(),
                len: s.len,
            }),
            None => Ok(()),
        }
    }

    /// Appends the bytes of every readable buffer, in order, to `out`.
    ///
    /// A guest may describe up to 4 GiB in one chain: check [`DescriptorChain::readable_len`]
    /// against what the request can sensibly hold before reading it all.
    pub fn read_into(&self, mem: &GuestMemory, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        // Bounded by 2^32 in total, checked when the chain was popped.
        let total = self.readable_len();
        let len = usize::try_from(total).map_err(|_| VirtqError::ChainBytesOverflow { total })?;
        out.resize(start + len, 0);
        let mut at = start;
        for s in self.readable() {
            let n = s.len as usize;
            mem.read(s.addr, &mut out[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    /// The bytes of every readable buffer, concatenated (see [`DescriptorChain::read_into`] on
    /// sizes).
    pub fn read_all(&self, mem: &GuestMemory) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_into(mem, &mut v)?;
        Ok(v)
    }

    /// Writes `data` across the writable buffers in order and returns the bytes written (less
    /// than `data.len()` if the buffers are shorter): the `len` to report in `add_used`.
    pub fn write_all(&self, mem: &GuestMemory, data: &[u8]) -> Result<u32> {
        let mut done = 0usize;
        for s in self.writable() {
            if done == data.len() {
                break;
            }
            let n = (s.len as usize).min(data.len() - done);
            mem.write(s.addr, &data[done..done + n])?;
            done += n;
        }
        // The writable total is at most 2^32 (checked at pop), so only that extreme clamps.
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: usize, writable_from: usize) -> DescriptorChain {
        let mut c = DescriptorChain::new();
        c.reset(7);
        for i in 0..n {
            c.push(Segment {
                addr: GuestAddress(i as u64 * 0x100),
                len: 0x10,
                writable: i >= writable_from,
            });
        }
        c
    }

    #[test]
    fn test_inline_then_spill_keeps_order() {
        for n in [0, 1, INLINE_SEGMENTS, INLINE_SEGMENTS + 1, 40] {
            let c = chain_of(n, n / 2);
            assert_eq!(c.len(), n);
            assert_eq!(c.head(), 7);
            let addrs: Vec<u64> = c.segments().iter().map(|s| s.addr.raw()).collect();
            assert_eq!(addrs, (0..n as u64).map(|i| i * 0x100).collect::<Vec<_>>());
            assert_eq!(c.readable().len(), n / 2);
            assert_eq!(c.writable().len(), n - n / 2);
            assert_eq!(c.readable_len(), 0x10 * (n / 2) as u64);
        }
    }

    #[test]
    fn test_reset_reuses() {
        let mut c = chain_of(20, 20);
        c.reset(3);
        assert!(c.is_empty());
        c.push(Segment::readable(GuestAddress(5), 1));
        assert_eq!(c.segments(), &[Segment::readable(GuestAddress(5), 1)]);
        c.require_readable_only().unwrap();
        c.push(Segment::writable(GuestAddress(9), 2));
        assert!(matches!(
            c.require_readable_only(),
            Err(VirtqError::UnexpectedWritable { addr: 9, len: 2 })
        ));
    }
}
