//! Property test: whatever the guest does between the engine's steps (allocate, write, free,
//! hint free pages, hint a block and reuse it at once, send late or stale hints), after the
//! migration every page the guest uses is byte-identical on the destination.
//!
//! The guest acts inside the hint source's callbacks, which the engine calls at fixed points
//! (a round's start, before each chunk, at its stop), so each generated script is one exact
//! interleaving of guest activity with hint requests, chunk sends and dirty-log syncs. Hints
//! travel through `QueuedHints`/`HintFeed` with command ids, as a balloon's free page queue
//! would deliver them, and the source is plugged in through the `HintProvider` seam.

mod migration_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use migration_support::{Call, Hooked};
use proptest::prelude::*;
use vballoon::guest::{Guest, Workload};
use vballoon::machine::{migrate_local, GuestRunner, HintMode, HintProvider, MigrateOptions};
use vballoon::memory::{Backing, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use vballoon::migration::{
    HintFeed, HintSource, MigrationError, QueuedHints, CMD_ID_MIN, CMD_ID_STOP,
};

/// Guest pages: 8 MiB, sent in chunks of 256 pages, so a round has eight poll points.
const PAGES: u64 = 2048;
const CHUNK: u64 = 256;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate a block of this order and fill it.
    Alloc(u8),
    /// Rewrite one page of a held block (index taken modulo the blocks held).
    Write(usize),
    /// Free a held block (its bytes stay: stale free memory).
    Free(usize),
    /// Hint up to this many free blocks under the current command id.
    Hint(usize),
    /// Hint a free block, then at once allocate and write it (before any sync).
    HintThenReuse(usize),
    /// Report a held (in use!) block under a stale id and under STOP: must be dropped.
    StaleHint(usize),
    /// Tell the device there is nothing more to hint for this request.
    Finish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Alloc),
        4 => any::<usize>().prop_map(Op::Write),
        2 => any::<usize>().prop_map(Op::Free),
        3 => (1usize..16).prop_map(Op::Hint),
        2 => any::<usize>().prop_map(Op::HintThenReuse),
        1 => any::<usize>().prop_map(Op::StaleHint),
        1 => Just(Op::Finish),
    ]
}

/// The guest's side of the test: the script and what it holds.
struct Script {
    ops: Vec<Op>,
    per_call: usize,
    pos: usize,
    held: Vec<(u64, u8)>,
    stamp: u64,
}

impl Script {
    fn fill(&mut self, guest: &mut Guest, pfn: u64, order: u8) {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for p in pfn..pfn + (1 << order) {
            self.stamp += 1;
            page.fill(self.stamp as u8);
            page[..8].copy_from_slice(&self.stamp.to_le_bytes());
            guest.write(Pfn(p).addr(), &page).unwrap();
        }
    }

    fn free_blocks(guest: &Guest) -> Vec<(u64, u8)> {
        let mut v = Vec::new();
        guest
            .allocator()
            .for_each_free_block(|p, o| v.push((p.0, o)));
        v
    }

    /// Runs the next `per_call` operations as the guest.
    fn step(&mut self, guest: &mut Guest, feed: &HintFeed, stale_id: u32) {
        for _ in 0..self.per_call {
            let Some(op) = self.ops.get(self.pos).cloned() else {
                return;
            };
            self.pos += 1;
            match op {
                Op::Alloc(order) => {
                    if let Ok(p) = guest.allocator_mut().alloc(order) {
                        self.fill(guest, p.0, order);
                        self.held.push((p.0, order));
                    }
                }
                Op::Write(i) if !self.held.is_empty() => {
                    let (pfn, order) = self.held[i % self.held.len()];
                    self.fill(guest, pfn + (i as u64 % (1 << order)), 0);
                }
                Op::Free(i) if !self.held.is_empty() => {
                    let (pfn, order) = self.held.swap_remove(i % self.held.len());
                    guest.allocator_mut().free(Pfn(pfn), order).unwrap();
                }
                Op::Hint(n) => {
                    let id = feed.cmd_id();
                    for (pfn, order) in Self::free_blocks(guest).into_iter().take(n) {
                        feed.report(id, PageRange::new(pfn, 1 << order));
                    }
                }
                Op::HintThenReuse(i) => {
                    let free = Self::free_blocks(guest);
                    if !free.is_empty() {
                        let (pfn, order) = free[i % free.len()];
                        feed.report(feed.cmd_id(), PageRange::new(pfn, 1 << order));
                        let order = order.min(2);
                        guest.allocator_mut().alloc_at(Pfn(pfn), order).unwrap();
                        self.fill(guest, pfn, order);
                        self.held.push((pfn, order));
                    }
                }
                Op::StaleHint(i) if !self.held.is_empty() => {
                    let (pfn, order) = self.held[i % self.held.len()];
                    feed.report(stale_id, PageRange::new(pfn, 1 << order));
                    feed.report(CMD_ID_STOP, PageRange::new(pfn, 1 << order));
                }
                Op::Finish => feed.finish(feed.cmd_id()),
                Op::Write(_) | Op::Free(_) | Op::StaleHint(_) => {}
            }
        }
    }
}

