//! The buddy allocator's invariant check: O(pages), for tests and fuzzing (feature `test-utils`).

use super::*;

impl BuddyAllocator {
    /// Checks every internal invariant; O(pages), meant for tests.
    ///
    /// The lists are well linked and counted, every free block is tagged free with its order,
    /// aligned and in range, no two free buddies are left unmerged, reported blocks follow
    /// unreported ones on each list, every tagged free head is on a list, and the page counts add
    /// up.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut free = 0u64;
        let mut reported = 0u64;
        let mut heads_listed = 0u64;
        for order in 0..MAX_ORDER {
            let o = order as usize;
            let (mut at, mut prev, mut n, mut seen_reported) = (self.heads[o], NIL, 0u64, false);
            while at != NIL {
                let pfn = self.first + at as u64;
                let t = self.tag[at as usize];
                if t & (STATE_MASK | ORDER_MASK) != FREE | order {
                    return Err(format!("pfn {pfn:#x} on list {order} has tag {t:#x}"));
                }
                if pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > self.end {
                    return Err(format!("pfn {pfn:#x} order {order} misaligned or past end"));
                }
                if self.prev(at) != prev {
                    return Err(format!("pfn {pfn:#x} has a wrong prev link"));
                }
                if t & REPORTED != 0 {
                    seen_reported = true;
                    reported += 1 << order;
                } else if seen_reported {
                    return Err(format!("unreported pfn {pfn:#x} after a reported one"));
                }
                if order < MAX_PAGE_ORDER {
                    let buddy = pfn ^ (1 << order);
                    if buddy >= self.first
                        && buddy + (1 << order) <= self.end
                        && self.tag[(buddy - self.first) as usize] & (STATE_MASK | ORDER_MASK)
                            == FREE | order
                    {
                        return Err(format!("free buddies {pfn:#x}/{buddy:#x} not merged"));
                    }
                }
                let interior = &self.tag[at as usize + 1..at as usize + (1 << order)];
                if interior.iter().any(|&t| t != INTERIOR) {
                    return Err(format!("free block {pfn:#x} has a tagged page inside"));
                }
                n += 1;
                free += 1 << order;
                if n > self.total_pages() {
                    return Err(format!("list {order} loops"));
                }
                prev = at;
                at = self.next(at);
            }
            if self.tails[o] != prev {
                return Err(format!("list {order} has a wrong tail"));
            }
            if n != self.counts[o] || (n != 0) != (self.nonempty & (1 << order) != 0) {
                return Err(format!(
                    "list {order} holds {n} blocks, counted {}",
                    self.counts[o]
                ));
            }
            heads_listed += n;
        }
        let tagged_free = self.tag.iter().filter(|&&t| t & STATE_MASK == FREE).count() as u64;
        if tagged_free != heads_listed {
            return Err(format!(
                "{tagged_free} free tags but {heads_listed} listed blocks"
            ));
        }
        if free != self.free_pages || reported != self.reported_pages {
            return Err(format!(
                "free {free} reported {reported}, counted {} {}",
                self.free_pages, self.reported_pages
            ));
        }
        let isolated: u64 = self
            .tag
            .iter()
            .filter(|&&t| t & STATE_MASK == ISOLATED)
            .map(|&t| 1u64 << (t & ORDER_MASK))
            .sum();
        if isolated != self.isolated_pages {
            return Err(format!(
                "isolated {isolated}, counted {}",
                self.isolated_pages
            ));
        }
        Ok(())
    }
}
