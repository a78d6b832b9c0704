//! A vhost-user frontend for the backend's tests: the vhost crate's `Frontend` over a Unix
//! socket, guest RAM in a memfd shared with the backend, and rings laid out and driven by the
//! project's own virtq driver (the guest's side).

#![allow(dead_code)]

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vballoon::memory::{Backing, GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::virtq::{DriverQueue, QueueLayout, UsedElem};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM size.
pub const RAM: u64 = 16 << 20;
/// Where the shared region starts (as UML's, file offset == guest address, not 0).
pub const BASE: u64 = 1 << 20;
/// Rings: one 64 KiB slot per queue from here.
pub const RINGS: u64 = 2 << 20;
/// Message buffers, one 64 KiB slot per queue from here.
pub const BUFS: u64 = 3 << 20;
/// Pages the tests balloon live from here.
pub const PAGES: u64 = 8 << 20;
/// Queue size the tests use.
pub const QSIZE: u16 = 64;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
/// VIRTIO_F_VERSION_1.
pub const VERSION_1: u64 = 1 << 32;

/// A guest and its frontend connection.
pub struct Guest {
    pub mem: Arc<GuestMemory>,
    pub fe: Frontend,
    pub queues: Vec<DriverQueue>,
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
    /// Our end of the backend request channel.
    pub chan: UnixStream,
}

/// A shared memfd RAM for a guest.
pub fn ram() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::new(RAM, Backing::Memfd).expect("memfd guest RAM"))
}

fn user_addr(mem: &GuestMemory, gpa: u64) -> u64 {
    mem.host_ptr(GuestAddress(gpa), 1).expect("in RAM") as u64
}

