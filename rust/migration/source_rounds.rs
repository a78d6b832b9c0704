//! The pre-copy rounds: live rounds while the guest runs, then the stop-and-copy round.

use super::*;

impl Engine<'_> {
    /// Runs the live rounds and the stop-and-copy round; returns (pause instant, converged).
    pub(super) fn rounds(
        &mut self,
        tracker: &mut DirtyTracker<'_>,
        w: &mut StreamWriter,
        sink: &mut QueueSink,
        hints: &mut HintGuard<'_>,
        pause: &mut PauseGuard<'_>,
    ) -> Result<(Instant, bool), MigrationError> {
        let io_timeout = self.cfg.io_timeout;
        let io = |op| move |e| map_io_error(op, io_timeout, e);
        let pages = self.mem.pages();
        let mut set = PageSet::full(pages);
        let mut round = 1u32;
        let converged = loop {
            self.check_cancel()?;
            let t = Instant::now();
            let bytes0 = sink.sent;
            w.round(sink, round).map_err(io("send round marker"))?;
            let mut st = RoundStats {
                round,
                pages_in_bitmap: set.count(),
                ..RoundStats::default()
            };
            let mut source = hints.source();
            if let Some(h) = source.as_deref_mut() {
                h.start(round)?;
            }
            let sent = self.send_set(&mut set, source.as_deref_mut(), w, sink, &mut st);
            // Hinting stops before the dirty log is synced, on every path.
            let stopped = source.map_or(Ok(()), |h| h.stop());
            sent?;
            stopped?;
            w.flush_batch(sink).map_err(io("send batch"))?;
            set.clear();
            tracker.sync_into(&mut set)?;
            st.dirty_after = set.count();
            st.duration = t.elapsed();
            st.bytes = sink.sent - bytes0;
            let rate = match self.cfg.bandwidth_bytes_per_s {
                0 => (st.bytes as f64 / st.duration.as_secs_f64().max(1e-6)).max(100e6),
                bw => bw as f64,
            };
            let budget = rate * self.cfg.downtime_target.as_secs_f64();
            let dirty_bytes = (st.dirty_after * PAGE_SIZE) as f64;
            self.stats.push(st);
            if dirty_bytes <= budget {
                break true;
            }
            if round >= self.cfg.max_rounds.max(1) {
                break false;
            }
            round += 1;
        };
        // Stop and copy.
        self.check_cancel()?;
        if let Some(p) = &self.cfg.progress {
            p.stop_and_copy.store(true, Ordering::Relaxed);
        }
        let paused_at = pause.pause();
        let t = Instant::now();
        let bytes0 = sink.sent;
        tracker.sync_into(&mut set)?;
        round += 1;
        let mut st = RoundStats {
            round,
            stop_and_copy: true,
            pages_in_bitmap: set.count(),
            ..RoundStats::default()
        };
        w.round(sink, round).map_err(io("send round marker"))?;
        self.send_set(&mut set, None, w, sink, &mut st)?;
        w.finish(sink).map_err(io("send end frame"))?;
        st.duration = t.elapsed();
        st.bytes = sink.sent - bytes0;
        self.stats.push(st);
        Ok((paused_at, converged))
    }

    /// Sends every page whose bit is set in `set`, applying hints before each chunk.
    fn send_set(
        &mut self,
        set: &mut PageSet,
        mut hints: Option<&mut (dyn HintSource + '_)>,
        w: &mut StreamWriter,
        sink: &mut QueueSink,
        st: &mut RoundStats,
    ) -> Result<(), MigrationError> {
        let mem = self.mem;
        let pages = set.npages();
        let mut out = PageOut::new(w, sink, self.cfg.io_timeout);
        let mut hints_finished = false;
        let mut chunk = 0;
        while chunk < pages {
            self.check_cancel()?;
            let end = (chunk + self.cfg.chunk_pages.max(1)).min(pages);
            if let Some(h) = hints.as_deref_mut().filter(|_| !hints_finished) {
                let cursor = chunk;
                let hinted = &mut st.hinted_pages;
                hints_finished = h.poll(&mut |run| {
                    // Pages before the cursor are already sent; clearing them changes nothing.
                    let lo = run.start.max(cursor);
                    let hi = run.end().min(pages);
                    if hi > lo {
                        *hinted += set.count_range(lo, hi - lo);
                        set.remove_range(lo, hi - lo);
                    }
                })?;
            }
            if set.count_range(chunk, end - chunk) == 0 {
                chunk = end;
                if let Some(p) = &self.cfg.progress {
                    p.update(st.round, chunk, pages, out.sink.sent);
                }
                continue;
            }
            // Without skipping, a memfd guest's holes are still found, to be read through the
            // file: reading them through the mapping would allocate every one of them.
            let resident = if self.cfg.skip_unpopulated || mem.memfd().is_some() {
                Some(mem.populated(GuestAddress(chunk * PAGE_SIZE), (end - chunk) * PAGE_SIZE)?)
            } else {
                None
            };
            for PageRange {
                start: first,
                len: n,
            } in set.runs_in(chunk, end)
            {
                let mut pfn = first;
                while pfn < first + n {
                    // A stretch of unpopulated pages is one zero run, whatever its length.
                    if let Some(r) = &resident {
                        #[allow(
                            clippy::cast_possible_truncation,
                            reason = "offsets into `r`, which holds a byte per page of the chunk"
                        )]
                        let (from, to) = ((pfn - chunk) as usize, (first + n - chunk) as usize);
                        let k = r[from..to].iter().take_while(|&&b| b & 1 == 0).count() as u64;
                        if k > 0 && self.cfg.skip_unpopulated {
                            st.unpopulated_pages += k;
                            out.zero(PageRange::new(pfn, k))?;
                            pfn += k;
                            continue;
                        }
                        if k > 0 {
                            self.read_holes(PageRange::new(pfn, k), &mut out, st)?;
                            pfn += k;
                            continue;
                        }
                    }
                    let addr = GuestAddress(pfn * PAGE_SIZE);
                    if self.cfg.zero_detection && mem.is_zero(addr, PAGE_SIZE)? {
                        st.zero_pages += 1;
                        out.zero(PageRange::new(pfn, 1))?;
                    } else {
                        mem.read(addr, out.data_slot(Pfn(pfn))?)?;
                        st.data_pages += 1;
                    }
                    pfn += 1;
                }
            }
            chunk = end;
            if let Some(p) = &self.cfg.progress {
                p.update(st.round, chunk, pages, out.sink.sent);
            }
        }
        out.finish()
    }
}
