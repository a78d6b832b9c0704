//! Unpopulated skipping on a host that swaps: pages pushed out to a real swap file must still
//! migrate with their data, not as zeros (mincore calls them non-resident; they are not holes).
//!
//! The test adds a swap file of its own (root only; skipped, with the reason printed, where
//! `swapon` is refused) and always removes it again, also when an assertion fails.

mod migration_support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use migration_support::{migrate_ok, unthrottled, Rng, MIB};
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::migration::*;
use vballoon::pages::PageSet;

const GUEST: u64 = 64 * MIB;
const USED: u64 = 24 * MIB;
const TIMEOUT: Duration = Duration::from_secs(20);

/// A swap file that is switched on for the test's lifetime and off (and deleted) on drop.
struct SwapFile {
    path: PathBuf,
    on: bool,
}

impl SwapFile {
    /// Creates, formats and enables a swap file; Err(reason) where that is not possible.
    fn enable(tag: &str, bytes: u64) -> Result<SwapFile, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to swapon".into());
        }
        let path = std::env::temp_dir().join(format!("vballoon-swap-{}-{tag}", std::process::id()));
        let mut swap = SwapFile { path, on: false };
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        };
        // dd rather than fallocate: swapon refuses files with unwritten extents on some
        // filesystems.
        run(Command::new("dd").args([
            "if=/dev/zero",
            &format!("of={}", swap.path.display()),
            "bs=1M",
            &format!("count={}", bytes >> 20),
            "status=none",
        ]))?;
        run(Command::new("chmod").arg("600").arg(&swap.path))?;
        run(Command::new("mkswap").arg(&swap.path))?;
        run(Command::new("swapon").arg(&swap.path))?;
        swap.on = true;
        Ok(swap)
    }

    /// `enable`, or `None` after saying why the calling test (this thread) is skipped.
    fn enable_or_skip(tag: &str, bytes: u64) -> Option<SwapFile> {
        SwapFile::enable(tag, bytes)
            .map_err(|reason| {
                let test = std::thread::current().name().unwrap_or("test").to_string();
                eprintln!("SKIPPED {test}: {reason}");
            })
            .ok()
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        if self.on {
            let ok = Command::new("swapoff")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("warning: swapoff {} failed", self.path.display());
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pagemap entries of `[addr, addr + len)` of `mem`, read independently of the code under
/// test.
fn pagemap(mem: &GuestMemory, addr: u64, len: u64) -> Vec<u64> {
    let host = mem.host_ptr(GuestAddress(addr), len).unwrap() as u64;
    let f = File::open("/proc/self/pagemap").unwrap();
    let mut raw = vec![0u8; (len / PAGE_SIZE * 8) as usize];
    f.read_exact_at(&mut raw, host / PAGE_SIZE * 8).unwrap();
    raw.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// The `Swap:` figures of /proc/self/smaps summed over the areas that overlap the mapping of
/// `mem`, in bytes. The kernel may merge our mapping with a neighbouring anonymous area or split
/// it (after `madvise`), so an area need not start where the mapping does.
fn smaps_swap_bytes(mem: &GuestMemory) -> u64 {
    let start = mem.host_ptr(GuestAddress(0), 0).unwrap() as u64;
    let end = start + mem.size();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut in_ours, mut found, mut total) = (false, false, 0);
    for line in smaps.lines() {
        let head = line.split_once(' ').map_or(line, |(h, _)| h);
        if let Some((lo, hi)) = head.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                in_ours = lo < end && hi > start;
                found |= in_ours;
                continue;
            }
        }
        if let Some(kb) = line.strip_prefix("Swap:").filter(|_| in_ours) {
            let kb = kb.trim().trim_end_matches("kB").trim();
            total += kb.parse::<u64>().unwrap() * 1024;
        }
    }
    assert!(found, "no smaps entry for the guest mapping at {start:#x}");
    total
}

/// Fills the used range with per-page random data and returns it.
fn fill(mem: &GuestMemory) -> Vec<u8> {
    let mut data = vec![0u8; USED as usize];
    Rng(7).fill(&mut data);
    mem.write(GuestAddress(0), &data).unwrap();
    data
}

