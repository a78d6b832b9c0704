//! The two threads beside the guest's workload: the device's I/O loop and the guest's balloon
//! worker.

use super::*;

pub(super) fn spawn_threads(shared: &Arc<Shared>, interval: Duration) -> Result<Threads> {
    let stop = EventFd::new()?;
    let (kicks, config, interrupts) = {
        let dev = lock(&shared.device);
        let t = dev.transport();
        let mut kicks = Vec::new();
        for i in 0..dev.num_queues() {
            kicks.push((i, t.kick_notifier(i)?));
        }
        let drv = lock(&shared.driver);
        let q = drv.queue_indexes();
        let mut interrupts = Vec::new();
        for i in [q.misc, q.free_page, q.reporting].into_iter().flatten() {
            interrupts.push(t.interrupt_notifier(i)?);
        }
        (kicks, t.config_notifier().clone(), interrupts)
    };
    let mut handles = Vec::new();
    let (s, stop_rx) = (Arc::clone(shared), stop.try_clone()?);
    handles.push(
        std::thread::Builder::new()
            .name("vb-hint-device".into())
            .spawn(move || device_loop(&s, &kicks, &stop_rx))
            .map_err(|e| Error::Config(format!("cannot spawn the device thread: {e}")))?,
    );
    let (s, stop_rx) = (Arc::clone(shared), stop.try_clone()?);
    handles.push(
        std::thread::Builder::new()
            .name("vb-hint-guest".into())
            .spawn(move || worker_loop(&s, &config, &interrupts, &stop_rx, interval))
            .map_err(|e| Error::Config(format!("cannot spawn the balloon worker: {e}")))?,
    );
    Ok(Threads { stop, handles })
}

/// Waits until one of `fds` is readable or `timeout` passes; returns whether `fds[0]` (the
/// stop eventfd) fired.
fn wait_any(fds: &[i32], timeout: Duration) -> bool {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid array of pollfd for the duration of the call.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    rc > 0 && p[0].revents != 0
}

/// The VMM's I/O thread for the balloon: serves kicked queues while the guest runs.
fn device_loop(s: &Shared, kicks: &[(u16, Notifier)], stop: &EventFd) {
    let mut fds = vec![stop.as_raw_fd()];
    fds.extend(kicks.iter().filter_map(|(_, k)| k.raw_fd()));
    loop {
        if wait_any(&fds, Duration::from_millis(50)) {
            return;
        }
        let served = s.guest.with(|_, paused| {
            if paused {
                // A stopped VM's devices do nothing; the kicks stay pending.
                return false;
            }
            for (i, k) in kicks {
                if k.take().unwrap_or(0) > 0 {
                    // Errors are in the device's log; a broken queue set NEEDS_RESET.
                    let _ = lock(&s.device).process_queue(*i);
                }
            }
            true
        });
        match served {
            None => return,
            Some(false) => std::thread::sleep(Duration::from_millis(1)),
            Some(true) => {}
        }
    }
}

/// The guest's balloon worker: reacts to config changes and interrupts.
fn worker_loop(
    s: &Shared,
    config: &Notifier,
    interrupts: &[Notifier],
    stop: &EventFd,
    interval: Duration,
) {
    let mut fds = vec![stop.as_raw_fd()];
    fds.extend(config.raw_fd());
    fds.extend(interrupts.iter().filter_map(Notifier::raw_fd));
    loop {
        if wait_any(&fds, interval) {
            return;
        }
        let _ = config.take();
        for n in interrupts {
            let _ = n.take();
        }
        match s.guest.is_paused() {
            None => return,
            Some(true) => continue,
            Some(false) => {}
        }
        if let Err(e) = s.pump_guest() {
            s.record(e);
        }
    }
}

impl Shared {
    /// The worker's guest-side steps (no device step: the device thread does those).
    fn pump_guest(&self) -> std::result::Result<(), MigrationError> {
        let r = self
            .guest
            .with(|st, paused| -> std::result::Result<(), MigrationError> {
                if paused {
                    return Ok(());
                }
                for _ in 0..64 {
                    if self.guest_step(&mut st.guest)? != HintStep::Progress {
                        break;
                    }
                }
                Ok(())
            });
        r.unwrap_or(Ok(()))
    }
}
