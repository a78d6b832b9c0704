//! Memfd seals: guest RAM's file must never shrink under its mapping.
//!
//! A mapping of a memfd that someone truncates faults with SIGBUS on every page past the new end,
//! which would kill the whole process at its next guest access. `F_SEAL_SHRINK` makes the kernel
//! refuse any `ftruncate` that shrinks the file, whoever holds a descriptor to it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::error::MemoryError;

/// Seals `fd` against shrinking (and against further seals, so nobody can add
/// `F_SEAL_FUTURE_WRITE` under our writable mapping), or checks that it already is.
///
/// The memfd must have been created with `MFD_ALLOW_SEALING`; otherwise the caller gets a typed
/// error that says so.
pub(super) fn seal_shrink(fd: &OwnedFd) -> Result<(), MemoryError> {
    let raw = fd.as_raw_fd();
    // SAFETY: plain fcntl on a descriptor we own; F_GET_SEALS takes no argument.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    if seals >= 0 && seals & libc::F_SEAL_SHRINK != 0 {
        return Ok(());
    }
    let source = if seals < 0 {
        io::Error::last_os_error()
    } else {
        // SAFETY: plain fcntl on a descriptor we own, with an int seal mask.
        let rc = unsafe {
            libc::fcntl(
                raw,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        io::Error::last_os_error()
    };
    Err(MemoryError::Unsealable { fd: raw, source })
}
