//! Authentication of a migration connection with a pre-shared key.
//!
//! Without a key, [`AuthChannel`] passes bytes through unchanged. With one, the connection
//! starts with a handshake and then every byte, both ways, travels inside MAC'd records:
//!
//! 1. source → destination, 40 bytes: `"VBAUTH1C"` and a 32-byte random nonce `nc`;
//! 2. destination → source, 40 bytes: `"VBAUTH1S"` and a 32-byte random nonce `ns` (the
//!    destination says nothing else before the source has proved it holds the key);
//! 3. both derive `prk = HMAC-SHA256(key, LABEL ‖ nc ‖ ns)` and one key per direction,
//!    `HMAC-SHA256(prk, "source to destination")` and `HMAC-SHA256(prk, "destination to source")`;
//! 4. every record is a u32 little-endian length `n` (at most [`MAX_RECORD`]), `n` bytes, and a
//!    32-byte tag `HMAC-SHA256(direction key, seq ‖ n ‖ bytes)`, where `seq` (u64 LE) counts the
//!    records of that direction from 0.
//!
//! Fresh nonces from both sides make every connection's keys new, so a recording of an earlier
//! connection fails on its first record; the sequence number in the MAC makes a dropped,
//! repeated or reordered record fail; the stream's own end frame (checked totals) makes a cut
//! stream fail. This authenticates; it does not encrypt (page contents travel in clear).
//! The MAC is RustCrypto's `hmac` + `sha2`; nonces come from the OS (`getrandom`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::{MigrationError, RejectReason};
use super::stream::{read_full, ReplyCode, REPLY_LEN, REPLY_MAGIC};
use super::transport::{channel_layer, Channel, ChannelLayer};

type HmacSha256 = Hmac<Sha256>;

/// Handshake magic of the source (client).
pub const CLIENT_MAGIC: [u8; 8] = *b"VBAUTH1C";
/// Handshake magic of the destination (server).
pub const SERVER_MAGIC: [u8; 8] = *b"VBAUTH1S";
/// Bytes of a handshake message: magic and nonce.
pub const HELLO_LEN: usize = 40;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a record's tag.
pub const TAG_LEN: usize = 32;
/// Largest record payload (a stream frame is at most 2 MiB + 16 bytes).
pub const MAX_RECORD: u32 = 4 << 20;
const LABEL: &[u8] = b"vballoon migration auth v1";

/// Something went wrong authenticating the peer or its records.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key is too short to be worth anything.
    #[error("key of {len} bytes is too short (at least {min} bytes)")]
    KeyTooShort {
        /// Its length.
        len: usize,
        /// The least accepted.
        min: usize,
    },
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        /// The path given.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The peer started without a handshake, but this side requires a key.
    #[error("the peer did not authenticate (it sent {found:#018x}); this side requires a key")]
    PeerUnauthenticated {
        /// Its first 8 bytes, little-endian.
        found: u64,
    },
    /// The peer starts with a key handshake, but this side has no key.
    #[error("the peer authenticates with a key, but this side has none (give it the key)")]
    PeerHasKey,
    /// The peer's handshake message is not one.
    #[error("bad handshake {found:#018x} from the peer (expected {expected:#018x})")]
    BadHello {
        /// Its first 8 bytes, little-endian.
        found: u64,
        /// The magic expected.
        expected: u64,
    },
    /// A record's tag does not match.
    #[error(
        "record {seq} failed authentication: another key, or a replayed, reordered or altered stream"
    )]
    BadMac {
        /// The record's sequence number.
        seq: u64,
    },
    /// A record declares more bytes than a record may hold.
    #[error("record {seq} declares {len} bytes (at most {max})")]
    RecordTooLong {
        /// The record's sequence number.
        seq: u64,
        /// The length declared.
        len: u32,
        /// The most allowed.
        max: u32,
    },
    /// The peer answered the handshake with an (unauthenticated) rejection.
    #[error("the peer refused the connection (its answer is not authenticated): {reason}")]
    Refused {
        /// The reason it gave.
        reason: RejectReason,
    },
    /// An earlier record failed, so the channel is closed for good.
    #[error("the connection failed authentication earlier")]
    Poisoned,
    /// The OS random source failed.
    #[error("no random nonce from the OS: {0}")]
    Random(String),
}

