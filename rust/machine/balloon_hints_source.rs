//! The balloon as a migration's [`HintProvider`]: per-round sources that ask the guest for
//! hints and collect what the device took.

use super::*;

impl HintProvider for BalloonHints {
    fn name(&self) -> &str {
        "balloon"
    }

    fn supports(&self, mode: HintMode) -> bool {
        !matches!(mode, HintMode::Off)
    }

    fn hint_source<'a>(
        &'a self,
        mode: HintMode,
        guest: &'a GuestRunner,
    ) -> std::result::Result<Option<Box<dyn HintSource + 'a>>, MigrationError> {
        if mode == HintMode::Off {
            return Ok(None);
        }
        let (shared, run) = self.shared_for(guest).map_err(hint_err)?;
        // Let the last migration's DONE take effect and late replies finish.
        let t = Instant::now();
        while !shared.settled() && t.elapsed() < self.cfg.settle_timeout {
            match run {
                HintRun::Inline | HintRun::Manual => shared.pump(1 << 16)?,
                HintRun::Threaded => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        let f = lock(&shared.driver).features();
        let negotiated = match mode {
            HintMode::Bitmap => f.misc_vq(),
            HintMode::Upstream => f.free_page_hint(),
            HintMode::Reporting => f.reporting(),
            HintMode::Off => false,
        };
        let queued = if negotiated {
            let (q, feed) = QueuedHints::new();
            *lock(&shared.route) = Route {
                feed: Some(feed.clone()),
                ids: Vec::new(),
            };
            Some((q, feed))
        } else {
            None
        };
        if negotiated && mode == HintMode::Reporting {
            if !self.cfg.report_before.is_zero() {
                report_pass(&shared, run, self.cfg.report_before).map_err(hint_err)?;
            }
            shared.reporting_on.store(true, Ordering::Release);
        }
        Ok(Some(Box::new(BalloonSource {
            mode,
            shared,
            run,
            queued,
            bitmap_wait: self.cfg.bitmap_wait,
            device_id: None,
        })))
    }

    fn reset_guest(
        &self,
        mode: HintMode,
        guest: &GuestRunner,
        resident_before: &PageSet,
    ) -> std::result::Result<u64, MigrationError> {
        match mode {
            HintMode::Reporting => self.unreport(guest, resident_before).map_err(hint_err),
            _ => Ok(0),
        }
    }

    fn unused_pages(&self, guest: &Guest, out: &mut PageSet) {
        if let Some(a) = lock(&self.attached).as_ref() {
            if Arc::ptr_eq(&a.shared.memory, guest.memory()) {
                lock(&a.shared.driver).unused_pages_into(out);
            }
        }
    }
}

/// The source of one migration; see the module docs.
struct BalloonSource {
    mode: HintMode,
    shared: Arc<Shared>,
    run: HintRun,
    /// The migration's filter and feed; `None` when the mode's feature was not negotiated
    /// (then the source hints nothing).
    queued: Option<(QueuedHints, HintFeed)>,
    bitmap_wait: Duration,
    device_id: Option<u64>,
}

impl BalloonSource {
    fn pump(&self) -> std::result::Result<(), MigrationError> {
        match self.run {
            HintRun::Inline => self.shared.pump(64),
            HintRun::Threaded | HintRun::Manual => Ok(()),
        }
    }
}

impl HintSource for BalloonSource {
    fn start(&mut self, round: u32) -> std::result::Result<(), MigrationError> {
        let Some((q, feed)) = &mut self.queued else {
            return Ok(());
        };
        if self.mode == HintMode::Reporting {
            return Ok(());
        }
        q.start(round)?;
        let fid = feed.cmd_id();
        let s = &self.shared;
        let did = s.new_id();
        lock(&s.route).ids.push((u64::from(did), fid));
        self.device_id = Some(u64::from(did));
        {
            let mut d = lock(&s.device);
            match self.mode {
                HintMode::Bitmap => d.request_unused_pages(u64::from(did)).map(|_| ()),
                _ => d.start_free_page_hint(did),
            }
            .map_err(hint_err)?;
        }
        let wait = self.mode == HintMode::Bitmap && round == 1 && !self.bitmap_wait.is_zero();
        if wait && self.run != HintRun::Manual {
            // The seed's QEMU RFC asked for the bitmap before the bulk stage, polling every
            // millisecond; here at most `bitmap_wait`.
            let t = Instant::now();
            while s.finished.load(Ordering::Acquire) != u64::from(did)
                && t.elapsed() < self.bitmap_wait
            {
                match self.run {
                    HintRun::Threaded => std::thread::sleep(Duration::from_micros(100)),
                    _ => s.pump(1 << 16)?,
                }
            }
        }
        self.pump()
    }

    fn poll(
        &mut self,
        out: &mut dyn FnMut(PageRange),
    ) -> std::result::Result<bool, MigrationError> {
        self.pump()?;
        match &mut self.queued {
            Some((q, _)) if self.mode != HintMode::Reporting => q.poll(out),
            _ => Ok(true),
        }
    }

    fn stop(&mut self) -> std::result::Result<(), MigrationError> {
        let Some((q, _)) = &mut self.queued else {
            return Ok(());
        };
        if self.mode == HintMode::Reporting {
            return Ok(());
        }
        q.stop()?;
        let mut d = lock(&self.shared.device);
        match self.mode {
            HintMode::Bitmap => {
                d.cancel_unused_pages();
                Ok(())
            }
            _ => d.stop_free_page_hint().map_err(hint_err),
        }
    }

    fn done(&mut self) {
        let s = &self.shared;
        s.reporting_on.store(false, Ordering::Release);
        let Some((q, _)) = &mut self.queued else {
            return;
        };
        q.done();
        *lock(&s.route) = Route::default();
        let mut d = lock(&s.device);
        match self.mode {
            HintMode::Bitmap => d.cancel_unused_pages(),
            HintMode::Upstream => {
                if let Err(e) = d.free_page_hint_done() {
                    s.record(e);
                }
            }
            _ => {}
        }
    }
}
