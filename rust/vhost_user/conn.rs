//! One frontend connection: a poll loop over the front channel, the kick fds of the running
//! queues, the device's interrupt and config-change eventfds, and the backend's wake fd.
//!
//! Messages go to the vhost crate's [`BackendReqHandler`], except SET_BACKEND_REQ_FD: vhost
//! 0.18's `Backend` cannot send VHOST_USER_BACKEND_CONFIG_CHANGE_MSG and does not give its
//! socket back, so we take that one message off the socket ourselves (header peeked first) and
//! write the config-change notice by hand ([`super::wire`]).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::{BackendReqHandler, Error as VuError};

use super::error::VhostUserError;
use super::handler::{Handler, Offer};
use super::shared::{lock, Shared};
use super::wire;
use crate::transport::VirtioDevice;
use crate::virtq::{EventFd, Notifier};

/// A frontend that stalls mid-message is dropped after this long.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The handler of the frontend being served, for the control side.
pub(crate) type Current = Arc<Mutex<Option<Arc<Mutex<Handler>>>>>;

#[derive(Clone, Copy)]
enum Src {
    Front,
    Wake,
    Kick(u16),
    Interrupt(u16),
    Config,
}

/// Serves one frontend until it disconnects, breaks the protocol, or the backend stops.
pub(crate) fn serve(
    stream: UnixStream,
    shared: &Arc<Shared>,
    offer: Offer,
    wake: &EventFd,
    current: &Current,
) -> Result<(), VhostUserError> {
    let os = |op| move |source| VhostUserError::Os { op, source };
    stream
        .set_read_timeout(Some(MESSAGE_TIMEOUT))
        .map_err(os("SO_RCVTIMEO"))?;
    let handler = Arc::new(Mutex::new(Handler::new(Arc::clone(shared), offer)));
    *lock(current) = Some(Arc::clone(&handler));
    let peek = stream.try_clone().map_err(os("dup"))?;
    let mut req = BackendReqHandler::from_stream(stream, Arc::clone(&handler));
    let mut backend: Option<UnixStream> = None;
    let result = run(&mut req, &peek, &handler, shared, wake, &mut backend);
    *lock(current) = None;
    lock(&handler).retire_device();
    result
}

fn run(
    req: &mut BackendReqHandler<Mutex<Handler>>,
    front: &UnixStream,
    handler: &Arc<Mutex<Handler>>,
    shared: &Shared,
    wake: &EventFd,
    backend: &mut Option<UnixStream>,
) -> Result<(), VhostUserError> {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut srcs: Vec<Src> = Vec::new();
    let mut partial: Option<Instant> = None;
    loop {
        if shared.is_stopping() {
            return Ok(());
        }
        fds.clear();
        srcs.clear();
        let mut add = |fd: RawFd, s: Src| {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            srcs.push(s);
        };
        add(front.as_raw_fd(), Src::Front);
        add(wake.as_raw_fd(), Src::Wake);
        {
            let h = lock(handler);
            if let Some(dev) = &h.device {
                if let Some(fd) = dev.config_notifier().raw_fd() {
                    add(fd, Src::Config);
                }
                for i in 0..h.running_queues() {
                    let v = &h.vrings[usize::from(i)];
                    if let Some(k) = &v.kick {
                        add(k.as_raw_fd(), Src::Kick(i));
                    }
                    if let Some(fd) = v.interrupt.as_ref().and_then(Notifier::raw_fd) {
                        add(fd, Src::Interrupt(i));
                    }
                }
            }
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds; every fd in it stays open
        // until after the call (only this thread closes them, between iterations).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(VhostUserError::Os {
                op: "poll",
                source: e,
            });
        }
        for (p, s) in fds.iter().zip(srcs.iter()) {
            if p.revents == 0 {
                continue;
            }
            match *s {
                Src::Wake => {
                    let _ = wake.try_read();
                }
                Src::Front => {}
                Src::Kick(i) => {
                    let mut h = lock(handler);
                    if let Some(k) = h.vrings[usize::from(i)].kick.as_mut() {
                        drain(k);
                    }
                    if i < h.running_queues() {
                        serve_queue(&mut h, i, shared);
                    }
                }
                Src::Interrupt(i) => {
                    let h = lock(handler);
                    let v = &h.vrings[usize::from(i)];
                    let fired = match &v.interrupt {
                        Some(n) => n.take()?,
                        None => 0,
                    };
                    // The device's interrupt, forwarded to the frontend's call fd.
                    if let (true, Some(call)) = (fired > 0, &v.call) {
                        signal(call);
                    }
                }
                Src::Config => {
                    let h = lock(handler);
                    if let Some(dev) = &h.device {
                        if dev.config_notifier().take()? > 0 {
                            if let Some(b) = backend.as_ref() {
                                if let Err(e) = wire::send_config_change(b) {
                                    shared.log(&e);
                                }
                            }
                        }
                    }
                }
            }
        }
        // The front channel last, so this round's fds were all valid while polled.
        let front_ready = fds[0].revents != 0;
        if front_ready && !front_message(req, front, handler, shared, backend, &mut partial)? {
            return Ok(());
        }
    }
}