impl AuthError {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// A pre-shared key. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct MigrationKey(Arc<[u8]>);

impl MigrationKey {
    /// Fewest bytes a key may have.
    pub const MIN_LEN: usize = 16;

    /// A key of the given bytes (at least [`MIN_LEN`](Self::MIN_LEN)).
    pub fn new(bytes: &[u8]) -> Result<MigrationKey, AuthError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(AuthError::KeyTooShort {
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(MigrationKey(bytes.into()))
    }

    /// The key in a file: its bytes, less trailing whitespace (so `openssl rand -hex 32 > F`
    /// and `head -c 32 /dev/urandom > F` both work).
    pub fn from_file(path: impl AsRef<Path>) -> Result<MigrationKey, AuthError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| AuthError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        MigrationKey::new(&bytes[..end])
    }

    fn mac(&self) -> HmacSha256 {
        mac_with(&self.0)
    }
}

impl fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationKey(<{} bytes>)", self.0.len())
    }
}

fn mac_with(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC key length"))
}

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The source: sends the first handshake message.
    Source,
    /// The destination: answers it.
    Destination,
}

/// One connection's record keys and sequence numbers, for one end.
#[derive(Clone)]
pub struct RecordKeys {
    send: HmacSha256,
    recv: HmacSha256,
    send_seq: u64,
    recv_seq: u64,
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RecordKeys(sent {}, received {})",
            self.send_seq, self.recv_seq
        )
    }
}

impl RecordKeys {
    /// The keys of `role` for the connection whose nonces are `source_nonce`, `dest_nonce`.
    pub fn derive(
        key: &MigrationKey,
        source_nonce: &[u8; NONCE_LEN],
        dest_nonce: &[u8; NONCE_LEN],
        role: Role,
    ) -> RecordKeys {
        let mut m = key.mac();
        m.update(LABEL);
        m.update(source_nonce);
        m.update(dest_nonce);
        let prk = m.finalize().into_bytes();
        let dir = |label: &[u8]| {
            let mut m = mac_with(&prk);
            m.update(label);
            mac_with(&m.finalize().into_bytes())
        };
        let (s2d, d2s) = (dir(b"source to destination"), dir(b"destination to source"));
        let (send, recv) = match role {
            Role::Source => (s2d, d2s),
            Role::Destination => (d2s, s2d),
        };
        RecordKeys {
            send,
            recv,
            send_seq: 0,
            recv_seq: 0,
        }
    }

    /// The MAC over `seq`, the length field `len` and `payload`.
    fn tag(mac: &HmacSha256, seq: u64, len: u32, payload: &[u8]) -> HmacSha256 {
        let mut m = mac.clone();
        m.update(&seq.to_le_bytes());
        m.update(&len.to_le_bytes());
        m.update(payload);
        m
    }

    /// Appends one record carrying the first [`MAX_RECORD`] bytes of `payload` (all of it if
    /// shorter) to `out`; returns how many bytes it carries.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> usize {
        let len = u32::try_from(payload.len()).map_or(MAX_RECORD, |n| n.min(MAX_RECORD));
        let payload = &payload[..len as usize];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
        let tag = Self::tag(&self.send, self.send_seq, len, payload).finalize();
        out.extend_from_slice(&tag.into_bytes());
        self.send_seq += 1;
        payload.len()
    }

    /// Checks the tag of the next received record (constant-time comparison).
    pub fn open(&mut self, payload: &[u8], tag: &[u8]) -> Result<(), AuthError> {
        let seq = self.recv_seq;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&n| n <= MAX_RECORD)
            .ok_or(AuthError::RecordTooLong {
                seq,
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                max: MAX_RECORD,
            })?;
        Self::tag(&self.recv, seq, len, payload)
            .verify_slice(tag)
            .map_err(|_| AuthError::BadMac { seq })?;
        self.recv_seq += 1;
        Ok(())
    }
}

