//! Migrating a running guest: in one process ([`migrate_local`]) or across two over TCP
//! ([`listen`] on the destination, [`send`] on the source).
//!
//! [`MigrateOptions`] gathers what a user chooses: the hint mode and who provides it, the
//! link's bandwidth (10 Gbit/s by default), the downtime target (300 ms), dirty tracking, the
//! guest's dirty rate while it is migrated, unpopulated skipping, and verification. Verification
//! checks, after the migration, that every page the guest uses (not free, not held unused by a
//! balloon) is byte-identical on the destination; free pages may differ and are counted. In one
//! process it compares the two RAMs directly; across processes the source sends a checksum of
//! every used page after the stream and the destination compares (the stream's verify trailer).
//!
//! ```no_run
//! use vballoon::machine::{migrate_local, MigrateOptions, Scenario};
//! let (guest, info) = Scenario::m1().build()?;
//! let report = migrate_local(&guest, &MigrateOptions::default())?;
//! println!("{info:?}\n{}", report.summary().to_json());
//! # Ok::<_, vballoon::Error>(())
//! ```

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::migrate_guest::{GuestRunner, WorkloadCounters};
use super::migrate_hints::{HintMode, HintProvider};
use crate::error::{Error, Result};
use crate::memory::{Backing, GuestMemory};
use crate::migration::{
    check_listen_address, in_process_pair, tcp_accept, tcp_connect, tcp_listen, verify, Channel,
    DestConfig, DestReport, Destination, DirtyTracking, HintSource, MigrationConfig,
    MigrationError, MigrationKey, MigrationResult, Progress, Source, VerifyReport, CHUNK_PAGES,
    TEN_GBIT,
};
use crate::pages::PageSet;

/// How source and destination talk when both run in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalLink {
    /// A Unix socketpair.
    #[default]
    SocketPair,
    /// TCP over loopback.
    Tcp,
}

/// What a migration does; `Default` is the published setup (10 Gbit/s, 300 ms, no hints).
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// Which free page information to use.
    pub hints: HintMode,
    /// Who supplies the hints for modes other than [`HintMode::Off`] (the balloon session).
    pub hint_provider: Option<Arc<dyn HintProvider>>,
    /// Link bandwidth in bytes per second (0 = unlimited).
    pub bandwidth_bytes_per_s: u64,
    /// Largest pause the guest may see.
    pub downtime_target: Duration,
    /// Rounds after which stop-and-copy is forced.
    pub max_rounds: u32,
    /// Dirty tracking. The guest model marks every write it makes, so the explicit log (the
    /// default) is exact for it; `Kernel`/`Auto` also catch writes that bypass the model, at a
    /// set-up cost per guest page.
    pub dirty_tracking: DirtyTracking,
    /// The guest workload's dirty rate during the migration, bytes per second (0 = idle).
    pub dirty_rate_bytes_per_s: u64,
    /// Send pages the host never populated as zero runs without reading them. Forced on by
    /// [`HintMode::Reporting`], whose discarded blocks it is what skips.
    pub skip_unpopulated: bool,
    /// Send all-zero pages as zero runs.
    pub zero_detection: bool,
    /// Check afterwards that every used page arrived intact.
    pub verify: bool,
    /// In-process link ([`migrate_local`] only).
    pub link: LocalLink,
    /// Backing of the destination's RAM.
    pub dest_backing: Backing,
    /// Timeout of every channel read and write.
    pub io_timeout: Duration,
    /// Set to true to cancel.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Live progress for a watcher (a progress bar).
    pub progress: Option<Arc<Progress>>,
    /// Pages per chunk of a round: hints are polled once per chunk.
    pub chunk_pages: u64,
    /// Pre-shared key authenticating the stream (both sides need it; see `migration::auth`).
    pub key: Option<MigrationKey>,
}

impl Default for MigrateOptions {
    fn default() -> MigrateOptions {
        MigrateOptions {
            hints: HintMode::Off,
            hint_provider: None,
            bandwidth_bytes_per_s: TEN_GBIT,
            downtime_target: Duration::from_millis(300),
            max_rounds: 30,
            dirty_tracking: DirtyTracking::Explicit,
            dirty_rate_bytes_per_s: 0,
            skip_unpopulated: false,
            zero_detection: true,
            verify: true,
            link: LocalLink::SocketPair,
            dest_backing: Backing::Anonymous,
            io_timeout: Duration::from_secs(30),
            cancel: None,
            progress: None,
            chunk_pages: CHUNK_PAGES,
            key: None,
        }
    }
}