/// Handles one front-channel message; false when the frontend hung up.
fn front_message(
    req: &mut BackendReqHandler<Mutex<Handler>>,
    front: &UnixStream,
    handler: &Arc<Mutex<Handler>>,
    shared: &Shared,
    backend: &mut Option<UnixStream>,
    partial: &mut Option<Instant>,
) -> Result<bool, VhostUserError> {
    match wire::peek_request(front)? {
        wire::Pending::Closed => return Ok(false),
        wire::Pending::Partial => {
            let since = *partial.get_or_insert_with(Instant::now);
            if since.elapsed() > MESSAGE_TIMEOUT {
                return Err(VhostUserError::BadMessage {
                    op: "message",
                    reason: format!("incomplete for {MESSAGE_TIMEOUT:?}"),
                });
            }
            // Poll says readable until the rest arrives: do not spin on it.
            std::thread::sleep(Duration::from_millis(5));
            return Ok(true);
        }
        wire::Pending::Message(wire::SET_BACKEND_REQ_FD) => {
            *partial = None;
            let acked = lock(handler).protocol;
            *backend = Some(wire::take_backend_req_fd(front, acked)?);
            return Ok(true);
        }
        wire::Pending::Message(_) => *partial = None,
    }
    match req.handle_request() {
        Ok(()) => {}
        // The handler refused a message: logged, NACKed; the frontend may go on.
        Err(VuError::ReqHandlerError(_)) => {}
        Err(VuError::Disconnected | VuError::PartialMessage) => return Ok(false),
        Err(e) => return Err(VhostUserError::Protocol(e.to_string())),
    }
    let mut h = lock(handler);
    match h.try_activate() {
        Ok(true) => {
            // Kicks that came before the last ring was enabled are still in the kick fds,
            // but serve every queue once in case the frontend kicked and drained early.
            for i in 0..h.running_queues() {
                serve_queue(&mut h, i, shared);
            }
        }
        Ok(false) => {}
        Err(e) => {
            shared.log(format!("activation: {e}"));
            h.reset_device();
        }
    }
    Ok(true)
}

/// Serves queue `i` after a kick; the device's per-buffer errors go to the backend's log.
fn serve_queue(h: &mut Handler, i: u16, shared: &Shared) {
    if let Some(dev) = h.device.as_mut() {
        let reported = dev.hint_counters().reported_pages;
        if let Err(e) = dev.notify(i) {
            shared.log(format!("queue {i}: {e}"));
        }
        // Reported pages the device kept because the guest poisons them are not discards.
        let poisoned = dev.features().is_some_and(|f| f.page_poison())
            && dev
                .transport()
                .read_config_u32(crate::abi::CONFIG_POISON_VAL)
                .unwrap_or(0)
                != 0;
        if poisoned {
            let kept = dev.hint_counters().reported_pages - reported;
            h.reported_kept
                .fetch_add(kept, std::sync::atomic::Ordering::Relaxed);
        }
        for e in dev.take_errors() {
            shared.log(format!("queue {i}: {e}"));
        }
    }
}

/// Empties an eventfd (or pipe) kick fd.
fn drain(f: &mut std::fs::File) {
    let mut buf = [0u8; 64];
    for _ in 0..64 {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Signals a call fd: eventfd or pipe, both take an 8-byte write; a full pipe already has an
/// interrupt pending, so EAGAIN is fine.
fn signal(f: &std::fs::File) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer to an fd we own.
    let _ = unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}