/// `MADV_PAGEOUT`s the used range until at least half of it is out of this process's page
/// tables (reclaim may keep some pages); returns how many pages are out. For anonymous RAM an
/// "out" page is a swap entry (pagemap bit 62), for memfd RAM a page no longer mapped (its
/// data then lives in swap, or the swap cache, behind the shmem file).
fn page_out(mem: &GuestMemory) -> u64 {
    let p = mem.host_ptr(GuestAddress(0), USED).unwrap();
    let out = || {
        pagemap(mem, 0, USED)
            .iter()
            .filter(|e| match mem.backing() {
                Backing::Anonymous | Backing::Thp => *e & (1 << 62) != 0,
                Backing::Memfd | Backing::Hugetlb => *e & (1 << 63) == 0,
            })
            .count() as u64
    };
    for _ in 0..5 {
        // SAFETY: the range is page-aligned and inside guest RAM; PAGEOUT only asks the kernel
        // to reclaim the pages, whose contents it keeps (in swap).
        let rc = unsafe { libc::madvise(p.cast(), USED as usize, libc::MADV_PAGEOUT) };
        assert_eq!(rc, 0, "MADV_PAGEOUT: {}", std::io::Error::last_os_error());
        if out() >= USED / PAGE_SIZE / 2 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    out()
}

fn migrate(src: &GuestMemory, dst: &GuestMemory, tracking: DirtyTracking) -> MigrationResult {
    let log = DirtyLog::for_memory(src);
    let cfg = MigrationConfig {
        io_timeout: TIMEOUT,
        ..unthrottled(tracking, true)
    };
    migrate_ok(Source::new(src, &log, &NoGuest, cfg), dst)
}

#[test]
fn test_swapped_out_pages_migrate_with_their_data() {
    let Some(swap) = SwapFile::enable_or_skip("migrate", 512 << 20) else {
        return;
    };
    let used_pages = USED / PAGE_SIZE;
    let mut used = PageSet::new(GUEST / PAGE_SIZE);
    used.insert_range(0, used_pages);
    for backing in [Backing::Anonymous, Backing::Memfd] {
        for tracking in [DirtyTracking::Explicit, DirtyTracking::Auto] {
            let src = GuestMemory::new(GUEST, backing).unwrap();
            let data = fill(&src);
            let out = page_out(&src);
            assert!(
                out >= used_pages / 2,
                "{backing:?}: MADV_PAGEOUT moved only {out} of {used_pages} pages to swap"
            );
            // The kernel accounts them as swapped for this mapping (smaps' `Swap:`).
            let swapped = smaps_swap_bytes(&src) / PAGE_SIZE;
            assert!(
                swapped >= out * 9 / 10,
                "{backing:?}: {out} pages out of the page tables, {swapped} in swap"
            );
            // The layer under test agrees: every used page is populated, none of the rest.
            let pop = src.populated(GuestAddress(0), GUEST).unwrap();
            let n = pop.iter().filter(|b| **b != 0).count() as u64;
            assert_eq!(n, used_pages, "{backing:?} {tracking:?}");

            let dst = GuestMemory::new(GUEST, backing).unwrap();
            let r = migrate(&src, &dst, tracking);
            // Never-touched pages were skipped; the swapped-out ones were sent as data.
            assert_eq!(
                r.unpopulated_pages,
                GUEST / PAGE_SIZE - used_pages,
                "{backing:?} {tracking:?}: {r:?}"
            );
            assert_eq!(r.data_pages, used_pages, "{backing:?} {tracking:?}: {r:?}");
            let mut got = vec![0u8; USED as usize];
            dst.read(GuestAddress(0), &mut got).unwrap();
            let bad = got
                .chunks(PAGE_SIZE as usize)
                .zip(data.chunks(PAGE_SIZE as usize))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(bad, 0, "{backing:?} {tracking:?}: {bad} pages differ");
            assert!(dst.is_zero(GuestAddress(USED), GUEST - USED).unwrap());
            let v = verify(&src, &dst, &used).unwrap();
            assert!(v.ok() && v.free_differ == 0, "{v:?}");
        }
    }
    drop(swap);
}

#[test]
fn test_verify_reads_pages_unpopulated_on_both_sides() {
    // Pages that went to swap on both sides must not count as equal without being read.
    let Some(swap) = SwapFile::enable_or_skip("verify", 256 << 20) else {
        return;
    };
    let src = GuestMemory::new(GUEST, Backing::Anonymous).unwrap();
    let dst = GuestMemory::new(GUEST, Backing::Anonymous).unwrap();
    fill(&src);
    dst.fill(GuestAddress(0), USED, 0x5a).unwrap();
    assert!(page_out(&src) >= USED / PAGE_SIZE / 2);
    assert!(page_out(&dst) >= USED / PAGE_SIZE / 2);
    let mut used = PageSet::new(GUEST / PAGE_SIZE);
    used.insert_range(0, USED / PAGE_SIZE);
    let v = verify(&src, &dst, &used).unwrap();
    assert_eq!(v.used_mismatched, USED / PAGE_SIZE, "{v:?}");
    drop(swap);
}