impl MigrateOptions {
    /// Whether unpopulated skipping is on (asked for, or implied by the hint mode).
    pub fn skips_unpopulated(&self) -> bool {
        self.skip_unpopulated || self.hints == HintMode::Reporting
    }

    /// The engine's configuration for these options.
    pub fn migration_config(&self) -> MigrationConfig {
        MigrationConfig {
            bandwidth_bytes_per_s: self.bandwidth_bytes_per_s,
            downtime_target: self.downtime_target,
            max_rounds: self.max_rounds,
            dirty_tracking: self.dirty_tracking,
            zero_detection: self.zero_detection,
            skip_unpopulated: self.skips_unpopulated(),
            io_timeout: self.io_timeout,
            cancel: self.cancel.clone(),
            progress: self.progress.clone(),
            chunk_pages: self.chunk_pages,
            key: self.key.clone(),
        }
    }

    /// The hint source for one migration of `guest`, if the mode asks for one.
    fn hint_source<'a>(
        &'a self,
        guest: &'a GuestRunner,
    ) -> Result<Option<Box<dyn HintSource + 'a>>> {
        if self.hints == HintMode::Off {
            return Ok(None);
        }
        let Some(p) = self.hint_provider.as_deref() else {
            return Err(Error::Config(format!(
                "hint mode {} needs a hint provider (the balloon session)",
                self.hints
            )));
        };
        match p.hint_source(self.hints, guest)? {
            Some(s) => Ok(Some(s)),
            None => Err(Error::Config(format!(
                "hint provider {} does not implement mode {}",
                p.name(),
                self.hints
            ))),
        }
    }

    /// The pages `guest` uses, minus those the provider says are held unused.
    fn used_pages(&self, guest: &GuestRunner) -> PageSet {
        let mut used = guest.used_pages();
        if let Some(p) = &self.hint_provider {
            let mut unused = PageSet::new(used.npages());
            p.unused_pages(&guest.lock().guest, &mut unused);
            used.difference_with(&unused);
        }
        used
    }
}

/// Everything one in-process migration measured.
#[derive(Clone, Debug)]
pub struct MigrateReport {
    /// The hint mode used.
    pub hints: HintMode,
    /// The provider's name, if one supplied the hints.
    pub hint_provider: Option<String>,
    /// Whether unpopulated skipping was on.
    pub skip_unpopulated: bool,
    /// The source's figures.
    pub result: MigrationResult,
    /// The destination's figures.
    pub dest: DestReport,
    /// The comparison of used pages, if asked for.
    pub verify: Option<VerifyReport>,
    /// What the guest workload did during the migration.
    pub workload: WorkloadCounters,
}

impl MigrateReport {
    /// The flat, JSON-able figures.
    pub fn summary(&self) -> MigrationSummary {
        let mut s = MigrationSummary::from_result(&self.result);
        s.hints = self.hints.name().to_owned();
        s.hint_provider = self.hint_provider.clone();
        s.skip_unpopulated = self.skip_unpopulated;
        if let Some(v) = &self.verify {
            s.verified_pages = Some(v.used_pages);
            s.mismatched_pages = Some(v.used_mismatched);
            s.free_pages_differing = Some(v.free_differ);
        }
        s.workload_pages_dirtied = self.workload.pages_dirtied;
        s
    }
}

/// The figures of one migration as plain numbers: what the CLI prints and Python returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationSummary {
    /// Hint mode name.
    pub hints: String,
    /// Hint provider name, if any.
    pub hint_provider: Option<String>,
    /// Whether unpopulated skipping was on.
    pub skip_unpopulated: bool,
    /// Total time, milliseconds.
    pub total_ms: f64,
    /// Downtime (guest paused until the destination had everything), milliseconds.
    pub downtime_ms: f64,
    /// Rounds, stop-and-copy included.
    pub rounds: u32,
    /// Whether the dirty set converged below the downtime target.
    pub converged: bool,
    /// Bytes that crossed the link.
    pub bytes_sent: u64,
    /// Pages sent with their contents.
    pub pages_sent: u64,
    /// Pages read and sent as zero runs.
    pub zero_pages: u64,
    /// Pages skipped because the guest hinted them free.
    pub hinted_pages: u64,
    /// Pages sent as zero without being read (never populated, or discarded).
    pub unpopulated_pages: u64,
    /// Pages the engine read.
    pub pages_read: u64,
    /// Peak RSS of the process, bytes.
    pub peak_rss_bytes: u64,
    /// Used pages compared, if verified.
    pub verified_pages: Option<u64>,
    /// Used pages that differ (must be 0), if verified.
    pub mismatched_pages: Option<u64>,
    /// Free pages that differ (allowed), if known.
    pub free_pages_differing: Option<u64>,
    /// Pages the guest workload dirtied during the migration.
    pub workload_pages_dirtied: u64,
}

