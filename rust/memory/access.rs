//! Bounds-checked copies and atomics on guest RAM: nothing here hands out a reference into it.
//!
//! All `#[inline]`: the virtqueue code copies fixed 16-byte descriptors, which only become a
//! couple of moves (not a `memmove` call) where the copy is inlined into the caller.

use std::ptr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::address::GuestAddress;
use super::error::MemoryError;
use super::guest::GuestMemory;

/// `read_uN`/`write_uN` pairs: little-endian values at any alignment, through `read`/`write`.
macro_rules! le_accessors {
    ($($t:ty, $read:ident, $write:ident;)*) => {$(
        #[doc = concat!("Reads a little-endian ", stringify!($t), " at `addr` (any alignment).")]
        #[inline]
        pub fn $read(&self, addr: GuestAddress) -> Result<$t, MemoryError> {
            let mut b = [0u8; size_of::<$t>()];
            self.read(addr, &mut b)?;
            Ok(<$t>::from_le_bytes(b))
        }

        #[doc = concat!("Writes a little-endian ", stringify!($t), " at `addr` (any alignment).")]
        #[inline]
        pub fn $write(&self, addr: GuestAddress, v: $t) -> Result<(), MemoryError> {
            self.write(addr, &v.to_le_bytes())
        }
    )*};
}

/// `load_uN`/`store_uN` pairs: naturally aligned little-endian atomics with a given ordering.
macro_rules! atomic_accessors {
    ($($t:ty, $atomic:ty, $load:ident, $store:ident;)*) => {$(
        #[doc = concat!("Atomically loads the naturally aligned little-endian ", stringify!($t),
            " at `addr` with `order`.")]
        #[inline]
        pub fn $load(&self, addr: GuestAddress, order: Ordering) -> Result<$t, MemoryError> {
            let p = self.aligned_ptr(addr, size_of::<$t>() as u64)?;
            // SAFETY: `p` is in bounds and naturally aligned (checked by `aligned_ptr`); the
            // mapping outlives this call.
            Ok(<$t>::from_le(unsafe { <$atomic>::from_ptr(p.cast()) }.load(order)))
        }

        #[doc = concat!("Atomically stores a naturally aligned little-endian ", stringify!($t),
            " at `addr` with `order`.")]
        #[inline]
        pub fn $store(&self, addr: GuestAddress, v: $t, order: Ordering) -> Result<(), MemoryError> {
            let p = self.aligned_ptr(addr, size_of::<$t>() as u64)?;
            // SAFETY: as in the load.
            unsafe { <$atomic>::from_ptr(p.cast()) }.store(v.to_le(), order);
            Ok(())
        }
    )*};
}

impl GuestMemory {
    #[inline]
    fn aligned_ptr(&self, addr: GuestAddress, width: u64) -> Result<*mut u8, MemoryError> {
        if !addr.is_aligned(width) {
            return Err(MemoryError::Misaligned {
                addr: addr.0,
                align: width,
            });
        }
        self.host_ptr(addr, width)
    }

    /// Copies guest RAM at `addr` into `buf`.
    #[inline]
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.host_ptr(addr, buf.len() as u64)?;
        // SAFETY: `src` is valid for `buf.len()` bytes (checked above) and cannot overlap a Rust
        // slice the caller owns, because no slice into the mapping is ever created.
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into guest RAM at `addr`.
    #[inline]
    pub fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let dst = self.host_ptr(addr, buf.len() as u64)?;
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `addr` to `byte`.
    pub fn fill(&self, addr: GuestAddress, len: u64, byte: u8) -> Result<(), MemoryError> {
        let dst = self.host_ptr(addr, len)?;
        // SAFETY: `dst` is valid for `len` bytes (checked above); `len` fits usize because the
        // whole mapping does.
        unsafe { ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    /// Reads a little-endian u8 at `addr`.
    #[inline]
    pub fn read_u8(&self, addr: GuestAddress) -> Result<u8, MemoryError> {
        let p = self.host_ptr(addr, 1)?;
        // SAFETY: `p` is in bounds; AtomicU8 has no alignment requirement.
        Ok(unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Relaxed))
    }

    /// Writes a little-endian u8 at `addr`.
    #[inline]
    pub fn write_u8(&self, addr: GuestAddress, v: u8) -> Result<(), MemoryError> {
        self.write(addr, &[v])
    }

    le_accessors! {
        u16, read_u16, write_u16;
        u32, read_u32, write_u32;
        u64, read_u64, write_u64;
    }

    // Ring indexes shared with the other side use these, so that the ordering the virtio spec
    // asks for (§2.7.13) is expressed with real acquire/release operations.
    atomic_accessors! {
        u16, AtomicU16, load_u16, store_u16;
        u32, AtomicU32, load_u32, store_u32;
        u64, AtomicU64, load_u64, store_u64;
    }

    /// Whether every byte of `[addr, addr + len)` is zero.
    pub fn is_zero(&self, addr: GuestAddress, len: u64) -> Result<bool, MemoryError> {
        let p = self.host_ptr(addr, len)?;
        // SAFETY: `p` is valid for `len` bytes; `is_zero_raw` only reads.
        Ok(unsafe { is_zero_raw(p, len as usize) })
    }
}

/// Whether `len` bytes at `p` are all zero, read in 64-byte blocks.
///
/// # Safety
/// `p` must be valid for reads of `len` bytes for the duration of the call.
pub unsafe fn is_zero_raw(p: *const u8, len: usize) -> bool {
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`, so the 8 unaligned u64 reads are in bounds (caller's contract).
        let acc = unsafe {
            let q = p.add(i).cast::<u64>();
            q.read_unaligned()
                | q.add(1).read_unaligned()
                | q.add(2).read_unaligned()
                | q.add(3).read_unaligned()
                | q.add(4).read_unaligned()
                | q.add(5).read_unaligned()
                | q.add(6).read_unaligned()
                | q.add(7).read_unaligned()
        };
        if acc != 0 {
            return false;
        }
        i += 64;
    }
    // SAFETY: `i < len` here, in bounds by the caller's contract.
    (i..len).all(|j| unsafe { p.add(j).read() } == 0)
}
