//! [`VhostUserBackend`]: a listening socket and the thread that serves frontends one at a time,
//! with the host's controls (target, stats, hinting) and a status snapshot.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::conn::{self, Current};
use super::error::VhostUserError;
use super::handler::{Handler, Offer};
use super::shared::{lock, Shared, Totals, VhostStatus};
use super::{feature_names, offer_for};
use crate::abi::{VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_MIN};
use crate::device::FreePageStatus;
use crate::virtq::EventFd;

/// A vhost-user balloon backend serving frontends on a Unix socket (see the module docs).
pub struct VhostUserBackend {
    path: PathBuf,
    shared: Arc<Shared>,
    offer: Arc<Mutex<Offer>>,
    current: Current,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    next_cmd_id: u32,
}

impl std::fmt::Debug for VhostUserBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserBackend")
            .field("path", &self.path)
            .finish()
    }
}

/// Bytes of `sockaddr_un.sun_path` a path may use (108 with the terminating NUL, unix(7)).
const SUN_PATH_MAX: usize = 107;

fn bind(path: &Path) -> Result<UnixListener, VhostUserError> {
    // A path no socket can have is the caller's mistake, not the host's: refuse it by value.
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() > SUN_PATH_MAX {
        return Err(VhostUserError::Argument(format!(
            "socket path {path:?} must be 1..={SUN_PATH_MAX} bytes without NUL"
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| VhostUserError::Os {
                op: "unlink(stale socket)",
                source,
            })?;
        }
        Ok(_) => {
            return Err(VhostUserError::Argument(format!(
                "{} exists and is not a socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(|source| VhostUserError::Os { op: "bind", source })?;
    l.set_nonblocking(true)
        .map_err(|source| VhostUserError::Os {
            op: "set_nonblocking",
            source,
        })?;
    Ok(l)
}

fn wait_readable(fds: [i32; 2], ms: i32) {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two valid pollfds; the fds are open for the call.
    unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
}

impl VhostUserBackend {
    /// Binds `socket` (replacing a stale socket file) and serves frontends on a new thread.
    pub fn new(
        socket: impl AsRef<Path>,
        features: &[&str],
        queue_size: u16,
    ) -> Result<VhostUserBackend, VhostUserError> {
        let offer = Arc::new(Mutex::new(offer_for(features, queue_size)?));
        let path = socket.as_ref().to_path_buf();
        let listener = bind(&path)?;
        let shared = Arc::new(Shared::default());
        let current: Current = Arc::new(Mutex::new(None));
        let wake = Arc::new(EventFd::new().map_err(|e| VhostUserError::Argument(e.to_string()))?);
        let (s, o, c, w) = (
            Arc::clone(&shared),
            Arc::clone(&offer),
            Arc::clone(&current),
            Arc::clone(&wake),
        );
        let thread = std::thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || accept_loop(listener, &s, &o, &c, &w))
            .map_err(|source| VhostUserError::Os {
                op: "spawn",
                source,
            })?;
        Ok(VhostUserBackend {
            path,
            shared,
            offer,
            current,
            wake,
            thread: Some(thread),
            next_cmd_id: VIRTIO_BALLOON_CMD_ID_MIN,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_handler<T>(&self, f: impl FnOnce(&mut Handler) -> T) -> Option<T> {
        with_handler(&self.current, f)
    }

    /// Changes the offered features: only before the connected frontend (if any) set features.
    pub fn set_features(&self, features: &[&str], queue_size: u16) -> Result<(), VhostUserError> {
        let offer = offer_for(features, queue_size)?;
        let r = self.with_handler(|h| {
            if h.acked.is_some() {
                return Err(VhostUserError::Argument(
                    "the connected frontend already negotiated features".into(),
                ));
            }
            h.offer = offer;
            Ok(())
        });
        r.unwrap_or(Ok(()))?;
        *lock(&self.offer) = offer;
        Ok(())
    }

    /// Sets `num_pages` and notifies the driver if one is bound (kept for the next otherwise).
    pub fn set_target(&self, pages: u32) -> Result<(), VhostUserError> {
        self.shared.target.store(pages, Ordering::Release);
        self.with_handler(|h| match &h.device {
            Some(d) => d.set_num_pages(pages).map_err(VhostUserError::from),
            None => Ok(()),
        })
        .unwrap_or(Ok(()))
    }

    /// Returns the held stats buffer to the guest; false if none is held.
    pub fn request_stats(&self) -> Result<bool, VhostUserError> {
        self.with_handler(|h| match (h.device.as_mut(), h.active) {
            (Some(d), true) => d.request_stats().map_err(VhostUserError::from),
            _ => Ok(false),
        })
        .unwrap_or(Ok(false))
    }

    /// The last stats sample, by Linux tag names.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let live = self.with_handler(|h| h.device.as_ref().map(super::named_stats));
        match live.flatten() {
            Some(v) if !v.is_empty() => {
                *lock(&self.shared.stats) = v.clone();
                v
            }
            _ => lock(&self.shared.stats).clone(),
        }
    }

    /// Starts free page hinting under a new command id (≥ 2), returned.
    pub fn start_hinting(&mut self) -> Result<u32, VhostUserError> {
        let id = self.next_cmd_id;
        self.with_handler(|h| match (h.device.as_mut(), h.active) {
            (Some(d), true) => d.start_free_page_hint(id).map_err(VhostUserError::from),
            _ => Err(VhostUserError::Argument("no driver is bound".into())),
        })
        .unwrap_or_else(|| Err(VhostUserError::Argument("no frontend is connected".into())))?;
        self.shared.hint_cmd_id.store(id, Ordering::Release);
        self.next_cmd_id = id.checked_add(1).unwrap_or(VIRTIO_BALLOON_CMD_ID_MIN);
        Ok(id)
    }

    /// Ends hinting: DONE (1) in config, the guest may reuse the blocks it holds.
    pub fn stop_hinting(&self) -> Result<(), VhostUserError> {
        self.with_handler(|h| match (h.device.as_mut(), h.active) {
            (Some(d), true) => d.free_page_hint_done().map_err(VhostUserError::from),
            _ => Err(VhostUserError::Argument("no driver is bound".into())),
        })
        .unwrap_or_else(|| Err(VhostUserError::Argument("no frontend is connected".into())))?;
        self.shared
            .hint_cmd_id
            .store(VIRTIO_BALLOON_CMD_ID_DONE, Ordering::Release);
        Ok(())
    }

    /// A snapshot of the backend.
    pub fn status(&self) -> VhostStatus {
        self.status_view().status()
    }

    /// A handle that reads the status without the backend itself, and waits on it
    /// ([`StatusView::wait_for`]) while another thread may close the backend.
    pub fn status_view(&self) -> StatusView {
        StatusView {
            shared: Arc::clone(&self.shared),
            current: Arc::clone(&self.current),
        }
    }

    /// Stops serving, closes and unlinks the socket; idempotent.
    pub fn close(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.wake.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for VhostUserBackend {
    fn drop(&mut self) {
        self.close();
    }
}

fn accept_loop(
    listener: UnixListener,
    shared: &Arc<Shared>,
    offer: &Mutex<Offer>,
    current: &Current,
    wake: &EventFd,
) {
    while !shared.is_stopping() {
        wait_readable([listener.as_raw_fd(), wake.as_raw_fd()], 1000);
        let _ = wake.try_read();
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => continue,
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        shared.connected.store(true, Ordering::Release);
        shared.frontends.fetch_add(1, Ordering::AcqRel);
        let o = *lock(offer);
        if let Err(e) = conn::serve(stream, shared, o, wake, current) {
            shared.log(format!("frontend dropped: {e}"));
        }
        shared.connected.store(false, Ordering::Release);
    }
}

fn with_handler<T>(current: &Current, f: impl FnOnce(&mut Handler) -> T) -> Option<T> {
    let h = lock(current).clone()?;
    let mut g = lock(&h);
    Some(f(&mut g))
}

/// Reads a backend's status; outlives nothing it reads (see [`VhostUserBackend::status_view`]).
#[derive(Clone, Debug)]
pub struct StatusView {
    shared: Arc<Shared>,
    current: Current,
}

impl StatusView {
    /// A snapshot of the backend.
    pub fn status(&self) -> VhostStatus {
        let sh = &self.shared;
        let mut st = VhostStatus {
            connected: sh.connected.load(Ordering::Acquire),
            frontends_served: sh.frontends.load(Ordering::Acquire),
            target_pages: sh.target.load(Ordering::Acquire),
            hint_cmd_id: sh.hint_cmd_id.load(Ordering::Acquire),
            ..VhostStatus::default()
        };
        let retired = *lock(&sh.retired);
        let mut live = Totals::default();
        with_handler(&self.current, |h| {
            live = h.device_totals();
            if let Some(m) = &h.mem {
                st.ram_bytes = m.ram_bytes();
                st.ram_backed_bytes = m.backed_bytes().unwrap_or(0);
            }
            if let Some(d) = &h.device {
                st.actual_pages = d.actual();
                st.target_pages = d.num_pages();
                st.inflated_pages = d.balloon_pages();
                if let FreePageStatus::Start(id) = d.free_page_status() {
                    st.hint_guest_cmd_id = id;
                }
            }
            if h.active {
                st.driver_ok = true;
                st.negotiated_features = feature_names(h.acked.unwrap_or(0));
            }
        });
        st.totals = retired.plus(live);
        st.errors = lock(&sh.errors).iter().cloned().collect();
        st
    }

    /// Waits until `actual_pages` (if given) and `connected` (if given) hold, or `timeout`.
    pub fn wait_for(
        &self,
        actual_pages: Option<u32>,
        connected: Option<bool>,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            let ok = actual_pages.is_none_or(|a| st.actual_pages == a)
                && connected.is_none_or(|c| st.connected == c);
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
