//! Where free page hints come from in a machine migration: the [`HintMode`] a caller picks and
//! the [`HintProvider`] that supplies it.
//!
//! The three guest-cooperative modes are the balloon's business: the seed's unused-page bitmap
//! over the misc queue ([`HintMode::Bitmap`], protocol.md §1.3), upstream
//! `VIRTIO_BALLOON_F_FREE_PAGE_HINT` ([`HintMode::Upstream`], §2.5, §4.2), and free page
//! reporting ([`HintMode::Reporting`], §2.6), which hints nothing but discards free blocks of
//! order ≥ 9 so that unpopulated skipping passes over them. A balloon session implements
//! [`HintProvider`] with sources fed over real virtqueues (for example through
//! [`QueuedHints`](crate::migration::QueuedHints) and its
//! [`HintFeed`](crate::migration::HintFeed)) and passes it in
//! [`MigrateOptions::hint_provider`](super::MigrateOptions::hint_provider).
//!
//! [`FreeListStandIn`] is **a test stand-in, not a balloon mode**: the host reads the guest
//! allocator's free lists directly, which no real host can do. It exists so the engine and its
//! ordering rules can be tested before the balloon queues are wired in; benchmarks label it as
//! such and never report it as one of the three modes.

use std::fmt;

use super::migrate_guest::GuestRunner;
use crate::guest::Guest;
use crate::memory::PageRange;
use crate::migration::{report_runs, HintSource, MigrationError};
use crate::pages::PageSet;
use crate::util::named_enum;

/// Which free page information a migration uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HintMode {
    /// No hints: every page is sent in the first round (unpopulated skipping aside).
    #[default]
    Off,
    /// The seed's unused-page bitmap, requested over the misc queue (v3, 2016).
    Bitmap,
    /// Upstream free page hinting: 4 MiB blocks under a command id (Linux 4.20).
    Upstream,
    /// Free page reporting: free blocks of order ≥ 9 are discarded before and during the
    /// migration; unpopulated skipping (forced on) then passes over them (Linux 5.7).
    Reporting,
}

impl HintMode {
    /// Every mode, in table order.
    pub const ALL: [HintMode; 4] = [
        HintMode::Off,
        HintMode::Bitmap,
        HintMode::Upstream,
        HintMode::Reporting,
    ];
}

named_enum!(HintMode {
    Off => "off" | "none" | "no",
    Bitmap => "bitmap" | "seed" | "misc",
    Upstream => "upstream" | "free-page-hint" | "hint",
    Reporting => "reporting" | "report" | "free-page-reporting",
});

/// Supplies the hint source of one migration for a [`HintMode`]; implemented by the balloon
/// session, which feeds it from its virtqueues.
///
/// The engine drives the returned source with the ordering rules of
/// [`HintSource`](crate::migration::HintSource): `start` comes after dirty logging is on and
/// `stop` before every sync, so a source may compute its hints at `start`.
pub trait HintProvider: Send + Sync {
    /// A short name for reports (for example `"balloon"` or `"free-list stand-in"`).
    fn name(&self) -> &str;

    /// Whether this provider implements `mode` (then [`hint_source`](Self::hint_source)
    /// returns a source for it).
    fn supports(&self, mode: HintMode) -> bool;

    /// The hint source for one migration of `guest` in `mode`, or `None` if this provider does
    /// not implement `mode`. Called once per migration, before the migration starts; the
    /// source is dropped (after [`HintSource::done`]) when it ends.
    fn hint_source<'a>(
        &'a self,
        mode: HintMode,
        guest: &'a GuestRunner,
    ) -> Result<Option<Box<dyn HintSource + 'a>>, MigrationError>;

    /// Adds to `out` the pages the guest holds that are not in use: ballooned pages, hinted
    /// blocks still held until DONE, blocks isolated for reporting. Verification does not
    /// require them to match. The default adds nothing.
    fn unused_pages(&self, guest: &Guest, out: &mut PageSet) {
        let _ = (guest, out);
    }

    /// Benchmark support: undoes what a migration in `mode` did to the paused `guest` beyond
    /// what the benchmark restores itself, so interleaved variants see the same guest (free page
    /// reporting discards stale free data). `resident_before` is the residency before the run.
    /// Returns the pages restored; the default does nothing.
    fn reset_guest(
        &self,
        mode: HintMode,
        guest: &GuestRunner,
        resident_before: &PageSet,
    ) -> Result<u64, MigrationError> {
        let _ = (mode, guest, resident_before);
        Ok(0)
    }
}

/// A provider shows as its [`name`](HintProvider::name) (options that hold one derive `Debug`).
impl fmt::Debug for dyn HintProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// **Test stand-in, not a balloon mode**: hints every free block of the guest's allocator, read
/// by the host straight from the free lists at the start of each round.
///
/// Correct under the engine's ordering (the snapshot is taken in `start`, after dirty logging
/// is on, so a block reused later is caught by the log), but no real host can read a guest's
/// free lists: benchmarks show it only as a labelled upper bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct FreeListStandIn {
    /// Runs handed out per poll (hints trickle in while the round is sent); 0 = all at once.
    pub runs_per_poll: usize,
    /// Hint in the first round only, as the seed's QEMU RFC did (bulk stage), instead of in
    /// every live round as upstream QEMU does.
    pub first_round_only: bool,
}

impl HintProvider for FreeListStandIn {
    fn name(&self) -> &str {
        "free-list stand-in"
    }

    fn supports(&self, mode: HintMode) -> bool {
        matches!(mode, HintMode::Bitmap | HintMode::Upstream)
    }

    fn hint_source<'a>(
        &'a self,
        mode: HintMode,
        guest: &'a GuestRunner,
    ) -> Result<Option<Box<dyn HintSource + 'a>>, MigrationError> {
        Ok(match mode {
            HintMode::Bitmap | HintMode::Upstream => Some(Box::new(FreeListSource {
                guest,
                cfg: *self,
                free: None,
                cursor: 0,
            })),
            HintMode::Off | HintMode::Reporting => None,
        })
    }
}

/// The source behind [`FreeListStandIn`].
struct FreeListSource<'a> {
    guest: &'a GuestRunner,
    cfg: FreeListStandIn,
    /// This round's free pages, while a request is active.
    free: Option<PageSet>,
    cursor: u64,
}

impl HintSource for FreeListSource<'_> {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        self.cursor = 0;
        self.free = if round == 1 || !self.cfg.first_round_only {
            Some(self.guest.free_pages())
        } else {
            None
        };
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        let Some(free) = &self.free else {
            return Ok(true);
        };
        let limit = match self.cfg.runs_per_poll {
            0 => usize::MAX,
            n => n,
        };
        let finished = report_runs(free, &mut self.cursor, limit, out);
        if finished {
            self.free = None;
        }
        Ok(finished)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.free = None;
        Ok(())
    }

    fn done(&mut self) {
        self.free = None;
    }
}
