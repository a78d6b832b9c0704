//! Transports: a duplex byte stream between source and destination, with timeouts and a
//! token-bucket bandwidth limit on the real bytes.
//!
//! - in-process: a Unix socketpair ([`in_process_pair`]); the two ends go to two threads;
//! - TCP: [`tcp_listen`] + [`tcp_accept`] on the destination, [`tcp_connect`] on the source,
//!   across processes or machines.
//!
//! Both ends get read and write timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`), so a stalled peer turns
//! into [`MigrationError::Timeout`] instead of a hang. [`RateLimited`] wraps the source's end.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::auth::auth_error;
use super::deadline::DeadlinePassed;
use super::error::MigrationError;

/// 10 Gbit/s in bytes per second: the link of the published measurements.
pub const TEN_GBIT: u64 = 1_250_000_000;

/// A bidirectional byte stream with timeouts that a migration runs over.
pub trait Channel: Read + Write + Send {
    /// Sets the read and write timeouts (`None`: block forever).
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
    /// Shuts both directions down, so the peer sees end of file at once.
    fn shutdown(&self) -> io::Result<()>;
}

/// A socket as a channel: std's `UnixStream` and `TcpStream` have the same inherent methods.
macro_rules! socket_channel {
    ($($socket:ty),*) => {$(
        impl Channel for $socket {
            fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(read)?;
                self.set_write_timeout(write)
            }

            fn shutdown(&self) -> io::Result<()> {
                <$socket>::shutdown(self, Shutdown::Both)
            }
        }
    )*};
}

socket_channel!(UnixStream, TcpStream);

/// A channel wrapped around another that changes only the bytes (rate limit, deadline,
/// authentication, test faults): timeouts and shutdown go to the inner channel, through the
/// blanket `Channel` impl.
pub trait ChannelLayer: Read + Write + Send {
    /// The wrapped channel.
    type Inner: Channel + ?Sized;
    /// The wrapped channel.
    fn inner(&self) -> &Self::Inner;
}

impl<L: ChannelLayer> Channel for L {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.inner().set_timeouts(read, write)
    }

    fn shutdown(&self) -> io::Result<()> {
        self.inner().shutdown()
    }
}

/// `ChannelLayer` for a wrapper `$layer<C>` whose field `inner` is the wrapped channel.
macro_rules! channel_layer {
    ($layer:ident) => {
        impl<C: Channel> ChannelLayer for $layer<C> {
            type Inner = C;

            fn inner(&self) -> &C {
                &self.inner
            }
        }
    };
}
pub(crate) use channel_layer;

impl<C: Channel + ?Sized> ChannelLayer for Box<C> {
    type Inner = C;

    fn inner(&self) -> &C {
        self
    }
}

/// Maps an I/O error of `op` to the migration error it means.
pub(crate) fn map_io_error(op: &'static str, timeout: Duration, e: io::Error) -> MigrationError {
    use io::ErrorKind::*;
    if let Some(d) = e.get_ref().and_then(|i| i.downcast_ref::<DeadlinePassed>()) {
        return MigrationError::DeadlineExceeded { op, after: d.after };
    }
    let e = match auth_error(e) {
        Ok(a) => return MigrationError::Auth(a),
        Err(e) => e,
    };
    match e.kind() {
        WouldBlock | TimedOut => MigrationError::Timeout { op, after: timeout },
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected => {
            MigrationError::ConnectionLost { op, source: e }
        }
        _ => MigrationError::Io { op, source: e },
    }
}

/// A token bucket: `rate` bytes per second, at most `burst` bytes ahead of schedule.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (`rate` > 0) holding at most `burst` bytes.
    pub fn new(rate: u64, burst: u64) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// The burst for `rate`: 2 ms worth of bytes, at least 64 KiB.
    pub fn default_burst(rate: u64) -> u64 {
        (rate / 500).max(64 << 10)
    }

    /// Largest write the bucket lets through at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
    }

    /// Sleeps until `n` bytes (≤ burst) may go, then takes them.
    pub fn take(&mut self, n: u64) {
        self.refill();
        let need = n as f64 - self.tokens;
        if need > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(need / self.rate as f64));
            self.refill();
        }
        self.tokens -= n as f64;
    }
}

/// A channel whose writes are held to a bandwidth limit (reads pass through).
///
/// Writes are cut into pieces of at most one burst, and each piece waits for its tokens, so
/// the bytes really leave at the link's rate; a peer that stops reading still trips the write
/// timeout of the inner channel.
#[derive(Debug)]
pub struct RateLimited<C> {
    inner: C,
    bucket: Option<TokenBucket>,
    sent: u64,
}

impl<C: Channel> RateLimited<C> {
    /// Wraps `inner` at `bytes_per_s` (0 = unlimited) with the default burst.
    pub fn new(inner: C, bytes_per_s: u64) -> RateLimited<C> {
        let bucket = (bytes_per_s > 0)
            .then(|| TokenBucket::new(bytes_per_s, TokenBucket::default_burst(bytes_per_s)));
        RateLimited {
            inner,
            bucket,
            sent: 0,
        }
    }

