//! The pre-copy source: rounds over a migration bitmap, then stop-and-copy.
//!
//! 1. Dirty logging on ([`DirtyTracker::start`]), header sent, destination accepts.
//! 2. Round 1's bitmap is every page of guest RAM. Each round: round marker; hints started
//!    (new request); the bitmap is sent chunk by chunk, hints polled and applied to *this*
//!    round's bitmap before each chunk; hints stopped; dirty log synced into the next round's
//!    bitmap.
//! 3. When the dirty bytes left fit the downtime target at the link rate (or after
//!    `max_rounds`), the guest is paused, the log synced a last time and the rest sent; the
//!    destination's DONE reply ends the downtime. On any failure after the pause the guest is
//!    resumed; on success it stays paused (the destination now runs it).
//!
//! Sending a page: pages the host knows are unpopulated (never populated or discarded: pagemap
//! or SEEK_DATA, not mincore, which calls swapped-out pages non-resident; checked
//! *before* any read, since a read maps the zero page) go as zero runs unread; other pages are
//! checked for zero (zero run) or copied into a data record.
//!
//! Frames are handed to a writer thread through a short queue, so the rate-limited link drains
//! while the engine reads the next pages, as a NIC would.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

use super::auth::{AuthChannel, Role};
pub use super::config::{MigrationConfig, Progress};
use super::dest::RemoteVerify;
use super::dirty::{DirtyBackend, DirtyLog, DirtyTracker};
use super::error::MigrationError;
use super::hints::{HintGuard, HintSource};
use super::stream::{
    read_reply, Header, ReplyCode, Sink, StreamWriter, FLAG_HINTED, FLAG_SKIP_UNPOPULATED,
    FLAG_VERIFY, REPLY_MAGIC,
};
use super::transport::{map_io_error, Channel, RateLimited};
use super::PAGE;
use crate::memory::{
    is_zero_raw, process_peak_rss_bytes, GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE,
};
use crate::pages::PageSet;
use crate::util::hash64;

#[path = "source_rounds.rs"]
mod rounds;

/// Pauses and resumes the guest's vCPUs (here: its workload threads).
///
/// `pause` must return only once the guest has stopped writing its memory.
pub trait GuestControl: Send + Sync {
    /// Stops the guest; returns when no guest write is in flight.
    fn pause(&self);
    /// Lets the guest run again.
    fn resume(&self);
}

/// A guest with nothing to pause (an idle guest, or one driven by the caller).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGuest;

impl GuestControl for NoGuest {
    fn pause(&self) {}
    fn resume(&self) {}
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Round number (1-based; the stop-and-copy round is the last).
    pub round: u32,
    /// Whether this was the stop-and-copy round (guest paused).
    pub stop_and_copy: bool,
    /// Pages in the round's bitmap when it started.
    pub pages_in_bitmap: u64,
    /// Pages not sent because a hint cleared them.
    pub hinted_pages: u64,
    /// Pages sent as zero without being read (not populated on the host).
    pub unpopulated_pages: u64,
    /// Pages read and found to be zero.
    pub zero_pages: u64,
    /// Pages sent with their contents.
    pub data_pages: u64,
    /// Stream bytes produced by the round.
    pub bytes: u64,
    /// Wall time of the round.
    pub duration: Duration,
    /// Pages found dirty at the sync that ended the round.
    pub dirty_after: u64,
}

