//! The destination: reads the stream into its own guest RAM, and verification.
//!
//! Data records are copied into place. Zero runs cost nothing for pages this destination never
//! wrote (a fresh mapping reads as zero); pages it did write in an earlier round are discarded
//! (`MADV_DONTNEED` / hole punch), which both zeroes them and gives the memory back. On any
//! error the destination discards all of its RAM, tells the source why if it still can, and
//! returns a typed error.

use std::time::{Duration, Instant};

use super::auth::{AuthChannel, AuthError, MigrationKey, Role, CLIENT_MAGIC};
use super::deadline::Deadline;
use super::error::{MigrationError, StreamError};
use super::stream::{
    encode_reply, Batch, Frame, Header, Record, ReplyCode, StreamReader, FLAG_VERIFY,
};
use super::transport::{map_io_error, Channel};
use super::written::WrittenPages;
use super::PAGE;
use crate::memory::{GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use crate::util::hash64;

/// Settings of a destination.
#[derive(Clone, Debug)]
pub struct DestConfig {
    /// Timeout of every read and write on the channel.
    pub io_timeout: Duration,
    /// Most bytes of guest RAM the destination may populate (None: all of it). Exceeding it
    /// fails the migration with [`MigrationError::DestinationFull`].
    pub max_resident_bytes: Option<u64>,
    /// Whether the RAM is a fresh mapping (every page reads as zero and is unpopulated). If
    /// not, the destination discards all of it once before it applies the stream.
    pub fresh: bool,
    /// How long a listening destination waits for the source to connect
    /// ([`machine::listen`](crate::machine::listen)).
    pub accept_timeout: Duration,
    /// The most one migration may take, from the connection to the last reply, whatever the
    /// peer's pace (default one hour): a peer that trickles bytes cannot hold the destination.
    pub deadline: Duration,
    /// The pre-shared key the source must prove it holds (see [`AuthChannel`]).
    pub key: Option<MigrationKey>,
    /// Allow [`machine::listen`](crate::machine::listen) on a non-loopback address without a
    /// key.
    pub insecure: bool,
}

impl Default for DestConfig {
    fn default() -> DestConfig {
        DestConfig {
            io_timeout: Duration::from_secs(10),
            max_resident_bytes: None,
            fresh: true,
            accept_timeout: Duration::from_secs(300),
            deadline: Duration::from_secs(3600),
            key: None,
            insecure: false,
        }
    }
}

/// What a destination received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestReport {
    /// The stream header.
    pub header: Header,
    /// Rounds received.
    pub rounds: u32,
    /// Data records applied (a page sent in two rounds counts twice).
    pub data_pages: u64,
    /// Pages covered by zero runs.
    pub zero_pages: u64,
    /// Pages discarded because a zero run covered a page written earlier (or RAM not fresh).
    pub zero_pages_discarded: u64,
    /// Distinct pages populated at the end.
    pub pages_populated: u64,
    /// Stream bytes received.
    pub bytes_received: u64,
    /// From the header to the end frame.
    pub duration: Duration,
    /// The verify trailer's outcome, if the source sent one.
    pub verify: Option<RemoteVerify>,
}

/// The outcome of a verify trailer: the source's checksums of used pages against this RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteVerify {
    /// Used pages checksummed by the source.
    pub pages_checked: u64,
    /// Pages whose checksum differs here (must be 0).
    pub mismatched: u64,
    /// Up to 16 of them (destination side only).
    pub first_mismatches: Vec<u64>,
}

impl RemoteVerify {
    /// Whether every used page arrived intact.
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

/// One migration's destination side, writing into `mem`.
#[derive(Debug)]
pub struct Destination<'a> {
    mem: &'a GuestMemory,
    cfg: DestConfig,
}