/// A random nonce from the OS.
pub fn nonce() -> Result<[u8; NONCE_LEN], AuthError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(n)
}

/// A handshake message.
pub fn hello(magic: [u8; 8], nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..8].copy_from_slice(&magic);
    b[8..].copy_from_slice(nonce);
    b
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("peer closed during {what}"),
    )
}

enum State {
    /// No key: bytes pass through.
    Plain,
    /// Keyed, handshake not done yet.
    Pending,
    /// Keyed and authenticated records flow.
    Ready(Box<RecordKeys>),
    /// A handshake or a record failed: nothing more goes through.
    Failed,
}

/// A channel that authenticates every byte with [`RecordKeys`] when it has a key (see the
/// module documentation), or passes them through when it has none. The handshake runs on the
/// first read or write.
pub struct AuthChannel<C> {
    inner: C,
    role: Role,
    key: Option<MigrationKey>,
    state: State,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
}

impl<C> fmt::Debug for AuthChannel<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuthChannel({:?}, keyed: {})",
            self.role,
            self.key.is_some()
        )
    }
}

impl<C: Channel> AuthChannel<C> {
    /// Wraps `inner` for `role`, authenticated with `key` if there is one.
    pub fn new(inner: C, role: Role, key: Option<MigrationKey>) -> AuthChannel<C> {
        let state = if key.is_some() {
            State::Pending
        } else {
            State::Plain
        };
        AuthChannel {
            inner,
            role,
            key,
            state,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            wbuf: Vec::new(),
        }
    }

    /// Whether records are authenticated (the handshake succeeded).
    pub fn authenticated(&self) -> bool {
        matches!(self.state, State::Ready(_))
    }

    fn fail(&mut self, e: AuthError) -> io::Error {
        self.state = State::Failed;
        e.into_io()
    }

    fn handshake(&mut self) -> io::Result<()> {
        let Some(key) = self.key.clone() else {
            return Ok(());
        };
        let mine = nonce().map_err(|e| self.fail(e))?;
        let mut peer = [0u8; HELLO_LEN];
        let (expected, source_nonce, dest_nonce);
        match self.role {
            Role::Source => {
                self.inner.write_all(&hello(CLIENT_MAGIC, &mine))?;
                self.inner.flush()?;
                let got = read_full(&mut self.inner, &mut peer)?;
                if got >= REPLY_LEN && peer[..4] == REPLY_MAGIC.to_le_bytes() {
                    let code = u32::from_le_bytes([peer[4], peer[5], peer[6], peer[7]]);
                    let reason = match ReplyCode::from_u32(code) {
                        ReplyCode::Reject(r) => r,
                        _ => RejectReason::Unknown(code),
                    };
                    return Err(self.fail(AuthError::Refused { reason }));
                }
                if got < HELLO_LEN {
                    return Err(eof("the handshake"));
                }
                expected = SERVER_MAGIC;
                (source_nonce, dest_nonce) = (mine, nonce_of(&peer));
            }
            Role::Destination => {
                let got = read_full(&mut self.inner, &mut peer)?;
                if got >= 8 && peer[..8] == super::stream::MAGIC {
                    let found = le64(&peer);
                    return Err(self.fail(AuthError::PeerUnauthenticated { found }));
                }
                if got < HELLO_LEN {
                    return Err(eof("the handshake"));
                }
                expected = CLIENT_MAGIC;
                (source_nonce, dest_nonce) = (nonce_of(&peer), mine);
            }
        }
        if peer[..8] != expected {
            let (found, expected) = (le64(&peer), u64::from_le_bytes(expected));
            return Err(self.fail(AuthError::BadHello { found, expected }));
        }
        if self.role == Role::Destination {
            self.inner.write_all(&hello(SERVER_MAGIC, &mine))?;
            self.inner.flush()?;
        }
        let keys = RecordKeys::derive(&key, &source_nonce, &dest_nonce, self.role);
        self.state = State::Ready(Box::new(keys));
        Ok(())
    }

