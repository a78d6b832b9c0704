//! Kernel dirty tracking: userfaultfd asynchronous write-protect plus `PAGEMAP_SCAN`.
//!
//! The whole guest range is registered with a userfaultfd in write-protect mode with
//! `UFFD_FEATURE_WP_ASYNC` (Linux 6.7+): a write to a protected page does not raise a fault
//! message, the kernel just clears the page's WP bit and lets the write go on. A sync is one
//! `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` asking for pages in category `PAGE_IS_WRITTEN`
//! (present without the WP bit) with `PM_SCAN_WP_MATCHING`, which write-protects each page it
//! reports in the same walk: collect-and-re-protect, like KVM's get-and-clear dirty log.
//! Because the kernel sees every store, this catches writes through any view of guest RAM
//! (`GuestMemory::write`, raw `host_ptr` copies, a second mapping of a memfd in this process).
//!
//! The ioctl numbers and structures below come from `linux/userfaultfd.h` and `linux/fs.h`;
//! each is defined here with its encoding written out, because the `libc` crate does not
//! carry them all.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::memory::pagemap_abi::{
    PageRegion, PmScanArg, PAGEMAP_SCAN, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
};
use crate::memory::{Backing, GuestAddress, GuestMemory, PAGE_SIZE};
use crate::pages::PageSet;

/// `UFFD_API`: the only userfaultfd API version (`linux/userfaultfd.h`).
const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: `userfaultfd(2)` flag to handle user-mode faults only, which
/// unprivileged callers need when `vm.unprivileged_userfaultfd` is 0.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (bit 12): write-protect shmem (memfd) mappings.
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED` (bit 13): write-protecting a never-touched anonymous page
/// installs a marker, so `PAGEMAP_SCAN` may write-protect anonymous memory.
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC` (bit 15, Linux 6.7): WP faults are resolved by the kernel itself.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFDIO_REGISTER_MODE_WP`: track write-protect faults in the registered range.
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: set (rather than clear) write protection.
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `_UFFDIO_WRITEPROTECT` (6): bit in `uffdio_register.ioctls` saying the range supports it.
const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 6;

/// `_IOC(dir, type, nr, size)` from `asm-generic/ioctl.h`: dir in bits 30-31 (1 = write,
/// 2 = read), size in bits 16-29, type in bits 8-15, number in bits 0-7.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; }`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
/// `struct uffdio_range { __u64 start; __u64 len; }`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}
/// `struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; }`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
/// `struct uffdio_writeprotect { struct uffdio_range range; __u64 mode; }`.
#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
/// `UFFDIO_REGISTER = _IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x00,
    size_of::<UffdioRegister>(),
);
/// `UFFDIO_UNREGISTER = _IOR(0xAA, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, size_of::<UffdioRange>());
/// `UFFDIO_WRITEPROTECT = _IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x06,
    size_of::<UffdioWriteprotect>(),
);
/// `USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)` on `/dev/userfaultfd` (Linux 6.1+).
const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0xAA, 0x00, 0);

/// Regions fetched per `PAGEMAP_SCAN` call.
const REGIONS_PER_SCAN: usize = 4096;

/// Dirty tracking by the kernel over one guest's RAM; see the module docs.
///
/// Borrows the memory so the registration cannot outlive the mapping. Dropping the tracker
/// unregisters the range, which drops the write protection.
#[derive(Debug)]
pub struct KernelTracker<'a> {
    uffd: OwnedFd,
    pagemap: File,
    start: u64,
    len: u64,
    regions: Vec<PageRegion>,
    _mem: PhantomData<&'a GuestMemory>,
}

const _: () = assert!(size_of::<UffdioRegister>() == 32);

fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a valid, exclusively borrowed `#[repr(C)]` struct whose layout is the
    // one the request number encodes; the kernel reads and writes only that struct.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_uffd() -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let mut errors = Vec::new();
    for extra in [0, UFFD_USER_MODE_ONLY] {
        // SAFETY: plain syscall with integer flags; returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) };
        if fd >= 0 {
            let fd = libc::c_int::try_from(fd).map_err(|_| format!("userfaultfd returned {fd}"))?;
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        errors.push(format!(
            "userfaultfd(flags={:#x}): {}",
            flags | extra,
            io::Error::last_os_error()
        ));
    }
    // /dev/userfaultfd hands out descriptors to whoever may open the node (Linux 6.1+).
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags as its argument.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh descriptor nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            errors.push(format!("/dev/userfaultfd: {}", io::Error::last_os_error()));
        }
        Err(e) => errors.push(format!("open /dev/userfaultfd: {e}")),
    }
    Err(errors.join("; "))
}