/// The outcome of a successful migration.
#[derive(Clone, Debug)]
pub struct MigrationResult {
    /// From start to the destination's DONE.
    pub total_time: Duration,
    /// Rounds, the stop-and-copy round included.
    pub rounds: u32,
    /// Whether the dirty set converged below the downtime target (false: `max_rounds` hit).
    pub converged: bool,
    /// Bytes that crossed the link (stream, header included).
    pub bytes_sent: u64,
    /// Pages sent with their contents.
    pub data_pages: u64,
    /// Pages read and sent as zero.
    pub zero_pages: u64,
    /// Pages skipped because the guest hinted them free.
    pub hinted_pages: u64,
    /// Pages sent as zero without being read (never populated, or discarded).
    pub unpopulated_pages: u64,
    /// Pages the engine read (data + zero).
    pub pages_read: u64,
    /// From pausing the guest to the destination holding everything.
    pub downtime: Duration,
    /// Peak RSS of the whole process at the end (VmHWM).
    pub peak_rss_bytes: u64,
    /// The dirty tracking backend used.
    pub dirty_backend: DirtyBackend,
    /// Per-round figures.
    pub per_round: Vec<RoundStats>,
    /// The destination's verdict on the verify trailer, if one was sent
    /// ([`Source::with_remote_verify`]); `first_mismatches` stays empty on this side.
    pub remote_verify: Option<RemoteVerify>,
}

/// One migration's source side: borrows the guest and runs to completion in [`Source::run`].
pub struct Source<'a> {
    mem: &'a GuestMemory,
    log: &'a DirtyLog,
    guest: &'a dyn GuestControl,
    hints: Option<&'a mut dyn HintSource>,
    used: Option<&'a dyn Fn() -> PageSet>,
    config: MigrationConfig,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("guest_size", &self.mem.size())
            .field("hints", &self.hints.is_some())
            .field("remote_verify", &self.used.is_some())
            .field("config", &self.config)
            .finish()
    }
}

/// Default pages per chunk: hints are polled and residency is checked once per chunk (16 MiB).
pub const CHUNK_PAGES: u64 = 4096;
/// Frames queued for the writer thread.
const QUEUE_DEPTH: usize = 4;

