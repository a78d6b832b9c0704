//! Notifications between the sides: kicks (driver to device) and interrupts (device to driver).
//!
//! [`EventFd`] is a Linux eventfd, so the two sides can run on different threads or processes
//! (pass the fd). [`Notifier::Polling`] is a plain counter for deterministic single-thread runs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{Result, VirtqError};

fn os_err(op: &'static str) -> VirtqError {
    VirtqError::EventFd {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A Linux eventfd counter (non-blocking descriptor; blocking waits use `poll`).
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with a zero counter.
    pub fn new() -> Result<EventFd> {
        // SAFETY: plain syscall with constant flags; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(os_err("create"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    /// Wraps an eventfd received from elsewhere (e.g. another process). It should be
    /// non-blocking; a blocking one still works for [`EventFd::wait`].
    pub fn from_owned_fd(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// A second handle to the same counter (`dup`).
    pub fn try_clone(&self) -> Result<EventFd> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|source| VirtqError::EventFd { op: "dup", source })?;
        Ok(EventFd { fd })
    }

    /// The raw descriptor, for `poll`/`epoll` or for passing to another process.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Adds 1 to the counter, waking a waiter.
    pub fn signal(&self) -> Result<()> {
        self.write(1)
    }

    /// Adds `n` to the counter.
    pub fn write(&self, n: u64) -> Result<()> {
        let buf = n.to_ne_bytes();
        loop {
            // SAFETY: `buf` is 8 valid bytes, as eventfd requires.
            let rc = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), 8) };
            if rc == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // The counter is at its maximum: a waiter is certainly woken, nothing is lost.
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => {
                    return Err(VirtqError::EventFd {
                        op: "write",
                        source: e,
                    })
                }
            }
        }
    }

    /// Reads and clears the counter without blocking: `None` if it was zero.
    pub fn try_read(&self) -> Result<Option<u64>> {
        let mut buf = [0u8; 8];
        loop {
            // SAFETY: `buf` is 8 writable bytes, as eventfd requires.
            let rc = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if rc == 8 {
                return Ok(Some(u64::from_ne_bytes(buf)));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => {
                    return Err(VirtqError::EventFd {
                        op: "read",
                        source: e,
                    })
                }
            }
        }
    }

    /// Waits until the counter is non-zero or `timeout` passes (`None`: forever); returns
    /// whether it is readable. Does not clear it.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so a short timeout still sleeps instead of spinning.
                    let ms = left.as_nanos().div_ceil(1_000_000);
                    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                return Ok(true);
            }
            if rc == 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(VirtqError::EventFd {
                    op: "poll",
                    source: e,
                });
            }
        }
    }

    /// Blocks until the counter is non-zero, then reads and clears it.
    pub fn wait(&self) -> Result<u64> {
        loop {
            if let Some(n) = self.try_read()? {
                return Ok(n);
            }
            self.poll(None)?;
        }
    }

    /// Like [`EventFd::wait`] but gives up after `timeout`, returning `None`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.try_read()? {
                return Ok(Some(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.poll(Some(left))? {
                return self.try_read();
            }
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// How one side tells the other that the ring changed.
///
/// Cloning shares the same underlying counter, so the signalling and the waiting side each hold a
/// clone.
#[derive(Clone, Debug)]
pub enum Notifier {
    /// A Linux eventfd: waits block in the kernel; works across threads and processes.
    EventFd(Arc<EventFd>),
    /// A shared counter: nothing blocks; for single-thread scripts and tests.
    Polling(Arc<AtomicU64>),
}

impl Notifier {
    /// A notifier over a fresh eventfd.
    pub fn eventfd() -> Result<Notifier> {
        Ok(Notifier::EventFd(Arc::new(EventFd::new()?)))
    }

    /// A polling notifier with a zero count.
    pub fn polling() -> Notifier {
        Notifier::Polling(Arc::new(AtomicU64::new(0)))
    }

    /// Sends one notification.
    pub fn notify(&self) -> Result<()> {
        match self {
            Notifier::EventFd(e) => e.signal(),
            Notifier::Polling(c) => {
                c.fetch_add(1, Ordering::Release);
                Ok(())
            }
        }
    }

    /// Sends one notification if `needed` (the peer asked for it); returns `needed`.
    pub fn notify_if(&self, needed: bool) -> Result<bool> {
        if needed {
            self.notify()?;
        }
        Ok(needed)
    }

    /// Takes the pending notifications without blocking: how many arrived since the last take
    /// (an eventfd may merge several into one count).
    pub fn take(&self) -> Result<u64> {
        match self {
            Notifier::EventFd(e) => Ok(e.try_read()?.unwrap_or(0)),
            Notifier::Polling(c) => Ok(c.swap(0, Ordering::Acquire)),
        }
    }

    /// Waits for a notification up to `timeout` (`None`: forever) and takes it; returns 0 on
    /// timeout. A polling notifier spins with `yield_now` while another thread may notify.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u64> {
        match self {
            Notifier::EventFd(e) => match timeout {
                None => e.wait(),
                Some(t) => Ok(e.wait_timeout(t)?.unwrap_or(0)),
            },
            Notifier::Polling(c) => {
                let deadline = timeout.map(|t| Instant::now() + t);
                loop {
                    let n = c.swap(0, Ordering::Acquire);
                    if n > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(n);
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    /// The eventfd's raw descriptor, if this is an eventfd notifier.
    pub fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Notifier::EventFd(e) => Some(e.as_raw_fd()),
            Notifier::Polling(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_eventfd_counts_and_clears() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.try_read().unwrap(), None);
        e.signal().unwrap();
        e.write(2).unwrap();
        assert!(e.poll(Some(Duration::ZERO)).unwrap());
        assert_eq!(e.try_read().unwrap(), Some(3));
        assert_eq!(e.try_read().unwrap(), None);
        assert!(!e.poll(Some(Duration::from_millis(1))).unwrap());
        assert_eq!(e.wait_timeout(Duration::from_millis(1)).unwrap(), None);
    }

    #[test]
    fn test_eventfd_wakes_other_thread() {
        let e = Arc::new(EventFd::new().unwrap());
        let e2 = e.try_clone().unwrap();
        let t = std::thread::spawn(move || e2.wait().unwrap());
        e.signal().unwrap();
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn test_notifiers() {
        for n in [Notifier::polling(), Notifier::eventfd().unwrap()] {
            assert_eq!(n.take().unwrap(), 0);
            n.clone().notify().unwrap();
            n.notify().unwrap();
            assert_eq!(n.take().unwrap(), 2);
            assert_eq!(n.wait(Some(Duration::from_millis(1))).unwrap(), 0);
            n.notify().unwrap();
            assert_eq!(n.wait(None).unwrap(), 1);
        }
        assert!(Notifier::polling().raw_fd().is_none());
    }
}
