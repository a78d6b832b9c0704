//! The two pieces of the vhost-user wire we write ourselves (vhost 0.18's `Backend` cannot send
//! a config-change notice and keeps its socket private): taking SET_BACKEND_REQ_FD off the front
//! channel, and VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend channel.
//!
//! Header (vhost-user spec, "Message Specification"): u32 request, u32 flags (bits 0-1 version
//! = 1, bit 2 reply, bit 3 need_reply), u32 payload size; all little-endian.

use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};

use super::error::VhostUserError;

/// VHOST_USER_SET_BACKEND_REQ_FD.
pub const SET_BACKEND_REQ_FD: u32 = 21;
/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
pub const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
/// A message header: request, flags, payload size, each le32.
const HEADER: usize = 12;
/// The protocol version in a header's flags (the vhost crate's `VERSION` is the mask of its
/// two bits).
const VERSION: u32 = 0x1;
/// Most fds we accept on one message before refusing it (the rest are closed).
const MAX_FDS: usize = 8;
/// Largest payload a front-channel message may carry (the vhost crate's MAX_MSG_SIZE).
const MAX_PAYLOAD: usize = 0x1000;

fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What is waiting on the front channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// The frontend hung up.
    Closed,
    /// Part of a message: the rest has not arrived.
    Partial,
    /// A whole message (header and payload) with this request code.
    Message(u32),
}

/// Bytes of `MAX_FDS` descriptors in a control message (a few dozen; fits a u32).
#[allow(clippy::cast_possible_truncation)]
const FDS_BYTES: u32 = (MAX_FDS * mem::size_of::<libc::c_int>()) as u32;

/// Looks at the next message without taking it (a peek without a control buffer receives no
/// fds). The vhost crate retries a short read forever, so it only gets whole messages: a
/// frontend that stalls mid-message can then be dropped instead of blocking us.
pub fn peek_request(s: &UnixStream) -> Result<Pending, VhostUserError> {
    let mut buf = [0u8; HEADER + MAX_PAYLOAD];
    // SAFETY: receives at most buf.len() bytes into a valid buffer; MSG_PEEK leaves them queued.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {
                Ok(Pending::Partial)
            }
            std::io::ErrorKind::ConnectionReset => Ok(Pending::Closed),
            _ => Err(VhostUserError::Os {
                op: "recv(MSG_PEEK)",
                source: e,
            }),
        };
    }
    // Not negative: checked above.
    let n = n.unsigned_abs();
    if n == 0 {
        return Ok(Pending::Closed);
    }
    if n < HEADER {
        return Ok(Pending::Partial);
    }
    let size = word(&buf, 8) as usize;
    // An oversized payload is the crate's to refuse (it checks before reading a byte of it).
    if size <= MAX_PAYLOAD && n < HEADER + size {
        return Ok(Pending::Partial);
    }
    Ok(Pending::Message(word(&buf, 0)))
}

/// Receives SET_BACKEND_REQ_FD (header, no payload, one fd) and acks it if asked.
pub fn take_backend_req_fd(s: &UnixStream, protocol: u64) -> Result<UnixStream, VhostUserError> {
    let bad = |reason: String| VhostUserError::BadMessage {
        op: "SET_BACKEND_REQ_FD",
        reason,
    };
    let mut h = [0u8; HEADER];
    let mut cbuf = [0u64; 16];
    let space = {
        // SAFETY: CMSG_SPACE is a pure computation.
        unsafe { libc::CMSG_SPACE(FDS_BYTES) as usize }
    };
    let mut iov = libc::iovec {
        iov_base: h.as_mut_ptr().cast(),
        iov_len: HEADER,
    };
    // SAFETY: a zeroed msghdr is valid; fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space.min(mem::size_of_val(&cbuf));
    // SAFETY: `msg` describes valid buffers; MSG_CMSG_CLOEXEC marks received fds close-on-exec.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(VhostUserError::os("recvmsg"));
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: walks the control buffer the kernel filled, with the libc CMSG helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / mem::size_of::<libc::c_int>() {
                    // Each fd is ours now; OwnedFd closes those we refuse.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n.unsigned_abs() < HEADER {
        return Err(bad(format!("{n}-byte header")));
    }
    let (flags, size) = (word(&h, 4), word(&h, 8));
    if flags & VhostUserHeaderFlag::VERSION.bits() != VERSION || size != 0 || fds.len() != 1 {
        return Err(bad(format!(
            "flags {flags:#x}, size {size}, {} fds (version 1, no payload, one fd expected)",
            fds.len()
        )));
    }
    if protocol & VhostUserProtocolFeatures::BACKEND_REQ.bits() == 0 {
        return Err(bad("BACKEND_REQ was not negotiated".into()));
    }
    let reply_ack = protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
    if reply_ack && flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
        let mut r = header(
            SET_BACKEND_REQ_FD,
            VERSION | VhostUserHeaderFlag::REPLY.bits(),
            8,
        )
        .to_vec();
        r.extend_from_slice(&0u64.to_le_bytes());
        send_all(s, &r)?;
    }
    let fd = fds.pop().ok_or_else(|| bad("no fd".into()))?;
    Ok(UnixStream::from(fd))
}

fn send_all(s: &UnixStream, buf: &[u8]) -> Result<(), VhostUserError> {
    // SAFETY: sends from a valid buffer; MSG_NOSIGNAL so a dead peer is an error, not SIGPIPE.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if usize::try_from(n).ok() != Some(buf.len()) {
        return Err(VhostUserError::BackendChannel {
            reason: format!(
                "send of {} bytes: {}",
                buf.len(),
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

/// Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. Never asks for a reply (the spec lets the
/// backend choose): waiting for one could deadlock against a frontend waiting on us.
pub fn send_config_change(b: &UnixStream) -> Result<(), VhostUserError> {
    send_all(b, &header(BACKEND_CONFIG_CHANGE_MSG, VERSION, 0))
}
