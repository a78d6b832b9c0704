//! The upstream FREE_PAGE_HINT shape (reference/protocol.md §2.5): pages as guest-physical
//! `(addr, len)` blocks, and the 4-byte command ids around them.
//!
//! A hinting guest sends each free block of order [`HINT_BLOCK_ORDER`] (4 MiB, naturally
//! aligned) as one device-writable descriptor; the bytes are never read, only the descriptor's
//! address and length. So this module has no byte format for blocks: [`blocks`] cuts a page set
//! into aligned blocks for the driver, and [`decode_blocks`]/[`decode_block`] turn descriptors
//! back into pages for the device, checking each against guest RAM. The same cut with
//! [`REPORTING_MIN_ORDER`] serves free page reporting (§2.6).

use super::runs::Runs;
use super::sink::Coalescer;
use super::stream::Stream;
use super::{PageRange, PageSet, PageSink, PagesError, BALLOON_PFN_SHIFT};

/// Bytes per page a hint address is counted in (4 KiB).
pub const HINT_PAGE_SIZE: u64 = 1 << BALLOON_PFN_SHIFT;
/// Order of a hinted block: `MAX_ORDER - 1` with the old MAX_ORDER of 11
/// (`VIRTIO_BALLOON_HINT_BLOCK_ORDER`).
pub const HINT_BLOCK_ORDER: u32 = 10;
/// Pages per hinted block (1024).
pub const HINT_BLOCK_PAGES: u64 = 1 << HINT_BLOCK_ORDER;
/// Bytes per hinted block, 4 MiB (`VIRTIO_BALLOON_HINT_BLOCK_BYTES`).
pub const HINT_BLOCK_BYTES: u64 = HINT_BLOCK_PAGES * HINT_PAGE_SIZE;
/// Smallest order free page reporting sends: `pageblock_order`, 2 MiB on x86.
pub const REPORTING_MIN_ORDER: u32 = 9;
/// Largest block order [`blocks`] accepts (a block of 2^40 pages is 4 EiB).
pub const MAX_BLOCK_ORDER: u32 = 40;
/// Command id meaning "stop hinting" (`VIRTIO_BALLOON_CMD_ID_STOP`).
pub const CMD_ID_STOP: u32 = 0;
/// Command id meaning "hinting done, free the hinted pages" (`VIRTIO_BALLOON_CMD_ID_DONE`).
pub const CMD_ID_DONE: u32 = 1;
/// Smallest command id that asks for hints: the driver supplies pages while `cmd_id >= 2`.
pub const CMD_ID_MIN_HINT: u32 = 2;
/// Bytes of a command id buffer (`__virtio32`).
pub const CMD_ID_LEN: usize = 4;

/// One block: `len` bytes of guest-physical memory from `addr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HintBlock {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl From<(u64, u64)> for HintBlock {
    fn from((addr, len): (u64, u64)) -> HintBlock {
        HintBlock { addr, len }
    }
}

/// Iterator over the aligned power-of-two blocks of a page set; see [`blocks`].
#[derive(Clone, Debug)]
pub struct Blocks<'a> {
    runs: Runs<'a>,
    /// Rest of the current run, `[pfn, end)`.
    pfn: u64,
    end: u64,
    min_order: u32,
    max_order: u32,
}

impl Iterator for Blocks<'_> {
    type Item = HintBlock;

    fn next(&mut self) -> Option<HintBlock> {
        let min_pages = 1u64 << self.min_order;
        loop {
            if self.pfn >= self.end {
                let r = self.runs.next()?;
                (self.pfn, self.end) = (r.start, r.end());
            }
            // The largest block that is aligned at `pfn`, fits the run and the order cap.
            let align = self.pfn.trailing_zeros().min(63);
            let fit = 63 - (self.end - self.pfn).leading_zeros();
            let order = align.min(fit).min(self.max_order);
            if order >= self.min_order {
                let pfn = self.pfn;
                self.pfn += 1 << order;
                let addr = pfn << BALLOON_PFN_SHIFT;
                return Some(HintBlock {
                    addr,
                    len: (1u64 << order) << BALLOON_PFN_SHIFT,
                });
            }
            // Too small here: the next aligned start may still hold a block, unless this one
            // was aligned already and the run is just too short.
            let next = self.pfn.div_ceil(min_pages).saturating_mul(min_pages);
            self.pfn = if next == self.pfn { self.end } else { next };
        }
    }
}

