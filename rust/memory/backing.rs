//! How guest RAM is backed on the host, which decides how a page is given back.

/// Where the guest's RAM lives on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`: discard with `MADV_DONTNEED`.
    Anonymous,
    /// A memfd mapped `MAP_SHARED`, so a second process can map the same RAM: discard with
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    Memfd,
    /// Like `Anonymous`, aligned to 2 MiB with `MADV_HUGEPAGE`: transparent huge pages.
    Thp,
    /// A hugetlbfs memfd of 2 MiB pages (`MFD_HUGETLB | MFD_HUGE_2MB`), mapped shared: discard
    /// punches whole 2 MiB holes. Needs reserved pages (`/proc/sys/vm/nr_hugepages`).
    Hugetlb,
}

impl Backing {
    /// Parses `"anonymous"`/`"anon"`, `"memfd"`, `"thp"` or `"hugetlb"`.
    pub fn parse(s: &str) -> Option<Backing> {
        match s {
            "anonymous" | "anon" | "private" => Some(Backing::Anonymous),
            "memfd" | "shared" => Some(Backing::Memfd),
            "thp" | "transparent-huge" => Some(Backing::Thp),
            "hugetlb" | "hugetlbfs" => Some(Backing::Hugetlb),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anonymous => "anonymous",
            Backing::Memfd => "memfd",
            Backing::Thp => "thp",
            Backing::Hugetlb => "hugetlb",
        }
    }

    /// Whether the RAM is a private anonymous mapping (no file behind it), which
    /// `MADV_DONTNEED` empties and `process_madvise` can discard in batches.
    pub fn is_private(self) -> bool {
        matches!(self, Backing::Anonymous | Backing::Thp)
    }
}