impl<'a> Source<'a> {
    /// A source for `mem`, whose writers mark `log`, paused through `guest`.
    pub fn new(
        mem: &'a GuestMemory,
        log: &'a DirtyLog,
        guest: &'a dyn GuestControl,
        config: MigrationConfig,
    ) -> Source<'a> {
        Source {
            mem,
            log,
            guest,
            hints: None,
            used: None,
            config,
        }
    }

    /// Uses `hints` to skip the guest's free pages.
    pub fn with_hints(mut self, hints: &'a mut dyn HintSource) -> Source<'a> {
        self.hints = Some(hints);
        self
    }

    /// After the migration, sends the destination a checksum of every page in `used()` (the
    /// pages the guest uses, computed with the guest paused) and gets back how many differ: the
    /// stream's verify trailer ([`FLAG_VERIFY`]).
    pub fn with_remote_verify(mut self, used: &'a dyn Fn() -> PageSet) -> Source<'a> {
        self.used = Some(used);
        self
    }

    /// Migrates the guest over `chan`. Returns when the destination confirmed, or on error.
    ///
    /// On error the guest keeps running (resumed if it was paused), its memory untouched, the
    /// channel is shut down and the hint source told DONE.
    pub fn run(self, chan: impl Channel) -> Result<MigrationResult, MigrationError> {
        let t0 = Instant::now();
        let Source {
            mem,
            log,
            guest,
            hints,
            used,
            config,
        } = self;
        let chan = AuthChannel::new(chan, Role::Source, config.key.clone());
        let mut chan = RateLimited::new(chan, config.bandwidth_bytes_per_s);
        let io = config.io_timeout;
        chan.set_timeouts(Some(io), Some(io))
            .map_err(|source| MigrationError::Io {
                op: "set channel timeouts",
                source,
            })?;
        let mut hints = HintGuard::new(hints);
        let mut pause = PauseGuard {
            guest,
            paused_at: None,
            keep_paused: false,
        };
        let mut engine = Engine {
            mem,
            cfg: &config,
            stats: Vec::new(),
            scratch: Vec::new(),
        };
        let res = engine.migrate(log, &mut chan, &mut hints, &mut pause, used, t0);
        match res {
            Ok(mut r) => {
                pause.keep_paused = true;
                r.peak_rss_bytes = process_peak_rss_bytes().unwrap_or(0);
                Ok(r)
            }
            Err(e) => {
                let e = reason_from_peer(&mut chan, e);
                let _ = chan.shutdown();
                Err(e)
            }
        }
        // `hints` drops here (DONE), then `pause` (resume unless kept paused).
    }
}

fn unexpected(code: ReplyCode) -> MigrationError {
    MigrationError::BadReply {
        magic: REPLY_MAGIC,
        code: code.to_u32(),
    }
}

impl Engine<'_> {
    /// Reads the `holes`, pages a memfd-backed guest has not populated, with `pread` on the
    /// memfd: shmem answers holes with the zero page instead of allocating them, as a read
    /// fault through a shared mapping would (a no-hints pass over a 128 GiB memfd guest would
    /// otherwise populate all of it). Pages populated meanwhile read as their contents.
    fn read_holes(
        &mut self,
        holes: PageRange,
        out: &mut PageOut<'_>,
        st: &mut RoundStats,
    ) -> Result<(), MigrationError> {
        let Some(fd) = self.mem.memfd() else {
            return Ok(());
        };
        let mut at = holes.start;
        while at < holes.end() {
            let m = usize::try_from(holes.end() - at)
                .map_or(HOLE_READ_PAGES, |left| left.min(HOLE_READ_PAGES));
            let len = m * PAGE;
            self.scratch.resize(len.max(self.scratch.len()), 0);
            let buf = &mut self.scratch[..len];
            let mut got = 0;
            while got < len {
                // Inside guest RAM, which is far below `off_t::MAX` (`MAX_GUEST_SIZE`).
                let off = libc::off_t::try_from(at * PAGE_SIZE + got as u64).map_err(|_| {
                    MigrationError::Io {
                        op: "read a hole of the guest memfd",
                        source: io::Error::other(format!("page {at:#x} is past off_t")),
                    }
                })?;
                // SAFETY: `buf[got..]` is a live, writable buffer of `len - got` bytes that we
                // own; `fd` is the guest's memfd, open for the life of `self.mem`.
                let r = unsafe { libc::pread(fd, buf[got..].as_mut_ptr().cast(), len - got, off) };
                if r <= 0 {
                    let e = if r == 0 {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "memfd shorter than RAM")
                    } else {
                        io::Error::last_os_error()
                    };
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(MigrationError::Io {
                        op: "read a hole of the guest memfd",
                        source: e,
                    });
                }
                got += r.unsigned_abs();
            }
            for (this, p) in (at..).zip(buf.chunks_exact(PAGE)) {
                // SAFETY: `p` is a page of our own scratch buffer.
                if self.cfg.zero_detection && unsafe { is_zero_raw(p.as_ptr(), PAGE) } {
                    st.zero_pages += 1;
                    out.zero(PageRange::new(this, 1))?;
                } else {
                    out.data_slot(Pfn(this))?.copy_from_slice(p);
                    st.data_pages += 1;
                }
            }
            at += m as u64;
        }
        Ok(())
    }
}

/// Where one pass over a round's bitmap puts its pages: the stream writer and its frame queue,
/// with consecutive zero pages gathered into one zero run before they are written.
struct PageOut<'o> {
    w: &'o mut StreamWriter,
    sink: &'o mut QueueSink,
    /// The zero run being gathered.
    zeros: Option<PageRange>,
    io_timeout: Duration,
}

impl<'o> PageOut<'o> {
    fn new(w: &'o mut StreamWriter, sink: &'o mut QueueSink, io_timeout: Duration) -> Self {
        PageOut {
            w,
            sink,
            zeros: None,
            io_timeout,
        }
    }

    /// Adds the zero pages `run` to the pending zero run, writing the pending one out first if
    /// `run` does not continue it.
    fn zero(&mut self, run: PageRange) -> Result<(), MigrationError> {
        match &mut self.zeros {
            Some(z) if z.end() == run.start => {
                z.len += run.len;
                Ok(())
            }
            _ => {
                let pending = self.zeros.replace(run);
                self.write_zeros(pending)
            }
        }
    }

