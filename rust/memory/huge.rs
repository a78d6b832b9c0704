//! Huge-page-backed guest RAM: transparent huge pages (THP) and hugetlbfs 2 MiB pages.
//!
//! - [`Backing::Thp`]: a private anonymous mapping aligned to 2 MiB with `MADV_HUGEPAGE`, so the
//!   kernel backs it with 2 MiB pages where it can (THP must be `always` or `madvise`).
//! - [`Backing::Hugetlb`]: a memfd made with `MFD_HUGETLB | MFD_HUGE_2MB`, mapped shared and
//!   without `MAP_NORESERVE`, so the kernel reserves every 2 MiB page at map time and a guest
//!   touch can never SIGBUS; it needs pages in the pool (`/proc/sys/vm/nr_hugepages`).
//!   Punching a ballooned page out drops its reservation with it (as for QEMU): a guest touch
//!   after deflate takes a page from the pool again, so keep the pool sized for the guest.
//!
//! Feature checks run before anything is mapped and fail with
//! [`MemoryError::HugePagesUnavailable`] naming what is missing. [`HugePageStats`] reports how
//! much of guest RAM is really backed by huge pages (smaps `AnonHugePages` for THP, the
//! `*_Hugetlb` fields and the memfd's allocated blocks for hugetlbfs).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::address::{GuestAddress, PAGE_SIZE};
use super::backing::Backing;
use super::error::MemoryError;
use super::guest::GuestMemory;

/// Size of a huge page: 2 MiB (x86-64 PMD), the only size these backings use.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// 4 KiB guest pages per huge page.
pub const HUGE_PAGE_PAGES: u64 = HUGE_PAGE_SIZE / PAGE_SIZE;

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const HUGETLB_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

impl Backing {
    /// The host page size behind guest RAM: 2 MiB for [`Backing::Thp`] and
    /// [`Backing::Hugetlb`], 4 KiB otherwise. The balloon device gives memory back in these
    /// units (for THP it is the unit that returns memory without splitting a huge page).
    pub fn host_page_size(self) -> u64 {
        match self {
            Backing::Thp | Backing::Hugetlb => HUGE_PAGE_SIZE,
            Backing::Anonymous | Backing::Memfd => PAGE_SIZE,
        }
    }

    /// Whether guest RAM is (meant to be) backed by huge pages.
    pub fn is_huge(self) -> bool {
        self.host_page_size() > PAGE_SIZE
    }
}

fn unavailable(backing: Backing, reason: String) -> MemoryError {
    MemoryError::HugePagesUnavailable {
        backing: backing.name(),
        reason,
    }
}

/// The typed error for a hugetlb mapping the kernel refused (no pages left to reserve).
pub(super) fn map_refused(e: io::Error) -> MemoryError {
    unavailable(
        Backing::Hugetlb,
        format!("mmap could not reserve the 2 MiB pages ({e}); reserve more with /proc/sys/vm/nr_hugepages"),
    )
}

fn read_sys(path: &str) -> Result<String, io::Error> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}

/// The THP mode the kernel runs in (`always`, `madvise` or `never`), if it has THP at all.
pub fn thp_mode() -> Option<String> {
    let s = read_sys(THP_ENABLED).ok()?;
    let start = s.find('[')?;
    let end = s[start..].find(']')? + start;
    Some(s[start + 1..end].to_string())
}

/// The kernel's 2 MiB hugetlb pool (`/sys/kernel/mm/hugepages/hugepages-2048kB`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugetlbPool {
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not faulted in by anyone (reserved ones included).
    pub free: u64,
    /// Free pages promised to existing mappings.
    pub reserved: u64,
    /// Surplus pages above `nr_hugepages` (overcommit).
    pub surplus: u64,
}

impl HugetlbPool {
    /// Reads the pool counters; fails if the kernel has no 2 MiB hugetlb pages.
    pub fn read() -> Result<HugetlbPool, MemoryError> {
        let get = |name: &str| -> Result<u64, MemoryError> {
            let path = format!("{HUGETLB_2M}/{name}");
            let s = read_sys(&path).map_err(|e| {
                unavailable(
                    Backing::Hugetlb,
                    format!("kernel has no 2 MiB hugetlb pages ({path}: {e})"),
                )
            })?;
            s.parse()
                .map_err(|_| unavailable(Backing::Hugetlb, format!("cannot parse {path}: {s:?}")))
        };
        Ok(HugetlbPool {
            total: get("nr_hugepages")?,
            free: get("free_hugepages")?,
            reserved: get("resv_hugepages")?,
            surplus: get("surplus_hugepages")?,
        })
    }