/// Connects, retrying while the backend thread starts listening.
pub fn connect(path: &std::path::Path) -> Frontend {
    let t0 = Instant::now();
    loop {
        match Frontend::connect(path, 8) {
            Ok(f) => return f,
            Err(e) if t0.elapsed() > Duration::from_secs(5) => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Guest {
    /// Connects and does the handshake virtio_uml does at probe: owner, features, protocol
    /// features, backend channel, memory table.
    pub fn connect(path: &std::path::Path, mem: Arc<GuestMemory>) -> Guest {
        let mut fe = connect(path);
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert!(offered & PROTOCOL_FEATURES != 0, "bit 30 offered");
        // Features are set before the protocol features, as virtio_uml does.
        fe.set_features(PROTOCOL_FEATURES | VERSION_1).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        assert!(!pf.contains(VhostUserProtocolFeatures::INBAND_NOTIFICATIONS));
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ;
        assert!(pf.contains(want), "{pf:?}");
        fe.set_protocol_features(want).unwrap();
        // As virtio_uml: every message asks for an ack, so a refusal is seen at once.
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        fe.set_backend_request_fd(&theirs).unwrap();
        drop(theirs);
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: BASE,
            memory_size: RAM - BASE,
            userspace_addr: user_addr(&mem, BASE),
            mmap_offset: BASE,
            mmap_handle: mem.memfd().expect("memfd") as RawFd,
        };
        fe.set_mem_table(&[region]).unwrap();
        Guest {
            mem,
            fe,
            queues: Vec::new(),
            kicks: Vec::new(),
            calls: Vec::new(),
            chan: ours,
        }
    }

    /// Negotiates `features` (balloon bits, with VHOST_USER_F_PROTOCOL_FEATURES) and sets up
    /// `nq` queues, enabling them with SET_VRING_ENABLE.
    pub fn negotiate(&mut self, features: u64, nq: usize) {
        self.fe
            .set_features(features | PROTOCOL_FEATURES | VERSION_1)
            .unwrap();
        self.setup_rings(nq, 0);
        for i in 0..nq {
            self.fe.set_vring_enable(i, true).unwrap();
        }
    }

    /// What virtio_uml (Linux 7.2) does when the driver binds: SET_FEATURES without bit 30 (so
    /// rings start enabled and no SET_VRING_ENABLE follows), then every ring's size, base and
    /// addresses, then the kick fds. `generation` moves the rings, as a reload allocates new ones.
    pub fn negotiate_uml(&mut self, features: u64, nq: usize, generation: u64) {
        self.fe.set_features(features | VERSION_1).unwrap();
        self.setup_rings(nq, generation);
    }

    /// Ring `i` of `generation` starts here.
    pub fn ring_base(i: usize, generation: u64) -> GuestAddress {
        GuestAddress(RINGS + generation * 0x6_0000 + (i as u64) * 0x1_0000)
    }

    fn setup_rings(&mut self, nq: usize, generation: u64) {
        self.queues.clear();
        self.kicks.clear();
        self.calls.clear();
        let mut cfgs = Vec::new();
        for i in 0..nq {
            let base = Self::ring_base(i, generation);
            let layout = QueueLayout::place(base, QSIZE).unwrap();
            // Fresh rings: the driver zeroes them before use.
            self.mem
                .fill(base, QueueLayout::placed_bytes(QSIZE), 0)
                .unwrap();
            let q = DriverQueue::new(Arc::clone(&self.mem), layout, VERSION_1).unwrap();
            let ua = |g: GuestAddress| user_addr(&self.mem, g.raw());
            cfgs.push(VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: ua(layout.desc_table()),
                used_ring_addr: ua(layout.used_ring()),
                avail_ring_addr: ua(layout.avail_ring()),
                log_addr: None,
            });
            self.queues.push(q);
            self.kicks.push(EventFd::new(EFD_NONBLOCK).unwrap());
            self.calls.push(EventFd::new(EFD_NONBLOCK).unwrap());
        }
        for (i, cfg) in cfgs.iter().enumerate() {
            self.fe.set_vring_num(i, QSIZE).unwrap();
            self.fe.set_vring_base(i, 0).unwrap();
            self.fe.set_vring_addr(i, cfg).unwrap();
            self.fe.set_vring_call(i, &self.calls[i]).unwrap();
        }
        for i in 0..nq {
            self.fe.set_vring_kick(i, &self.kicks[i]).unwrap();
        }
    }

    /// What virtio_uml does when the driver module is unloaded: disable every ring, then a
    /// GET_FEATURES to make sure the backend processed that.
    pub fn unload(&mut self) {
        for i in (0..self.queues.len()).rev() {
            self.fe.set_vring_enable(i, false).unwrap();
        }
        self.fe.get_features().unwrap();
    }

    /// Posts a readable buffer with `bytes` on queue `q` (written at the queue's buffer slot)
    /// and kicks.
    pub fn post(&mut self, q: usize, bytes: &[u8]) {
        let at = GuestAddress(BUFS + (q as u64) * 0x1_0000);
        self.mem.write(at, bytes).unwrap();
        self.queues[q]
            .add_chain(&[(at, bytes.len() as u32)], &[])
            .unwrap();
        self.kicks[q].write(1).unwrap();
    }

    /// Populates `pages` guest pages at `gpa` and hands them to queue `q` as one
    /// device-writable block (a free page hint or a report), waiting until it is used.
    pub fn give_block(&mut self, q: usize, gpa: u64, pages: u64) {
        populate(&self.mem, gpa, pages);
        let len = u32::try_from(pages * PAGE_SIZE).unwrap();
        self.queues[q]
            .add_chain(&[], &[(GuestAddress(gpa), len)])
            .unwrap();
        self.kicks[q].write(1).unwrap();
        self.used(q);
    }

    /// Waits for a used buffer on queue `q`, and checks the call fd fired.
    pub fn used(&mut self, q: usize) -> UsedElem {
        let t0 = Instant::now();
        loop {
            if let Some(u) = self.queues[q].pop_used().unwrap() {
                // The interrupt is written after the used index: give it a moment.
                let t1 = Instant::now();
                while self.calls[q].read().is_err() {
                    assert!(
                        t1.elapsed() < Duration::from_secs(5),
                        "no call on queue {q}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                return u;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "queue {q}: no used buffer"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads the whole 16-byte config space.
    pub fn config(&mut self) -> [u32; 4] {
        let (_, buf) = self
            .fe
            .get_config(0, 16, VhostUserConfigFlags::WRITABLE, &[0u8; 16])
            .unwrap();
        let mut out = [0u32; 4];
        for (i, w) in buf.chunks_exact(4).enumerate() {
            out[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        out
    }

    /// Writes `actual` as the driver does after each batch.
    pub fn set_actual(&mut self, pages: u32) {
        self.fe
            .set_config(4, VhostUserConfigFlags::WRITABLE, &pages.to_le_bytes())
            .unwrap();
    }

    /// Reads one message header from the backend channel: the request code.
    pub fn backend_message(&mut self) -> u32 {
        use std::io::Read;
        let mut h = [0u8; 12];
        self.chan.read_exact(&mut h).expect("backend message");
        u32::from_le_bytes([h[0], h[1], h[2], h[3]])
    }
}

/// Little-endian 32-bit PFNs, as Linux's driver sends them.
pub fn pfns(first: u64, n: u64) -> Vec<u8> {
    (first..first + n)
        .flat_map(|p| (p as u32).to_le_bytes())
        .collect()
}

/// Bytes of the memfd still allocated.
pub fn allocated(mem: &GuestMemory) -> u64 {
    // SAFETY: zeroed stat is a valid out-parameter; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(mem.memfd().unwrap(), &mut st) }, 0);
    st.st_blocks as u64 * 512
}

/// Whether `[gpa, gpa + len)` holds any data in the memfd (SEEK_DATA).
pub fn has_data(mem: &GuestMemory, gpa: u64, len: u64) -> bool {
    // SAFETY: lseek on an open fd.
    let off = unsafe { libc::lseek(mem.memfd().unwrap(), gpa as libc::off_t, libc::SEEK_DATA) };
    off >= 0 && (off as u64) < gpa + len
}

/// Touches every page of `[gpa, gpa + n pages)` so it is allocated.
pub fn populate(mem: &GuestMemory, gpa: u64, n: u64) {
    for i in 0..n {
        mem.write_u8(GuestAddress(gpa + i * PAGE_SIZE), 0xa5)
            .unwrap();
    }
}

/// Waits for `cond` up to 10 s.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How many of this process's fds and mappings refer to the file behind `fd` (by inode).
pub fn references(fd: RawFd) -> (usize, usize) {
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let me = meta(std::path::Path::new(&format!("/proc/self/fd/{fd}"))).unwrap();
    let fds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| meta(&e.path()) == Some(me))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ino = me.1.to_string();
    let mappings = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(ino.as_str()) && l.contains("memfd:"))
        .count();
    (fds, mappings)
}
