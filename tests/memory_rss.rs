//! RSS accounting of discard, in its own test binary: RSS is process-wide, so no other test may
//! run beside it.

use vballoon::memory::{process_rss_bytes, Backing, GuestAddress, GuestMemory, PAGE_SIZE};

const MIB: u64 = 1 << 20;

#[test]
fn test_rss_falls_by_discarded_amount() {
    for backing in [Backing::Anonymous, Backing::Memfd] {
        let size = 256 * MIB;
        let mem = GuestMemory::new(size, backing).unwrap();
        mem.fill(GuestAddress(0), size, 1).unwrap();
        let before = process_rss_bytes().unwrap();
        mem.discard(GuestAddress(0), 128 * MIB).unwrap();
        let after = process_rss_bytes().unwrap();
        let dropped = before.saturating_sub(after) as f64;
        let want = (128 * MIB) as f64;
        assert!(
            (dropped - want).abs() / want < 0.05,
            "{backing:?}: dropped {dropped} want {want}"
        );
        assert_eq!(
            mem.resident_pages(GuestAddress(0), size).unwrap(),
            128 * MIB / PAGE_SIZE
        );
    }
}
