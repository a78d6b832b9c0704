//! Errors of the guest model: the page allocator and the workloads that drive it.

use crate::memory::MemoryError;

/// A guest-model operation failed.
///
/// Allocator misuse (a double free, a wrong order, a page outside the allocator) is reported
/// here instead of panicking, so a buggy balloon driver shows up as an error in its test.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// An order above the largest the allocator manages was asked for.
    #[error("order {order} is above the largest order {max}")]
    BadOrder {
        /// The order asked for.
        order: u8,
        /// The largest order the allocator manages (`MAX_ORDER - 1`).
        max: u8,
    },
    /// The block `[pfn, pfn + 2^order)` does not lie inside the allocator's page frames.
    #[error(
        "block pfn {pfn:#x} order {order} is outside the allocator's frames [{first:#x}, {end:#x})"
    )]
    OutOfRange {
        /// First page of the block.
        pfn: u64,
        /// Order of the block.
        order: u8,
        /// First page frame the allocator manages.
        first: u64,
        /// One past the last page frame it manages.
        end: u64,
    },
    /// A block's first page is not a multiple of its size.
    #[error("pfn {pfn:#x} is not aligned to order {order}")]
    Misaligned {
        /// First page of the block.
        pfn: u64,
        /// Order of the block.
        order: u8,
    },
    /// The page being freed is already free.
    #[error("double free of pfn {pfn:#x}")]
    DoubleFree {
        /// The page.
        pfn: u64,
    },
    /// The block being freed was allocated with another order.
    #[error("pfn {pfn:#x} freed with order {order} but was allocated with order {allocated}")]
    WrongOrder {
        /// First page of the block.
        pfn: u64,
        /// Order passed to the free.
        order: u8,
        /// Order it was allocated with.
        allocated: u8,
    },
    /// The page is not the first page of an allocated block (it lies inside one, or is
    /// isolated for free page reporting).
    #[error("pfn {pfn:#x} is not the start of an allocated block")]
    NotAllocated {
        /// The page.
        pfn: u64,
    },
    /// The page is not the first page of a block isolated for free page reporting.
    #[error("pfn {pfn:#x} order {order} is not an isolated block")]
    NotIsolated {
        /// First page of the block.
        pfn: u64,
        /// Order passed.
        order: u8,
    },
    /// A page that had to be free for a fixed-address reservation is in use.
    #[error("pfn {pfn:#x} is in use, cannot reserve it")]
    Busy {
        /// The first page found in use.
        pfn: u64,
    },
    /// No free block of the order asked for (or larger) is left.
    #[error("out of memory: no free block of order {order}")]
    OutOfMemory {
        /// The order asked for.
        order: u8,
    },
    /// An allocator over this many page frames would not fit its 32-bit frame indexes.
    #[error("{pages} page frames are too many for one allocator (at most {max})")]
    TooManyPages {
        /// Page frames asked for.
        pages: u64,
        /// The limit.
        max: u64,
    },
    /// A workload parameter is outside its range.
    #[error("bad workload parameter {name} = {value}")]
    BadParameter {
        /// Parameter name.
        name: &'static str,
        /// Its value, as text.
        value: String,
    },
    /// Guest RAM access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}