impl MigrationSummary {
    /// The source's figures; the other fields stay at their defaults.
    pub fn from_result(r: &MigrationResult) -> MigrationSummary {
        MigrationSummary {
            total_ms: r.total_time.as_secs_f64() * 1e3,
            downtime_ms: r.downtime.as_secs_f64() * 1e3,
            rounds: r.rounds,
            converged: r.converged,
            bytes_sent: r.bytes_sent,
            pages_sent: r.data_pages,
            zero_pages: r.zero_pages,
            hinted_pages: r.hinted_pages,
            unpopulated_pages: r.unpopulated_pages,
            pages_read: r.pages_read,
            peak_rss_bytes: r.peak_rss_bytes,
            ..MigrationSummary::default()
        }
    }

    /// One JSON object (no dependencies: every value is a number, a bool, null or a plain
    /// ASCII name).
    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
        let name = |s: &str| {
            let clean: String = s
                .chars()
                .filter(|c| c.is_ascii() && *c != '"' && *c != '\\' && !c.is_ascii_control())
                .collect();
            format!("\"{clean}\"")
        };
        format!(
            "{{\"hints\":{},\"hint_provider\":{},\"skip_unpopulated\":{},\"total_ms\":{:.3},\
             \"downtime_ms\":{:.3},\"rounds\":{},\"converged\":{},\"bytes_sent\":{},\
             \"pages_sent\":{},\"zero_pages\":{},\"hinted_pages\":{},\"unpopulated_pages\":{},\
             \"pages_read\":{},\"peak_rss_bytes\":{},\"verified_pages\":{},\
             \"mismatched_pages\":{},\"free_pages_differing\":{},\"workload_pages_dirtied\":{}}}",
            name(&self.hints),
            self.hint_provider
                .as_deref()
                .map_or("null".to_owned(), name),
            self.skip_unpopulated,
            self.total_ms,
            self.downtime_ms,
            self.rounds,
            self.converged,
            self.bytes_sent,
            self.pages_sent,
            self.zero_pages,
            self.hinted_pages,
            self.unpopulated_pages,
            self.pages_read,
            self.peak_rss_bytes,
            opt(self.verified_pages),
            opt(self.mismatched_pages),
            opt(self.free_pages_differing),
            self.workload_pages_dirtied,
        )
    }
}

fn delta(a: WorkloadCounters, b: WorkloadCounters) -> WorkloadCounters {
    WorkloadCounters {
        pages_dirtied: b.pages_dirtied - a.pages_dirtied,
        allocations: b.allocations - a.allocations,
        frees: b.frees - a.frees,
        steps: b.steps - a.steps,
    }
}