    /// Free pages nobody has reserved: what a new mapping can reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// Checks that `backing` can map `size` bytes here, before anything is mapped.
pub(super) fn check(backing: Backing, size: u64) -> Result<(), MemoryError> {
    if !backing.is_huge() {
        return Ok(());
    }
    if size % HUGE_PAGE_SIZE != 0 {
        return Err(MemoryError::NotHugeAligned {
            size,
            huge: HUGE_PAGE_SIZE,
        });
    }
    match backing {
        Backing::Thp => match thp_mode().as_deref() {
            Some("always") | Some("madvise") => Ok(()),
            Some(m) => Err(unavailable(
                backing,
                format!("transparent huge pages are [{m}] in {THP_ENABLED}"),
            )),
            None => Err(unavailable(
                backing,
                format!("kernel without transparent huge pages (no {THP_ENABLED})"),
            )),
        },
        _ => {
            let pool = HugetlbPool::read()?;
            let need = size / HUGE_PAGE_SIZE;
            if pool.available() < need {
                return Err(unavailable(
                    backing,
                    format!(
                        "needs {need} free 2 MiB hugetlb pages, {} available ({} in the pool, \
                         {} free, {} reserved); reserve them with /proc/sys/vm/nr_hugepages",
                        pool.available(),
                        pool.total,
                        pool.free,
                        pool.reserved
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// [`Backing::Hugetlb`] if `fd` lives on hugetlbfs (a memfd made with `MFD_HUGETLB`, maybe in
/// another process), else [`Backing::Memfd`].
pub(super) fn memfd_backing(fd: &OwnedFd) -> Backing {
    // SAFETY: a zeroed `statfs` is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid descriptor and `st` a valid out-pointer.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    if rc == 0 && st.f_type == libc::HUGETLBFS_MAGIC {
        Backing::Hugetlb
    } else {
        Backing::Memfd
    }
}

/// A memfd of `size` bytes on the kernel's internal hugetlbfs, 2 MiB pages.
pub(super) fn hugetlb_memfd(size: u64) -> Result<OwnedFd, MemoryError> {
    let flags =
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: the name is a valid NUL-terminated string; flags are constants.
    let raw = unsafe { libc::memfd_create(c"vballoon-guest-hugetlb".as_ptr(), flags) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(unavailable(
            Backing::Hugetlb,
            format!("memfd_create(MFD_HUGETLB | MFD_HUGE_2MB): {e}"),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(size).map_err(|_| MemoryError::BadSize { size })?;
    // SAFETY: `fd` is a valid memfd; the length is a multiple of 2 MiB (checked).
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(MemoryError::Os {
            op: "ftruncate(hugetlb memfd)",
            source: io::Error::last_os_error(),
        });
    }
    // Sealed like every memfd the memory layer creates: nobody can truncate it under the map.
    super::seal::seal_shrink(&fd)?;
    Ok(fd)
}

/// Maps `len` bytes of private anonymous memory starting on a 2 MiB boundary, so each aligned
/// 2 MiB of guest-physical space can be one huge page.
pub(super) fn map_aligned_anonymous(len: usize) -> Result<*mut libc::c_void, MemoryError> {
    let align = HUGE_PAGE_SIZE as usize;
    let over = len
        .checked_add(align)
        .ok_or(MemoryError::BadSize { size: len as u64 })?;
    // SAFETY: a fresh mapping at a kernel-chosen address; checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(MemoryError::Os {
            op: "mmap(aligned)",
            source: io::Error::last_os_error(),
        });
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(align);
    let head = aligned - start;
    let tail = over - head - len;
    // SAFETY: both pieces lie inside the mapping just made and are page-aligned (mmap returns
    // page-aligned addresses; `align` and `len` are page multiples); nothing else uses them.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut libc::c_void)
}

/// Applies the THP advice `backing` wants to a fresh mapping: off for 4 KiB backings (so a
/// 4 KiB discard returns exactly 4 KiB), on for [`Backing::Thp`]. Hugetlb needs none.
pub(super) fn advise(
    p: *mut libc::c_void,
    len: usize,
    backing: Backing,
) -> Result<(), MemoryError> {
    let advice = match backing {
        Backing::Anonymous | Backing::Memfd => libc::MADV_NOHUGEPAGE,
        Backing::Thp => libc::MADV_HUGEPAGE,
        Backing::Hugetlb => return Ok(()),
    };
    // SAFETY: `p` is the start of a mapping of `len` bytes we own; advice changes no contents.
    let rc = unsafe { libc::madvise(p, len, advice) };
    if rc != 0 && backing == Backing::Thp {
        return Err(unavailable(
            backing,
            format!("madvise(MADV_HUGEPAGE): {}", io::Error::last_os_error()),
        ));
    }
    // For 4 KiB backings a failure only means THP stays as configured: speed, not correctness.
    Ok(())
}

/// How much of guest RAM is backed by huge pages, and how much is resident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePageStats {
    /// The backing.
    pub backing: Option<Backing>,
    /// Host page size the device works in.
    pub host_page_size: u64,
    /// Resident bytes of guest RAM in this process (smaps `Rss`).
    pub rss_bytes: u64,
    /// Bytes mapped by huge pages: smaps `AnonHugePages` (THP) or `Shared_Hugetlb +
    /// Private_Hugetlb` (hugetlbfs).
    pub huge_bytes: u64,
    /// For a memfd: bytes the file has allocated (`st_blocks`), whoever maps it.
    pub file_allocated_bytes: Option<u64>,
    /// The 2 MiB hugetlb pool, for [`Backing::Hugetlb`].
    pub pool: Option<HugetlbPool>,
}

impl HugePageStats {
    /// Share of `guest_bytes` backed by huge pages (0.0 to 1.0).
    pub fn huge_share(&self, guest_bytes: u64) -> f64 {
        if guest_bytes == 0 {
            return 0.0;
        }
        self.huge_bytes as f64 / guest_bytes as f64
    }
}

/// Sums `fields` (in kB) over the smaps entries of the VMAs inside `[start, end)`.
fn smaps_sum(start: u64, end: u64, fields: &[&str]) -> Result<Vec<u64>, MemoryError> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(|source| MemoryError::Os {
        op: "read /proc/self/smaps",
        source,
    })?;
    let mut sums = vec![0u64; fields.len()];
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // A VMA header line: guest RAM may be split into several VMAs.
                inside = a >= start && b <= end;
                continue;
            }
        }
        if !inside {
            continue;
        }
        let key = first.trim_end_matches(':');
        if let Some(i) = fields.iter().position(|f| *f == key) {
            sums[i] += words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    Ok(sums.into_iter().map(|kb| kb * 1024).collect())
}

impl GuestMemory {
    /// The host page size the device gives memory back in (see [`Backing::host_page_size`]).
    pub fn host_page_size(&self) -> u64 {
        self.backing().host_page_size()
    }

    /// How much of guest RAM is resident and how much of it is huge pages, from this process's
    /// smaps (and, for hugetlbfs, the pool counters and the memfd's allocated blocks).
    pub fn huge_page_stats(&self) -> Result<HugePageStats, MemoryError> {
        let start = self.host_ptr(GuestAddress(0), self.size())? as u64;
        let end = start + self.size();
        let v = smaps_sum(
            start,
            end,
            &["Rss", "AnonHugePages", "Shared_Hugetlb", "Private_Hugetlb"],
        )?;
        let backing = self.backing();
        let file_allocated_bytes = match self.memfd() {
            Some(fd) => {
                // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: `fd` is our memfd, open while `self` lives; `st` is a valid pointer.
                if unsafe { libc::fstat(fd, &mut st) } != 0 {
                    return Err(MemoryError::Os {
                        op: "fstat",
                        source: io::Error::last_os_error(),
                    });
                }
                Some(u64::try_from(st.st_blocks).unwrap_or(0) * 512)
            }
            None => None,
        };
        let hugetlb = v[2] + v[3];
        Ok(HugePageStats {
            backing: Some(backing),
            host_page_size: backing.host_page_size(),
            // smaps counts hugetlb mappings apart from Rss.
            rss_bytes: v[0] + hugetlb,
            huge_bytes: v[1] + hugetlb,
            file_allocated_bytes,
            pool: if backing == Backing::Hugetlb {
                HugetlbPool::read().ok()
            } else {
                None
            },
        })
    }
}