/// Hands the engine a source whose callbacks run the script as the guest.
struct Scripted {
    script: Mutex<Option<Script>>,
}

impl HintProvider for Scripted {
    fn name(&self) -> &str {
        "proptest script"
    }

    fn supports(&self, mode: HintMode) -> bool {
        mode == HintMode::Upstream
    }

    fn hint_source<'a>(
        &'a self,
        _mode: HintMode,
        guest: &'a GuestRunner,
    ) -> Result<Option<Box<dyn HintSource + 'a>>, MigrationError> {
        let script = self.script.lock().unwrap().take().expect("one migration");
        let (inner, feed) = QueuedHints::new();
        let mut actor = Actor {
            feed,
            guest,
            script,
            last_id: CMD_ID_MIN - 1,
        };
        Ok(Some(Box::new(Hooked {
            inner: Box::new(inner),
            hook: move |call| match call {
                Call::BeforeStart => {}
                // The id of the request being stopped: stale from now on.
                Call::BeforeStop => actor.last_id = actor.feed.cmd_id(),
                // After a start, before a chunk, and between a stop and the sync (late hints
                // land under a dead id).
                Call::AfterStart | Call::BeforePoll | Call::AfterStop => actor.act(),
            },
        })))
    }
}

/// The guest side of a script: acts at the engine's calls, hinting through `feed`.
struct Actor<'a> {
    feed: HintFeed,
    guest: &'a GuestRunner,
    script: Script,
    /// The id of the previous request: stale once a new one starts.
    last_id: u32,
}

impl Actor<'_> {
    fn act(&mut self) {
        let mut st = self.guest.lock();
        assert!(
            !self.guest.is_paused(),
            "no hint callback during stop-and-copy"
        );
        self.script.step(&mut st.guest, &self.feed, self.last_id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_every_used_page_arrives(
        setup in proptest::collection::vec(op(), 0..40),
        ops in proptest::collection::vec(op(), 1..160),
        per_call in 1usize..6,
        skip in any::<bool>(),
    ) {
        let mem = GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap();
        let guest = GuestRunner::new(Guest::new(Arc::new(mem)).unwrap(), Workload::new(1));
        // Set-up before the migration: memory in use, stale free pages.
        let mut script = Script { ops: setup, per_call: usize::MAX, pos: 0, held: Vec::new(), stamp: 0 };
        {
            let (_, feed) = QueuedHints::new();
            let mut st = guest.lock();
            script.step(&mut st.guest, &feed, 0);
        }
        script.ops = ops;
        script.pos = 0;
        script.per_call = per_call;
        let provider = Arc::new(Scripted { script: Mutex::new(Some(script)) });
        let opts = MigrateOptions {
            hints: HintMode::Upstream,
            hint_provider: Some(provider),
            bandwidth_bytes_per_s: 0,
            downtime_target: Duration::ZERO, // keep going while the script dirties pages
            max_rounds: 6,
            skip_unpopulated: skip,
            chunk_pages: CHUNK,
            io_timeout: Duration::from_secs(10),
            ..MigrateOptions::default()
        };
        let r = migrate_local(&guest, &opts).unwrap();
        let v = r.verify.unwrap();
        prop_assert!(v.ok(), "{v:?} rounds {:?}", r.result.per_round);
        prop_assert_eq!(v.used_pages, guest.used_pages().count());
        guest.lock().guest.allocator().check_invariants().unwrap();
    }
}