    fn write_zeros(&mut self, zeros: Option<PageRange>) -> Result<(), MigrationError> {
        let (Some(z), t) = (zeros, self.io_timeout) else {
            return Ok(());
        };
        self.w
            .zero_run(self.sink, z)
            .map_err(|e| map_io_error("send batch", t, e))
    }

    /// The 4096-byte slot of a new data record for `pfn`.
    fn data_slot(&mut self, pfn: Pfn) -> Result<&mut [u8], MigrationError> {
        let t = self.io_timeout;
        self.w
            .data_slot(self.sink, pfn.0)
            .map_err(|e| map_io_error("send batch", t, e))
    }

    /// Writes out the pending zero run.
    fn finish(mut self) -> Result<(), MigrationError> {
        let pending = self.zeros.take();
        self.write_zeros(pending)
    }
}

/// After a send failure, the destination may have said why before closing: prefer its reason.
fn reason_from_peer(chan: &mut dyn Channel, e: MigrationError) -> MigrationError {
    if !matches!(
        e,
        MigrationError::ConnectionLost { .. } | MigrationError::Io { .. }
    ) {
        return e;
    }
    let short = Duration::from_millis(200);
    if chan.set_timeouts(Some(short), Some(short)).is_err() {
        return e;
    }
    match read_reply(chan, short) {
        Ok((ReplyCode::Reject(reason), detail)) => MigrationError::Rejected { reason, detail },
        _ => e,
    }
}

struct PauseGuard<'a> {
    guest: &'a dyn GuestControl,
    paused_at: Option<Instant>,
    keep_paused: bool,
}

impl PauseGuard<'_> {
    fn pause(&mut self) -> Instant {
        self.guest.pause();
        let now = Instant::now();
        self.paused_at = Some(now);
        now
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        if self.paused_at.is_some() && !self.keep_paused {
            self.guest.resume();
        }
    }
}

/// The writer thread's end of the frame queue: frames go out, emptied buffers come back.
struct QueueSink {
    tx: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    sent: u64,
}

impl Sink for QueueSink {
    fn send_frame(&mut self, frame: &mut Vec<u8>) -> io::Result<()> {
        let mut next = self.spare.try_recv().unwrap_or_default();
        next.clear();
        std::mem::swap(frame, &mut next);
        self.sent += next.len() as u64;
        self.tx
            .send(next)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "link writer stopped"))
    }

    fn flush_frames(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Engine<'e> {
    mem: &'e GuestMemory,
    cfg: &'e MigrationConfig,
    stats: Vec<RoundStats>,
    /// Where holes of a memfd-backed guest are read through the file (see `read_holes`).
    scratch: Vec<u8>,
}

/// Pages read through the file at a time from a hole of a memfd-backed guest.
const HOLE_READ_PAGES: usize = 256;