/// Migrates `guest` to a fresh destination RAM in this process, with the guest's workload
/// running at `opts.dirty_rate_bytes_per_s` meanwhile.
///
/// On success the source guest stays paused (the destination runs it now): call
/// [`resume`](crate::migration::GuestControl::resume) on it to run it again, for example to
/// migrate it once more. On failure it keeps running. The destination RAM is dropped at the
/// end; verification (if on) has compared it by then.
pub fn migrate_local(guest: &GuestRunner, opts: &MigrateOptions) -> Result<MigrateReport> {
    let mut hints = opts.hint_source(guest)?;
    let src = guest.memory();
    let dst = GuestMemory::new(src.size(), opts.dest_backing)?;
    let dcfg = DestConfig {
        io_timeout: opts.io_timeout,
        key: opts.key.clone(),
        ..DestConfig::default()
    };
    let before = guest.counters();
    guest.set_dirty_rate(opts.dirty_rate_bytes_per_s);
    let run = |chan: Box<dyn Channel>, hints: Option<&mut (dyn HintSource + '_)>| {
        let source = Source::new(src, guest.dirty_log(), guest, opts.migration_config());
        match hints {
            Some(h) => source.with_hints(h),
            None => source,
        }
        .run(chan)
    };
    let (res, dres) = thread::scope(|s| -> Result<_> {
        Ok(match opts.link {
            LocalLink::SocketPair => {
                let (a, b) = in_process_pair(opts.io_timeout)?;
                let d = thread::Builder::new()
                    .name("vb-destination".into())
                    .spawn_scoped(s, || Destination::new(&dst, dcfg.clone()).receive(b))
                    .map_err(|e| Error::Config(format!("cannot spawn the destination: {e}")))?;
                let r = run(Box::new(a), hints.as_deref_mut());
                (r, d.join())
            }
            LocalLink::Tcp => {
                let listener = tcp_listen("127.0.0.1:0")?;
                let addr = listener.local_addr().map_err(|source| MigrationError::Io {
                    op: "local address",
                    source,
                })?;
                let (dst, dcfg) = (&dst, &dcfg);
                let d = thread::Builder::new()
                    .name("vb-destination".into())
                    .spawn_scoped(s, move || {
                        let c = tcp_accept(&listener, opts.io_timeout)?;
                        Destination::new(dst, dcfg.clone()).receive(c)
                    })
                    .map_err(|e| Error::Config(format!("cannot spawn the destination: {e}")))?;
                let r = tcp_connect(addr, opts.io_timeout)
                    .and_then(|c| run(Box::new(c), hints.as_deref_mut()));
                (r, d.join())
            }
        })
    })?;
    drop(hints);
    let workload = delta(before, guest.counters());
    let result = res?;
    let dest = dres.map_err(|_| Error::Config("destination thread panicked".into()))??;
    let verify = if opts.verify {
        Some(verify(src, &dst, &opts.used_pages(guest))?)
    } else {
        None
    };
    Ok(MigrateReport {
        hints: opts.hints,
        hint_provider: opts.hint_provider.as_ref().map(|p| p.name().to_owned()),
        skip_unpopulated: opts.skips_unpopulated(),
        result,
        dest,
        verify,
        workload,
    })
}

/// Receives one migration on `addr` (for example `"0.0.0.0:4444"`) into a fresh RAM of
/// `guest_bytes` with `backing`, waiting up to `cfg.accept_timeout` for the source.
///
/// A non-loopback address needs `cfg.key` (or `cfg.insecure`): without a key anyone who
/// reaches the port could write the guest's RAM.
pub fn listen(
    addr: impl ToSocketAddrs,
    guest_bytes: u64,
    backing: Backing,
    cfg: DestConfig,
) -> Result<DestReport> {
    listen_on(&tcp_listen(addr)?, guest_bytes, backing, cfg)
}

/// [`listen`] on a listener the caller bound (to learn its port before the source connects).
pub fn listen_on(
    listener: &TcpListener,
    guest_bytes: u64,
    backing: Backing,
    cfg: DestConfig,
) -> Result<DestReport> {
    let addr = listener.local_addr().map_err(|source| MigrationError::Io {
        op: "local address",
        source,
    })?;
    check_listen_address(addr, cfg.key.is_some(), cfg.insecure)?;
    let mem = GuestMemory::new(guest_bytes, backing)?;
    let conn = tcp_accept(listener, cfg.accept_timeout)?;
    Ok(Destination::new(&mem, cfg).receive(conn)?)
}

/// Migrates `guest` to the destination listening on `addr`, with the guest's workload running
/// at `opts.dirty_rate_bytes_per_s` meanwhile. With `opts.verify`, the source sends a checksum
/// of every used page after the stream and the destination's verdict comes back in
/// [`MigrationResult::remote_verify`].
///
/// On success the source guest stays paused, as with [`migrate_local`].
pub fn send(
    addr: impl ToSocketAddrs,
    guest: &GuestRunner,
    opts: &MigrateOptions,
) -> Result<MigrationResult> {
    let mut hints = opts.hint_source(guest)?;
    guest.set_dirty_rate(opts.dirty_rate_bytes_per_s);
    let conn = tcp_connect(addr, opts.io_timeout)?;
    let used = || opts.used_pages(guest);
    let source = Source::new(
        guest.memory(),
        guest.dirty_log(),
        guest,
        opts.migration_config(),
    );
    let source = match hints.as_deref_mut() {
        Some(h) => source.with_hints(h),
        None => source,
    };
    let source = if opts.verify {
        source.with_remote_verify(&used)
    } else {
        source
    };
    Ok(source.run(conn)?)
}
