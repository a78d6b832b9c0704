//! This process's resident set size, for measurements of what the host really gives back.

use std::io;

use super::error::MemoryError;

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn process_rss_bytes() -> Result<u64, MemoryError> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|source| MemoryError::Os {
        op: "read /proc/self/statm",
        source,
    })?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| MemoryError::Os {
            op: "parse /proc/self/statm",
            source: io::Error::new(io::ErrorKind::InvalidData, statm.clone()),
        })?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(pages * page)
}

/// Peak resident set size of this process in bytes (`VmHWM`).
pub fn process_peak_rss_bytes() -> Result<u64, MemoryError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|source| MemoryError::Os {
            op: "read /proc/self/status",
            source,
        })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| MemoryError::Os {
            op: "parse VmHWM",
            source: io::Error::new(io::ErrorKind::InvalidData, "no VmHWM line"),
        })
}