impl<'a> Destination<'a> {
    /// A destination that writes the incoming guest into `mem`.
    pub fn new(mem: &'a GuestMemory, cfg: DestConfig) -> Destination<'a> {
        Destination { mem, cfg }
    }

    /// Receives one migration from `chan`; returns once everything is applied and confirmed.
    ///
    /// On error all of `mem` is discarded and the source is sent a rejection (best effort).
    pub fn receive(&mut self, chan: impl Channel) -> Result<DestReport, MigrationError> {
        let io = self.cfg.io_timeout;
        chan.set_timeouts(Some(io), Some(io))
            .map_err(|source| MigrationError::Io {
                op: "set channel timeouts",
                source,
            })?;
        let chan = Deadline::new(chan, self.cfg.deadline, io);
        let mut chan = AuthChannel::new(chan, Role::Destination, self.cfg.key.clone());
        if !self.cfg.fresh {
            // Then zero runs never need more than the pages this stream wrote.
            self.mem.discard(GuestAddress(0), self.mem.size())?;
        }
        let res = self.receive_inner(&mut chan).map_err(|e| match e {
            // A keyed source talking to a destination without a key.
            MigrationError::Stream(StreamError::BadMagic { found, .. })
                if found == u64::from_le_bytes(CLIENT_MAGIC) =>
            {
                MigrationError::Auth(AuthError::PeerHasKey)
            }
            e => e,
        });
        if let Err(e) = &res {
            // Partial state must not survive: the guest runs on the source, not here.
            let _ = self.mem.discard(GuestAddress(0), self.mem.size());
            // Sizes go back only to a peer past the header: with a key, an authenticated one.
            let detail = match e {
                MigrationError::GuestTooLarge { dest_size, .. } => *dest_size,
                MigrationError::GuestSizeMismatch { dest_size, .. } => *dest_size,
                MigrationError::DestinationFull { budget, .. } => *budget,
                _ => 0,
            };
            if !matches!(
                e,
                MigrationError::ConnectionLost { .. } | MigrationError::DeadlineExceeded { .. }
            ) {
                let reply = encode_reply(ReplyCode::Reject(e.reject_reason()), detail);
                let _ = chan.send_reject(&reply);
            }
            let _ = chan.shutdown();
        }
        res
    }

    fn receive_inner(&mut self, chan: &mut dyn Channel) -> Result<DestReport, MigrationError> {
        let io_timeout = self.cfg.io_timeout;
        let mem = self.mem;
        let mut reader = StreamReader::start(chan, io_timeout)?;
        let t0 = Instant::now();
        let header = *reader.header();
        if header.guest_size > mem.size() {
            return Err(MigrationError::GuestTooLarge {
                source_size: header.guest_size,
                dest_size: mem.size(),
            });
        }
        if header.guest_size != mem.size() {
            return Err(MigrationError::GuestSizeMismatch {
                source_size: header.guest_size,
                dest_size: mem.size(),
            });
        }
        chan.write_all(&encode_reply(ReplyCode::Accept, 0))
            .map_err(|e| map_io_error("send accept", io_timeout, e))?;
        let budget = self
            .cfg
            .max_resident_bytes
            .map_or(u64::MAX, |b| b / PAGE_SIZE);
        // Work per record stays bounded by the record, not by the guest (see `WrittenPages`).
        let mut written = WrittenPages::new(header.pages());
        let mut discarded = 0u64;
        let mut data_pages = 0u64;
        loop {
            match reader.next_frame(chan)? {
                Frame::Batch(batch) => {
                    let room = budget.saturating_sub(written.count());
                    populate_new_pages(mem, &batch, &written, room)?;
                    for rec in batch.records() {
                        match rec {
                            Record::Data { pfn, bytes } => {
                                if !written.contains(pfn) {
                                    if written.count() >= budget {
                                        return Err(MigrationError::DestinationFull {
                                            needed: written.count().saturating_add(1),
                                            budget,
                                        });
                                    }
                                    written.insert(pfn);
                                }
                                mem.write(Pfn(pfn).addr(), bytes)?;
                                data_pages += 1;
                            }
                            Record::Zero(zeros) => {
                                // Only pages this stream wrote can hold anything but zeros (the
                                // reader checked `zeros` is inside the guest).
                                written.take_runs(zeros, |run| {
                                    discarded += run.len;
                                    discard(mem, run)
                                })?;
                            }
                        }
                    }
                }
                Frame::Round(_) => {}
                Frame::End(totals) => {
                    chan.write_all(&encode_reply(ReplyCode::Done, data_pages))
                        .map_err(|e| map_io_error("send done", io_timeout, e))?;
                    let mut report = DestReport {
                        header,
                        rounds: totals.rounds,
                        data_pages,
                        zero_pages: totals.zero_pages,
                        zero_pages_discarded: discarded,
                        pages_populated: written.count(),
                        bytes_received: reader.received().bytes,
                        duration: t0.elapsed(),
                        verify: None,
                    };
                    if header.flags & FLAG_VERIFY != 0 {
                        report.verify = Some(self.check_trailer(&mut reader, chan)?);
                    }
                    return Ok(report);
                }
                // The reader hands these out only after the end frame.
                Frame::Verify(_) | Frame::VerifyEnd(_) => {}
            }
        }
    }

    /// Reads the verify trailer, compares each checksum with this RAM, answers VERIFIED.
    fn check_trailer(
        &self,
        reader: &mut StreamReader,
        chan: &mut dyn Channel,
    ) -> Result<RemoteVerify, MigrationError> {
        let mut page = vec![0u8; PAGE];
        let mut v = RemoteVerify::default();
        loop {
            match reader.next_frame(chan)? {
                Frame::Verify(batch) => {
                    for run in batch.runs() {
                        for (pfn, sum) in run.pages() {
                            self.mem.read(pfn.addr(), &mut page)?;
                            v.pages_checked += 1;
                            if hash64(&page) != sum {
                                v.mismatched += 1;
                                if v.first_mismatches.len() < 16 {
                                    v.first_mismatches.push(pfn.0);
                                }
                            }
                        }
                    }
                }
                Frame::VerifyEnd(_) => {
                    chan.write_all(&encode_reply(ReplyCode::Verified, v.mismatched))
                        .map_err(|e| map_io_error("send verified", self.cfg.io_timeout, e))?;
                    return Ok(v);
                }
                // The reader allows only verify frames after the end frame.
                Frame::Batch(_) | Frame::Round(_) | Frame::End(_) => {}
            }
        }
    }
}

/// Discards the pages `run` (inside guest RAM: the reader checked every record).
fn discard(mem: &GuestMemory, run: PageRange) -> Result<(), MigrationError> {
    let (addr, bytes) =
        run.byte_span()
            .ok_or(MigrationError::Stream(StreamError::PfnOutOfRange {
                pfn: run.start,
                count: run.len,
                guest_pages: mem.size() / PAGE_SIZE,
            }))?;
    Ok(mem.discard(addr, bytes)?)
}

/// Runs of new pages shorter than this are left to fault in one by one.
const MIN_POPULATE_RUN: u64 = 4;

/// Faults in the pages `batch` writes for the first time (at most `room` of them) with one
/// `MADV_POPULATE_WRITE` per run instead of a page fault per page: allocating pages is most of
/// a destination's work (about 1.2 µs a page on the reference machine, against 0.1 µs to copy
/// one), and the per-fault entry and exit is a third of that.
fn populate_new_pages(
    mem: &GuestMemory,
    batch: &Batch<'_>,
    written: &WrittenPages,
    room: u64,
) -> Result<(), MigrationError> {
    let mut left = room;
    let mut run: Option<PageRange> = None;
    let flush = |r: Option<PageRange>| match r.and_then(|r| r.byte_span()) {
        Some((addr, bytes)) if bytes >= MIN_POPULATE_RUN * PAGE_SIZE => mem.populate(addr, bytes),
        _ => Ok(()),
    };
    for rec in batch.records() {
        let Record::Data { pfn, .. } = rec else {
            continue;
        };
        if written.contains(pfn) {
            continue;
        }
        if left == 0 {
            break;
        }
        left -= 1;
        match &mut run {
            Some(r) if r.end() == pfn => r.len += 1,
            _ => flush(run.replace(PageRange::new(pfn, 1)))?,
        }
    }
    flush(run)?;
    Ok(())
}