/// Features the kernel supports, probed on a scratch descriptor (`UFFDIO_API` with none asked).
fn supported_features() -> Option<u64> {
    let fd = open_uffd().ok()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    ioctl(&fd, UFFDIO_API, &mut api).ok()?;
    Some(api.features)
}

impl<'a> KernelTracker<'a> {
    /// Registers all of `mem` for asynchronous write-protect tracking and protects every page.
    ///
    /// Fails with a human-readable reason when the kernel, its configuration or the caller's
    /// privileges do not allow it.
    pub fn new(mem: &'a GuestMemory) -> Result<KernelTracker<'a>, String> {
        let uffd = open_uffd()?;
        let mut want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        if matches!(mem.backing(), Backing::Memfd | Backing::Hugetlb) {
            want |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        }
        let mut api = UffdioApi {
            api: UFFD_API,
            features: want,
            ioctls: 0,
        };
        if let Err(e) = ioctl(&uffd, UFFDIO_API, &mut api) {
            let missing = supported_features().map(|have| want & !have);
            return Err(match missing {
                Some(m) if m & UFFD_FEATURE_WP_ASYNC != 0 => {
                    "kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux 6.7+)".into()
                }
                Some(m) if m != 0 => format!("kernel lacks userfaultfd features {m:#x}: {e}"),
                _ => format!("UFFDIO_API: {e}"),
            });
        }
        let start = mem
            .host_ptr(GuestAddress(0), mem.size())
            .map_err(|e| e.to_string())? as u64;
        let len = mem.size();
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_REGISTER, &mut reg)
            .map_err(|e| format!("UFFDIO_REGISTER(MODE_WP): {e}"))?;
        if reg.ioctls & UFFDIO_WRITEPROTECT_BIT == 0 {
            return Err("range does not support UFFDIO_WRITEPROTECT".into());
        }
        let pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
        let mut t = KernelTracker {
            uffd,
            pagemap,
            start,
            len,
            regions: vec![PageRegion::default(); REGIONS_PER_SCAN],
            _mem: PhantomData,
        };
        t.protect_all()
            .map_err(|e| format!("UFFDIO_WRITEPROTECT: {e}"))?;
        // A first scan proves PAGEMAP_SCAN exists and accepts the range (Linux 6.7+).
        let mut scratch = PageSet::new(len / PAGE_SIZE);
        t.scan(&mut scratch).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                format!("PAGEMAP_SCAN unsupported (needs Linux 6.7+): {e}")
            }
            _ => format!("PAGEMAP_SCAN: {e}"),
        })?;
        Ok(t)
    }

    fn protect_all(&mut self) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: self.start,
                len: self.len,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp).map(|_| ())
    }

    /// Write-protects every page again and forgets what was written (the start of tracking).
    pub fn reset(&mut self) -> io::Result<()> {
        self.protect_all()
    }

    /// Sets in `out` every page written since the last sync and write-protects it again.
    ///
    /// Returns the number of pages reported.
    pub fn sync(&mut self, out: &mut PageSet) -> io::Result<u64> {
        self.scan(out)
    }

    fn scan(&mut self, out: &mut PageSet) -> io::Result<u64> {
        let end = self.start + self.len;
        let mut at = self.start;
        let mut pages = 0;
        while at < end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: at,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..Default::default()
            };
            // Not negative: `ioctl` turned a negative return into the error.
            let n = ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg)?.unsigned_abs() as usize;
            for r in &self.regions[..n.min(self.regions.len())] {
                if r.categories & PAGE_IS_WRITTEN == 0 {
                    continue;
                }
                // Clip to our range; the kernel never reports outside [start, end) anyway.
                let first = r.start.max(self.start).saturating_sub(self.start) / PAGE_SIZE;
                let last = r.end.min(end).saturating_sub(self.start) / PAGE_SIZE;
                if last > first {
                    out.insert_range(first, last - first);
                    pages += last - first;
                }
            }
            if arg.walk_end <= at {
                break; // no progress: never spin
            }
            at = arg.walk_end;
        }
        Ok(pages)
    }
}

impl Drop for KernelTracker<'_> {
    fn drop(&mut self) {
        let mut range = UffdioRange {
            start: self.start,
            len: self.len,
        };
        // Best effort: closing the descriptor unregisters the range as well.
        let _ = ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xAA00);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
    }
}