/// The naturally aligned blocks of `2^min_order ..= 2^max_order` pages that tile `set`.
///
/// Each run is cut greedily into the largest aligned blocks; pages that no block of at least
/// `2^min_order` pages covers are left out (as a hinting guest only hints whole blocks). For
/// FREE_PAGE_HINT use `blocks(set, HINT_BLOCK_ORDER, HINT_BLOCK_ORDER)`.
pub fn blocks(set: &PageSet, min_order: u32, max_order: u32) -> Result<Blocks<'_>, PagesError> {
    if min_order > max_order || max_order > MAX_BLOCK_ORDER {
        let limit = MAX_BLOCK_ORDER;
        return Err(PagesError::BadBlockOrder {
            min: min_order,
            max: max_order,
            limit,
        });
    }
    Ok(Blocks {
        runs: set.runs(),
        pfn: 0,
        end: 0,
        min_order,
        max_order,
    })
}

/// Turns one descriptor `(addr, len)` into its pages `(start_pfn, npages)`.
///
/// The block must be non-empty, whole 4 KiB pages, and inside the first `max_pfn` pages.
pub fn decode_block(block: HintBlock, max_pfn: u64) -> Result<PageRange, PagesError> {
    let HintBlock { addr, len } = block;
    if len == 0 {
        return Err(PagesError::EmptyHint { addr });
    }
    if addr % HINT_PAGE_SIZE != 0 || len % HINT_PAGE_SIZE != 0 {
        return Err(PagesError::HintNotPageAligned { addr, len });
    }
    if addr.checked_add(len).is_none() {
        return Err(PagesError::HintOverflow { addr, len });
    }
    let (pfn, npages) = (addr >> BALLOON_PFN_SHIFT, len >> BALLOON_PFN_SHIFT);
    if pfn + npages > max_pfn {
        return Err(PagesError::PageOutsideRam {
            pfn: pfn.max(max_pfn),
            max_pfn,
        });
    }
    Ok(PageRange::new(pfn, npages))
}

/// Checks every block, then hands their pages to `sink` in order, joining blocks that touch.
///
/// Returns the number of pages. Nothing reaches `sink` unless every block is valid.
pub fn decode_blocks<K>(blocks: &[HintBlock], max_pfn: u64, sink: &mut K) -> Result<u64, PagesError>
where
    K: PageSink + ?Sized,
{
    let limit = max_pfn.min(sink.limit());
    for &b in blocks {
        decode_block(b, limit)?;
    }
    let mut co = Coalescer::new(sink);
    for &b in blocks {
        let r = decode_block(b, limit)?;
        co.run(r.start, r.len);
    }
    co.flush();
    Ok(co.pages())
}

/// The 4-byte buffer carrying command id `id` (little-endian).
pub fn encode_cmd_id(id: u32) -> [u8; CMD_ID_LEN] {
    id.to_le_bytes()
}

/// Reads a command id from a driver buffer, which must be exactly 4 bytes.
pub fn decode_cmd_id<S: AsRef<[u8]>>(segments: &[S]) -> Result<u32, PagesError> {
    let mut st = Stream::new(segments);
    let len = st.remaining();
    match st.read::<CMD_ID_LEN>() {
        Some(b) if len == CMD_ID_LEN => Ok(u32::from_le_bytes(b)),
        _ => Err(PagesError::CmdIdLength {
            len,
            expected: CMD_ID_LEN,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hint_blocks_are_whole_aligned_4mib() {
        let set = PageSet::from_runs(1 << 14, [(1000, 3100), (8192, 1024)]).unwrap();
        let got: Vec<_> = blocks(&set, HINT_BLOCK_ORDER, HINT_BLOCK_ORDER)
            .unwrap()
            .collect();
        let want: Vec<HintBlock> = [1024u64, 2048, 3072, 8192]
            .iter()
            .map(|p| (p << 12, HINT_BLOCK_BYTES).into())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn test_buddy_blocks_tile_the_set() {
        let set = PageSet::from_runs(1 << 14, [(3, 13), (100, 1)]).unwrap();
        let got: Vec<_> = blocks(&set, 0, 10)
            .unwrap()
            .map(|b| (b.addr >> 12, b.len >> 12))
            .collect();
        assert_eq!(got, vec![(3, 1), (4, 4), (8, 8), (100, 1)]);
    }

    #[test]
    fn test_cmd_id_round_trip() {
        let b = encode_cmd_id(0x1234_5678);
        assert_eq!(decode_cmd_id(&[&b[..1], &b[1..]]), Ok(0x1234_5678));
        assert_eq!(
            decode_cmd_id(&[&b[..3]]),
            Err(PagesError::CmdIdLength {
                len: 3,
                expected: 4
            })
        );
    }
}