    /// Wraps `inner` at `bytes_per_s` (> 0) with an explicit burst in bytes.
    pub fn with_burst(inner: C, bytes_per_s: u64, burst: u64) -> RateLimited<C> {
        RateLimited {
            inner,
            bucket: Some(TokenBucket::new(bytes_per_s, burst)),
            sent: 0,
        }
    }

    /// Bytes written through so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// The wrapped channel.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: Channel> Read for RateLimited<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<C: Channel> Write for RateLimited<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(bucket) = &mut self.bucket else {
            let n = self.inner.write(buf)?;
            self.sent += n as u64;
            return Ok(n);
        };
        let piece = buf
            .len()
            .min(usize::try_from(bucket.burst()).unwrap_or(usize::MAX));
        bucket.take(piece as u64);
        let n = self.inner.write(&buf[..piece])?;
        // Give back tokens for a short write so the average rate stays exact.
        if n < piece {
            bucket.tokens += (piece - n) as f64;
        }
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

channel_layer!(RateLimited);

/// `size_of::<c_int>()` as a `socklen_t` (4: the conversion is checked at compile time).
const SOCKLEN_C_INT: libc::socklen_t = {
    let n = size_of::<libc::c_int>();
    assert!(n == 4);
    4
};

fn set_buffers(fd: &impl std::os::fd::AsRawFd, bytes: libc::c_int) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on our own socket with a pointer to a live c_int of the right size.
        // A failure only leaves the default buffer size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                SOCKLEN_C_INT,
            )
        };
    }
}

/// Two connected in-process channel ends (a Unix socketpair), with `timeout` on reads and writes.
///
/// Give the first to the source and the second to the destination.
pub fn in_process_pair(timeout: Duration) -> Result<(UnixStream, UnixStream), MigrationError> {
    let (a, b) = UnixStream::pair().map_err(|source| MigrationError::Io {
        op: "socketpair",
        source,
    })?;
    for s in [&a, &b] {
        set_buffers(s, 1 << 20);
        s.set_timeouts(Some(timeout), Some(timeout))
            .map_err(|source| MigrationError::Io {
                op: "set socket timeouts",
                source,
            })?;
    }
    Ok((a, b))
}

fn tcp_setup(s: &TcpStream, timeout: Duration) -> Result<(), MigrationError> {
    let io = |source| MigrationError::Io {
        op: "configure TCP socket",
        source,
    };
    s.set_nodelay(true).map_err(io)?;
    set_buffers(s, 4 << 20);
    s.set_timeouts(Some(timeout), Some(timeout)).map_err(io)
}

/// Binds a TCP listener for a destination, e.g. `"0.0.0.0:4444"` or `"127.0.0.1:0"`.
pub fn tcp_listen(addr: impl ToSocketAddrs) -> Result<TcpListener, MigrationError> {
    TcpListener::bind(addr).map_err(|source| MigrationError::Io {
        op: "bind TCP listener",
        source,
    })
}

/// Accepts one source connection within `timeout`, and gives it `timeout` on reads and writes.
pub fn tcp_accept(listener: &TcpListener, timeout: Duration) -> Result<TcpStream, MigrationError> {
    let io = |op, source| MigrationError::Io { op, source };
    listener
        .set_nonblocking(true)
        .map_err(|e| io("set listener non-blocking", e))?;
    // A timeout too far away to represent never expires.
    let deadline = Instant::now().checked_add(timeout);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(MigrationError::Timeout {
                        op: "accept",
                        after: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(io("accept", e)),
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| io("set socket blocking", e))?;
    tcp_setup(&stream, timeout)?;
    Ok(stream)
}

/// Connects to a destination within `timeout`, with `timeout` on reads and writes.
pub fn tcp_connect(
    addr: impl ToSocketAddrs,
    timeout: Duration,
) -> Result<TcpStream, MigrationError> {
    let mut last = None;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|source| MigrationError::Io {
            op: "resolve destination address",
            source,
        })?;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                tcp_setup(&s, timeout)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    let source =
        last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
    Err(map_io_error("connect", timeout, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limit_holds_the_rate() {
        let (a, mut b) = in_process_pair(Duration::from_secs(5)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0;
            while n < 4 << 20 {
                n += b.read(&mut buf).unwrap();
            }
        });
        // 4 MiB at 40 MB/s with a 256 KiB burst: at least ~100 ms minus the burst.
        let mut w = RateLimited::with_burst(a, 40_000_000, 256 << 10);
        let t = Instant::now();
        w.write_all(&vec![1u8; 4 << 20]).unwrap();
        let dt = t.elapsed().as_secs_f64();
        reader.join().unwrap();
        assert!(dt >= (4.0 * 1048576.0 - 262144.0) / 40e6 * 0.95, "{dt}");
        assert_eq!(w.bytes_sent(), 4 << 20);
    }

    #[test]
    fn test_stalled_peer_times_out() {
        let (mut a, _b) = in_process_pair(Duration::from_millis(100)).unwrap();
        let mut buf = [0u8; 4];
        let e = a.read(&mut buf).unwrap_err();
        assert!(matches!(
            map_io_error("read", Duration::from_millis(100), e),
            MigrationError::Timeout { .. }
        ));
    }
}