impl Engine<'_> {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        match &self.cfg.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(MigrationError::Cancelled),
            _ => Ok(()),
        }
    }

    fn migrate(
        &mut self,
        log: &DirtyLog,
        chan: &mut RateLimited<impl Channel>,
        hints: &mut HintGuard<'_>,
        pause: &mut PauseGuard<'_>,
        used: Option<&dyn Fn() -> PageSet>,
        t0: Instant,
    ) -> Result<MigrationResult, MigrationError> {
        let mem = self.mem;
        let io_timeout = self.cfg.io_timeout;
        let io = |op| move |e| map_io_error(op, io_timeout, e);
        let mut flags = 0;
        if hints.source().is_some() {
            flags |= FLAG_HINTED;
        }
        if self.cfg.skip_unpopulated {
            flags |= FLAG_SKIP_UNPOPULATED;
        }
        if used.is_some() {
            flags |= FLAG_VERIFY;
        }
        let header = Header {
            guest_size: mem.size(),
            flags,
        };
        // Dirty logging goes on before anything is read or any hint is requested.
        let mut tracker = DirtyTracker::start(mem, log, self.cfg.dirty_tracking)?;
        let mut w = StreamWriter::new(&header);
        w.write_header(chan, &header).map_err(io("write header"))?;
        match read_reply(chan, io_timeout)? {
            (ReplyCode::Accept, _) => {}
            (ReplyCode::Reject(reason), detail) => {
                return Err(MigrationError::Rejected { reason, detail })
            }
            (code, _) => return Err(unexpected(code)),
        }

        let (downtime_start, converged) = std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_DEPTH);
            let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
            let link = &mut *chan;
            let writer = std::thread::Builder::new()
                .name("vb-link-writer".into())
                .spawn_scoped(s, move || -> io::Result<()> {
                    for frame in rx {
                        io::Write::write_all(link, &frame)?;
                        let _ = spare_tx.send(frame);
                    }
                    io::Write::flush(link)
                })
                .map_err(|source| MigrationError::Io {
                    op: "spawn the link writer",
                    source,
                })?;
            let mut sink = QueueSink {
                tx,
                spare: spare_rx,
                sent: 0,
            };
            let res = self.rounds(&mut tracker, &mut w, &mut sink, hints, pause);
            drop(sink); // closes the queue: the writer drains it and returns
            let wres = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("link writer panicked")));
            match (res, wres) {
                // The writer's own error (timeout, reset) is the real cause of a failed send.
                (_, Err(e)) => Err(map_io_error("send stream", io_timeout, e)),
                (r, Ok(())) => r,
            }
        })?;
        // The destination answers once it has applied everything.
        let downtime = match read_reply(chan, io_timeout)? {
            (ReplyCode::Done, _) => downtime_start.elapsed(),
            (ReplyCode::Reject(reason), detail) => {
                return Err(MigrationError::Rejected { reason, detail })
            }
            (code, _) => return Err(unexpected(code)),
        };
        let total_time = t0.elapsed();
        let bytes_sent = chan.bytes_sent();
        let remote_verify = match used {
            Some(used) => Some(self.send_checksums(&used(), &mut w, chan)?),
            None => None,
        };
        let stats = std::mem::take(&mut self.stats);
        let sum = |f: fn(&RoundStats) -> u64| stats.iter().map(f).sum::<u64>();
        Ok(MigrationResult {
            total_time,
            rounds: stats.last().map_or(0, |r| r.round),
            converged,
            bytes_sent,
            data_pages: sum(|r| r.data_pages),
            zero_pages: sum(|r| r.zero_pages),
            hinted_pages: sum(|r| r.hinted_pages),
            unpopulated_pages: sum(|r| r.unpopulated_pages),
            pages_read: sum(|r| r.data_pages + r.zero_pages),
            downtime,
            peak_rss_bytes: 0,
            dirty_backend: tracker.backend().clone(),
            per_round: stats,
            remote_verify,
        })
    }

    /// The verify trailer: checksums of the `used` pages, then the destination's verdict.
    fn send_checksums(
        &self,
        used: &PageSet,
        w: &mut StreamWriter,
        chan: &mut RateLimited<impl Channel>,
    ) -> Result<RemoteVerify, MigrationError> {
        let io_timeout = self.cfg.io_timeout;
        let io = |op| move |e| map_io_error(op, io_timeout, e);
        let mut page = vec![0u8; PAGE];
        let mut sums = Vec::new();
        for PageRange {
            start: first,
            len: n,
        } in used.runs()
        {
            sums.clear();
            for pfn in first..first + n {
                self.mem.read(Pfn(pfn).addr(), &mut page)?;
                sums.push(hash64(&page));
            }
            w.verify_pages(chan, first, &sums)
                .map_err(io("send verify trailer"))?;
        }
        let sent = w.finish_verify(chan).map_err(io("send verify end"))?;
        match read_reply(chan, io_timeout)? {
            (ReplyCode::Verified, mismatched) => Ok(RemoteVerify {
                pages_checked: sent.pages,
                mismatched,
                first_mismatches: Vec::new(),
            }),
            (ReplyCode::Reject(reason), detail) => Err(MigrationError::Rejected { reason, detail }),
            (code, _) => Err(unexpected(code)),
        }
    }
}