    fn ready(&mut self) -> io::Result<()> {
        match self.state {
            State::Pending => self.handshake(),
            State::Failed => Err(AuthError::Poisoned.into_io()),
            State::Plain | State::Ready(_) => Ok(()),
        }
    }

    /// Reads and checks the next record; false at end of file between records.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut head = [0u8; 4];
        match read_full(&mut self.inner, &mut head)? {
            0 => return Ok(false),
            4 => {}
            _ => return Err(eof("a record header")),
        }
        let State::Ready(keys) = &self.state else {
            return Err(AuthError::Poisoned.into_io());
        };
        let seq = keys.recv_seq;
        if head == REPLY_MAGIC.to_le_bytes() {
            // An unauthenticated rejection (the peer could not check our records): say why.
            let mut rest = [0u8; REPLY_LEN - 4];
            read_full(&mut self.inner, &mut rest)?;
            let code = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let reason = match ReplyCode::from_u32(code) {
                ReplyCode::Reject(r) => r,
                _ => RejectReason::Unknown(code),
            };
            return Err(self.fail(AuthError::Refused { reason }));
        }
        let len = u32::from_le_bytes(head);
        if len > MAX_RECORD {
            let e = AuthError::RecordTooLong {
                seq,
                len,
                max: MAX_RECORD,
            };
            return Err(self.fail(e));
        }
        let total = len as usize + TAG_LEN;
        if self.rbuf.len() < total {
            self.rbuf.resize(total, 0);
        }
        if read_full(&mut self.inner, &mut self.rbuf[..total])? < total {
            return Err(eof("a record"));
        }
        let (payload, tag) = self.rbuf[..total].split_at(len as usize);
        let State::Ready(keys) = &mut self.state else {
            return Err(AuthError::Poisoned.into_io());
        };
        if let Err(e) = keys.open(payload, tag) {
            return Err(self.fail(e));
        }
        self.rpos = 0;
        self.rend = len as usize;
        Ok(true)
    }

    /// Sends a rejection the peer can read: sealed once authenticated, in clear before (so a
    /// peer without the key learns why it was refused, and nothing else).
    pub fn send_reject(&mut self, reply: &[u8; REPLY_LEN]) -> io::Result<()> {
        match self.state {
            State::Ready(_) | State::Plain => self.write_all(reply),
            State::Pending | State::Failed => self.inner.write_all(reply),
        }
    }
}

fn nonce_of(hello: &[u8; HELLO_LEN]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&hello[8..]);
    n
}

impl<C: Channel> Read for AuthChannel<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready()?;
        if matches!(self.state, State::Plain) {
            return self.inner.read(buf);
        }
        while self.rpos == self.rend {
            if !self.next_record()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.rend - self.rpos);
        buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        Ok(n)
    }
}

impl<C: Channel> Write for AuthChannel<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ready()?;
        let State::Ready(keys) = &mut self.state else {
            return self.inner.write(buf);
        };
        self.wbuf.clear();
        let n = keys.seal(buf, &mut self.wbuf);
        if let Err(e) = self.inner.write_all(&self.wbuf) {
            // Part of a record may be out: nothing after it could be authenticated.
            self.state = State::Failed;
            return Err(e);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

channel_layer!(AuthChannel);

/// Refuses to listen on a non-loopback `addr` without a key unless `insecure` allows it.
pub fn check_listen_address(
    addr: SocketAddr,
    keyed: bool,
    insecure: bool,
) -> Result<(), MigrationError> {
    if keyed || insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(MigrationError::InsecureListener {
        addr: addr.to_string(),
    })
}

/// The [`AuthError`] inside an I/O error from an [`AuthChannel`], if that is what it is.
pub(crate) fn auth_error(e: io::Error) -> Result<AuthError, io::Error> {
    if e.get_ref().is_some_and(|i| i.is::<AuthError>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(a) = inner.downcast::<AuthError>() {
                return Ok(*a);
            }
        }
        return Err(io::Error::other("authentication error lost"));
    }
    Err(e)
}
