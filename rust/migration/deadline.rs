//! An overall deadline on a channel, on top of the per-read and per-write timeouts: a peer that
//! trickles one byte per timeout interval still cannot hold a destination past it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::transport::{channel_layer, Channel, ChannelLayer};

/// The I/O error a [`Deadline`] channel returns once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("overall deadline of {after:?} passed")]
pub struct DeadlinePassed {
    /// The deadline, from the channel's start.
    pub after: Duration,
}

/// A channel that fails every read and write once `total` has passed since it was made, and
/// shortens the last timeouts so a blocked call ends by then too.
#[derive(Debug)]
pub struct Deadline<C> {
    inner: C,
    /// None when `total` is too far away to represent.
    at: Option<Instant>,
    total: Duration,
    io: Duration,
}

impl<C: Channel> Deadline<C> {
    /// `inner`, whose timeouts are `io` (already set), failing after `total` from now.
    pub fn new(inner: C, total: Duration, io: Duration) -> Deadline<C> {
        Deadline {
            inner,
            at: Instant::now().checked_add(total),
            total,
            io,
        }
    }

    fn passed(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            DeadlinePassed { after: self.total },
        )
    }

    /// Time left, after shortening the channel's timeouts to it when it is below `io`.
    fn arm(&self) -> io::Result<()> {
        let Some(at) = self.at else {
            return Ok(());
        };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.passed());
        }
        if left < self.io {
            // A zero timeout means "none" to the OS: keep at least a millisecond.
            let t = Some(left.max(Duration::from_millis(1)));
            self.inner.set_timeouts(t, t)?;
        }
        Ok(())
    }

    fn check<T>(&self, r: io::Result<T>) -> io::Result<T> {
        match r {
            Err(e) if self.at.is_some_and(|at| Instant::now() >= at) => {
                let _ = e;
                Err(self.passed())
            }
            r => r,
        }
    }
}

impl<C: Channel> Read for Deadline<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        let r = self.inner.read(buf);
        self.check(r)
    }
}

impl<C: Channel> Write for Deadline<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        let r = self.inner.write(buf);
        self.check(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

channel_layer!(Deadline);
